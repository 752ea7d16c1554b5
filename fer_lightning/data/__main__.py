"""``python -m fer_lightning.data``: check and prepare datasets (:mod:`fer_lightning.cli.data`)."""

import sys

from fer_lightning.cli.data import main

if __name__ == "__main__":
    sys.exit(main())
