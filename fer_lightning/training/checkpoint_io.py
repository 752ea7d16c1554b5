"""Checkpoint writing that never leaves half a file behind."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ResumeTarget:
    """What a run trains: the values a checkpoint must share for ``ckpt_path=`` to resume it.
    ``label_names`` and ``dataset`` may be ``None`` (not known: not compared)."""

    arch: str
    num_classes: int
    input_size: int
    label_names: tuple[str, ...] | None = None
    dataset: str | None = None

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> ResumeTarget:
        """From plain values: ``arch``, ``num_classes``, ``input_size``, ``label_names``,
        ``dataset`` (conf/hydra/train.yaml passes them; fer-train reads them from its config)."""
        names = values.get("label_names")
        dataset = values.get("dataset")
        return cls(
            arch=str(values["arch"]),
            num_classes=int(values["num_classes"]),
            input_size=int(values["input_size"]),
            label_names=tuple(str(n) for n in names) if names is not None else None,
            dataset=str(dataset) if dataset is not None else None,
        )


def _read_for_resume(path: str | Path) -> object:
    """The checkpoint's content, memory-mapped where the file allows it (a resume only needs its
    hyperparameters; Lightning reads the weights itself); errors as :func:`read_checkpoint`'s."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return read_checkpoint(path)  # the legacy format, or a clear error naming the file


def resume_mismatch(path: str | Path, target: ResumeTarget) -> str | None:
    """Why ``ckpt_path=path`` cannot resume a run that trains ``target`` (one line naming each
    value that differs, with both sides, and what to do), or ``None`` when it can. Raises
    ``CheckpointError`` for a file that is unreadable, refused by the safe loader or not a
    Lightning checkpoint of this project."""
    content = _read_for_resume(path)
    if not (isinstance(content, dict) and isinstance(content.get("state_dict"), dict)):
        raise CheckpointError(
            f"ckpt_path={path} is not a training checkpoint of this project (no Lightning state), "
            "so training cannot resume from it. To start from its weights, use "
            "model.pretrained_backbone for a trunk, or evaluate it with fer-eval."
        )
    hyper = content.get("hyper_parameters")
    hyper = hyper if isinstance(hyper, dict) else {}
    training_data = hyper.get("training_data")
    saved_dataset = training_data.get("dataset") if isinstance(training_data, dict) else None
    saved_names = hyper.get("label_names")
    saved = {
        "arch": hyper.get("arch"),
        "num_classes": hyper.get("num_classes"),
        "label_names": tuple(saved_names) if isinstance(saved_names, list) else None,
        "input_size": hyper.get("input_size"),
        "dataset": saved_dataset,
    }
    # What puts each value back: the option a user types.
    remedies = {
        "arch": f"model={saved['arch']}",
        "num_classes": f"data={saved_dataset}" if saved_dataset else "the data it was trained on",
        "label_names": f"data={saved_dataset}" if saved_dataset else "the data it was trained on",
        "input_size": f"data.input_size={saved['input_size']}",
        "dataset": f"data={saved_dataset}",
    }
    differences, fixes = [], []
    for key, value in saved.items():
        wanted = getattr(target, key)
        if key == "arch" and value is None:
            value = "unknown"  # no hyperparameters: not this project's checkpoint
        elif value is None or wanted is None:
            continue  # not recorded (older checkpoints): nothing to compare
        if value != wanted:
            differences.append(f"{key} {_show(value)} (this run: {_show(wanted)})")
            if remedies[key] not in fixes:
                fixes.append(remedies[key])
    if not differences:
        return None
    return (
        f"ckpt_path={path} cannot resume this run: the checkpoint has "
        + "; ".join(differences)
        + f". Resume with {' '.join(fixes)}, or start a new run without ckpt_path."
    )


def _show(value: Any) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def check_resume_checkpoint(path: str | Path, target: ResumeTarget) -> None:
    """Refuse, before anything is written, a checkpoint that ``ckpt_path=`` cannot resume: one
    that is unreadable or truncated, refused by the safe loader, not a Lightning checkpoint of
    this project, or of another architecture, classes, input size or dataset than this run.
    Raises ``CheckpointError`` (see :func:`resume_mismatch`)."""
    problem = resume_mismatch(path, target)
    if problem is not None:
        raise CheckpointError(problem)
