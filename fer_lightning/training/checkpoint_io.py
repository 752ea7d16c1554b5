"""Checkpoint writing that never leaves half a file behind."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from fer_lightning.models.checkpoints import CheckpointError, read_checkpoint


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, no permission); the message says where."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint beside its destination, syncs it, then renames it into place.

    Lightning's own save goes through a temporary file in the system's temp folder, which is a
    copy (not a rename) when that folder is on another file system than the run; a run killed
    during that copy would leave half a checkpoint. A rename within one folder is atomic.
    Partial files that a killed save left behind are removed at the first save into a folder;
    a failed write (a full disk) raises :class:`CheckpointWriteError` and leaves the earlier
    checkpoint as it was.
    """

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()

    def _sweep_partials(self, folder: Path) -> None:
        if folder in self._swept:
            return
        self._swept.add(folder)
        for leftover in folder.glob(".*.partial"):
            leftover.unlink(missing_ok=True)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sweep_partials(path.parent)
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except (OSError, RuntimeError) as error:
            # torch.save reports a failed write as RuntimeError("[enforce fail at
            # inline_container.cc...]"): say what happened and where.
            raise CheckpointWriteError(_write_failure(path, error)) from None
        finally:
            partial.unlink(missing_ok=True)


def _write_failure(path: Path, error: BaseException) -> str:
    folder = path.parent
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        free = None
    full = getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < 1 << 20)
    if full:
        return (
            f"Could not write checkpoint {path}: the disk is full ({(free or 0) / 1e6:.1f} MB "
            f"free in {folder}). Free some space (old runs' checkpoints/) and resume with "
            "ckpt_path=last; the earlier checkpoints are intact."
        )
    return f"Could not write checkpoint {path}: {error}. The earlier checkpoints are intact."


def check_resume_checkpoint(path: str | Path, arch: str, num_classes: int) -> None:
    """Refuse, before training starts, a checkpoint that ``ckpt_path=`` cannot resume: one that
    is unreadable or truncated, refused by the safe loader, not a Lightning checkpoint of this
    project, or of another architecture or number of classes. Raises ``CheckpointError``."""
    content = read_checkpoint(path)
    if not (isinstance(content, dict) and isinstance(content.get("state_dict"), dict)):
        raise CheckpointError(
            f"ckpt_path={path} is not a training checkpoint of this project (no Lightning state), "
            "so training cannot resume from it. To start from its weights, use "
            "model.pretrained_backbone for a trunk, or evaluate it with fer-eval."
        )
    hyper = content.get("hyper_parameters")
    saved_arch = hyper.get("arch") if isinstance(hyper, dict) else None
    saved_classes = hyper.get("num_classes") if isinstance(hyper, dict) else None
    if saved_arch != arch or (saved_classes is not None and saved_classes != num_classes):
        raise CheckpointError(
            f"ckpt_path={path} holds {saved_arch!r} with {saved_classes} classes, but this run "
            f"trains {arch!r} with {num_classes}: resume with model={saved_arch} (and the data "
            "it was trained on), or start a new run without ckpt_path."
        )
