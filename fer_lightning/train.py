"""``python -m fer_lightning.train``: the same command as ``fer-train``.

The command lives in :mod:`fer_lightning.cli.train`.
"""

from fer_lightning.cli.train import main

if __name__ == "__main__":
    main()
