"""``python -m fer_lightning.serve``: the same command as ``fer-serve``.

The command lives in :mod:`fer_lightning.cli.serve`.
"""

from fer_lightning.cli.serve import main

if __name__ == "__main__":
    main()
