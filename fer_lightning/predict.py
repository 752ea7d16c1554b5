"""``python -m fer_lightning.predict``: the same command as ``fer-predict``.

The command lives in :mod:`fer_lightning.cli.predict`.
"""

from fer_lightning.cli.predict import main

if __name__ == "__main__":
    main()
