"""The commands: ``fer-train``, ``fer-eval``, ``fer-predict``, ``fer-export`` (Hydra apps over
``conf/``) and ``python -m fer_lightning.data`` / ``python -m fer_lightning.models`` (argparse)."""
