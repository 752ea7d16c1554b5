"""``python -m fer_lightning.data {check,prepare}``: validate and convert datasets.

User mistakes (missing files, malformed CSVs, unreadable images) print one message to stderr and
exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fer_lightning.data.errors import DatasetError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_lightning.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check",
        help="validate CSVs or dataset folders; per-split counts, class histogram, "
        "duplicate images",
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="a CSV (.csv/.csv.gz) or folder")
    check.add_argument(
        "--on-bad-row",
        choices=("error", "skip"),
        default="error",
        help="skip: list bad rows (by line), summarise the rest, exit 1 if any",
    )
    prepare = sub.add_parser("prepare", help="convert raw images to a FER-format CSV")
    prepare.add_argument("kind", choices=("jaffe", "faces", "folder"))
    prepare.add_argument("src", metavar="SRC", help="folder of the downloaded images")
    prepare.add_argument("out", metavar="OUT.csv", help="CSV to write (.csv.gz: gzipped)")
    prepare.add_argument(
        "--detector",
        default="none",
        help="none (centred square crop, default), auto, or a detector name of "
        "fer_lightning.inference (yunet, dlib, opencv_yunet)",
    )
    prepare.add_argument(
        "--skip-bad",
        action="store_true",
        help="write the readable images and list the rest, instead of writing nothing",
    )
    return parser


def _check(args: argparse.Namespace) -> int:
    from fer_lightning.data.check import summarize

    status = 0
    for path in args.paths:
        try:
            if summarize(path, sys.stdout, args.on_bad_row):
                status = max(status, 1)
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 2
    return status


def _prepare(args: argparse.Namespace) -> int:
    from fer_lightning.data.convert import convert

    report = convert(args.kind, args.src, args.out, args.detector, args.skip_bad)
    crops = ", ".join(f"{m} {n}" for m, n in report.crops.items())
    print(f"wrote {report.rows} faces to {report.out} (crop: {crops})")
    if report.problems:
        print(f"skipped {len(report.problems)}:", *report.problems, sep="\n  ", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    commands = {"check": _check, "prepare": _prepare}
    try:
        return commands[args.command](args)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
