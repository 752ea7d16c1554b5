"""``python -m fer_lightning.eval``: the same command as ``fer-eval``.

The command lives in :mod:`fer_lightning.cli.eval`.
"""

from fer_lightning.cli.eval import main

if __name__ == "__main__":
    main()
