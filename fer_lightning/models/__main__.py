"""``python -m fer_lightning.models``: the zoo table (:mod:`fer_lightning.cli.models`)."""

import sys

from fer_lightning.cli.models import main

if __name__ == "__main__":
    sys.exit(main())
