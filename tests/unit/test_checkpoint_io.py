"""Checkpoint writing: a full disk is one clear error and never damages the earlier file."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fer_lightning.training.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "2m") -> Iterator[Path]:
    """A size-limited tmpfs at ``folder`` (needs root); skips when mounting is not allowed."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def checkpoint_of(megabytes: float) -> dict:
    return {"state_dict": {"w": torch.zeros(int(megabytes * 2**18))}, "epoch": 1}


def test_full_disk_is_one_message_and_the_earlier_checkpoint_survives(tmp_path):
    io = AtomicCheckpointIO()
    with small_disk(tmp_path / "disk") as disk:
        last = disk / "checkpoints" / "last.ckpt"
        io.save_checkpoint(checkpoint_of(0.5), last)
        with pytest.raises(CheckpointWriteError) as error:
            io.save_checkpoint(checkpoint_of(4), last)
        message = str(error.value)
        assert "the disk is full" in message and str(last) in message
        assert "inline_container" not in message
        assert torch.load(last, weights_only=True)["state_dict"]["w"].numel() == 2**17
        assert not list(last.parent.glob(".*.partial"))


def test_enospc_from_a_real_write_is_reported(tmp_path):
    """Without mounting: the partial file is a link to /dev/full, whose writes fail with
    ENOSPC."""
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint_of(0.1), last)  # the first save sweeps the folder
    os.symlink("/dev/full", tmp_path / ".last.ckpt.partial")
    with pytest.raises(CheckpointWriteError, match="the disk is full"):
        io.save_checkpoint(checkpoint_of(0.2), last)
    assert torch.load(last, weights_only=True)["state_dict"]["w"].numel() == int(0.1 * 2**18)


def test_partial_files_of_a_killed_save_are_removed_on_the_next_start(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    leftover = folder / ".epoch003-acc0.5000.ckpt.partial"
    leftover.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint(checkpoint_of(0.1), folder / "last.ckpt")
    assert not leftover.exists()
    assert (folder / "last.ckpt").is_file()


def test_resume_checkpoints_are_checked_before_training(tmp_path):
    from fer_lightning.models.checkpoints import CheckpointError
    from fer_lightning.training.checkpoint_io import ResumeTarget, check_resume_checkpoint
    from tests.helpers.inference import save_lightning_checkpoint, save_published_checkpoint

    good = save_lightning_checkpoint(tmp_path / "good.ckpt", arch="resnet18")
    check_resume_checkpoint(good, ResumeTarget("resnet18", 7, 64))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:1000])
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hook": os.system}, evil)
    cases = [
        (truncated, ResumeTarget("resnet18", 7, 64), "Could not read"),
        (evil, ResumeTarget("resnet18", 7, 64), "Refused to load"),
        (
            save_published_checkpoint(tmp_path / "published.pt"),
            ResumeTarget("resnet18", 7, 64),
            "cannot resume",
        ),
        (
            good,
            ResumeTarget("resmasking_dropout1", 7, 64),
            r"has arch resnet18 \(this run: resmasking_dropout1\)\. Resume with model=resnet18,",
        ),
        (
            good,
            ResumeTarget("resnet18", 8, 64),
            r"num_classes 7 \(this run: 8\)\. Resume with the data it was trained on",
        ),
        (
            good,
            ResumeTarget("resnet18", 7, 96),
            r"input_size 64 \(this run: 96\)\. Resume with data.input_size=64",
        ),
    ]
    for path, target, message in cases:
        with pytest.raises(CheckpointError, match=message):
            check_resume_checkpoint(path, target)
