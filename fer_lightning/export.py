"""``python -m fer_lightning.export``: the same command as ``fer-export``.

The command lives in :mod:`fer_lightning.cli.export`.
"""

from fer_lightning.cli.export import main

if __name__ == "__main__":
    main()
