"""``python -m fer_lightning.models``: the model zoo as a table.."""

from __future__ import annotations

import argparse

from fer_lightning.models import list_models
from fer_lightning.models.presets import default_input_size
from fer_lightning.models.zoo import describe, format_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input-size",
        type=int,
        default=default_input_size(),
        help="square input side (default: %(default)s, the paper's)",
    )
    args = parser.parse_args(argv)
    rows = [describe(name, args.input_size) for name in list_models()]
    print(format_table(rows, args.input_size))


if __name__ == "__main__":
    main()
