"""Run folders: one per run, never shared; the folder a resumed run continues in; and leaving no
trace of a command that was refused before its work started.

``${fer_unique_dir:PATH}`` (conf/hydra/default.yaml) names a run folder: ``PATH`` itself, or
``PATH_2``, ``PATH_3``, ... when a run started in the same second already took it. The folder is
created here with an exclusive ``mkdir``, so two processes can never both get it; the resolver
is cached per config, so every later reading of ``hydra.run.dir`` in one run gives the same one.

``${fer_run_dir:PATH,RESUME}`` (conf/hydra/train.yaml) is the same for fer-train, except that a
run resuming a checkpoint inside an earlier run folder (``ckpt_path=last``: the newest
``last.ckpt`` of the same experiment, i.e. under ``PATH``'s parent) continues that folder, so
that its ModelCheckpoint keeps tracking the best checkpoint of the whole run. It does so only
when the checkpoint can resume this run (same architecture, classes, input size and dataset);
otherwise the run gets a new folder, and the command refuses the checkpoint from there.

Hydra creates and writes the run folder (``.hydra/``, the log file) before the command's own code
runs. :func:`discard_run_folder_if_refused` undoes that for a command that refuses its work: it
removes a folder this process created (and the parent folders it created for it) and, in a folder
it continued, restores the files Hydra rewrote. A folder this process did not pick is never
touched.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fer_lightning.training.checkpoint_io import ResumeTarget, resume_mismatch

log = logging.getLogger(__name__)

# Files that mark a folder as one of this project's run folders.
RUN_FOLDER_MARKERS = (".hydra", "results.json", "train.log")
# A run that ended with an error leaves this file (the error and its traceback) in its folder.
FAILED_MARKER = "FAILED"
# Hydra's saved configuration and the job's log: what Hydra writes into a continued folder.
HYDRA_SUBDIR = ".hydra"


@dataclass
class _ContinuedFolder:
    """What a continued run folder held before this run touched it."""

    log_sizes: dict[str, int] = field(default_factory=dict)  # *.log file -> size in bytes
    hydra_files: dict[str, bytes] = field(default_factory=dict)  # .hydra/<name> -> content


# Run folders this process picked: created ones (with the parent folders created for them,
# deepest first) and continued ones (with what they held). Keyed by absolute path.
_created: dict[str, list[Path]] = {}
_continued: dict[str, _ContinuedFolder] = {}


def _key(path: str | Path) -> str:
    return os.path.abspath(path)


def unique_dir(path: str) -> str:
    """``path``, or the first free ``path_N`` (N = 2, 3, ...), created empty; its text."""
    base = Path(path)
    missing_parents = [p for p in base.parents if not p.exists()]
    base.parent.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        candidate = base if number == 1 else base.with_name(f"{base.name}_{number}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        if not _created:
            atexit.register(remove_empty_created_folders)
        _created[_key(candidate)] = missing_parents
        return str(candidate)
    raise AssertionError("unreachable")


def remove_empty_created_folders() -> None:
    """At exit: the run folders this process created and left empty go, with the parent
    folders created for them when those are empty too. Hydra may resolve the run folder more
    than once (``--help``, a config copied before the task runs), and a command that stops
    before writing anything must leave nothing behind."""
    # Newest first: an earlier folder's parents are empty only once the later ones are gone.
    for key, parents in reversed(list(_created.items())):
        try:
            Path(key).rmdir()  # only when empty
        except OSError:
            continue
        del _created[key]
        for parent in parents:
            try:
                parent.rmdir()
            except OSError:
                break


def run_dir(path: str, resume: dict[str, Any] | None = None) -> str:
    """``${fer_run_dir:PATH,RESUME}``: the run folder of a fer-train run.

    ``RESUME`` holds ``ckpt_path`` and what the run trains (``arch``, ``num_classes``,
    ``label_names``, ``input_size``, ``dataset``). The run continues the checkpoint's run folder
    when the checkpoint is inside one and can resume this run; else :func:`unique_dir`."""
    earlier = _folder_to_continue(Path(path).parent, resume or {})
    if earlier is None:
        return unique_dir(path)
    _continued[_key(earlier)] = _snapshot(earlier)
    return str(earlier)


def _folder_to_continue(experiment_dir: Path, resume: dict[str, Any]) -> Path | None:
    ckpt_path = resume.get("ckpt_path")
    if ckpt_path is None:
        return None
    checkpoint = resume_checkpoint(str(ckpt_path), experiment_dir)
    if checkpoint is None or not checkpoint.is_file():
        return None  # the command says so, from a folder of its own
    folder = run_folder_of(checkpoint)
    if folder is None:
        return None
    try:
        target = ResumeTarget.from_config(resume)
        if resume_mismatch(checkpoint, target) is not None:
            return None
    except Exception:  # unreadable, or values the command refuses: it says so itself
        return None
    return folder


def resume_checkpoint(ckpt_path: str, experiment_dir: str | Path) -> Path | None:
    """The checkpoint ``ckpt_path=`` names: ``last`` -> the newest ``last.ckpt`` of this
    experiment's runs (under ``experiment_dir``, e.g. outputs/train/demo), else the path."""
    if ckpt_path == "last":
        return newest_last_checkpoint(experiment_dir)
    return Path(ckpt_path)


def _snapshot(folder: Path) -> _ContinuedFolder:
    snapshot = _ContinuedFolder()
    for log_file in folder.glob("*.log"):
        snapshot.log_sizes[log_file.name] = log_file.stat().st_size
    hydra_dir = folder / HYDRA_SUBDIR
    if hydra_dir.is_dir():
        for item in hydra_dir.iterdir():
            if item.is_file():
                snapshot.hydra_files[item.name] = item.read_bytes()
    return snapshot


def discard_run_folder_if_refused(output_dir: str | Path) -> bool:
    """Undo what this run wrote into ``output_dir`` before its work started, for a command that
    refuses to run (a bad value, a missing dataset, an unusable checkpoint): a folder this process
    created is removed with its content (and the parent folders created for it, when empty); in
    a folder it continued, the log files are cut back to their earlier length and Hydra's
    ``.hydra/`` files are restored. Any other folder (one this process did not pick, such as an
    explicit ``hydra.run.dir``) is left alone. Returns whether anything was undone.

    Call it only before the command's work starts: it removes everything in a created folder."""
    key = _key(output_dir)
    close_log_files_under(Path(key))
    if key in _created:
        shutil.rmtree(key, ignore_errors=True)
        for parent in _created.pop(key):
            try:
                parent.rmdir()  # only when empty: another run may have written there since
            except OSError:
                break
        return True
    if key in _continued:
        _restore(Path(key), _continued.pop(key))
        return True
    return False


def _restore(folder: Path, snapshot: _ContinuedFolder) -> None:
    for name in [p.name for p in folder.glob("*.log")]:
        if name in snapshot.log_sizes:
            with open(folder / name, "r+b") as file:
                file.truncate(snapshot.log_sizes[name])
        else:
            (folder / name).unlink(missing_ok=True)
    hydra_dir = folder / HYDRA_SUBDIR
    if hydra_dir.is_dir():
        for item in hydra_dir.iterdir():
            if item.is_file() and item.name not in snapshot.hydra_files:
                item.unlink()
    for name, content in snapshot.hydra_files.items():
        (hydra_dir / name).write_bytes(content)
    if not snapshot.hydra_files and hydra_dir.is_dir() and not any(hydra_dir.iterdir()):
        hydra_dir.rmdir()


def close_log_files_under(folder: Path) -> None:
    """Close the logging file handlers (Hydra's job log) that write under ``folder``."""
    for logger in (logging.getLogger(), *_named_loggers()):
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(
                handler.baseFilename
            ).is_relative_to(folder):
                logger.removeHandler(handler)
                handler.close()


def _named_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    return [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder holding ``checkpoint`` (``<run>/checkpoints/<file>.ckpt``), or None for a
    checkpoint that is not inside one of this project's run folders. The path is absolute but
    symbolic links are kept, as Hydra keeps them in ``hydra.runtime.output_dir``."""
    path = Path(os.path.abspath(checkpoint))
    if path.parent.name != "checkpoints":
        return None
    folder = path.parent.parent
    if not any((folder / marker).exists() for marker in RUN_FOLDER_MARKERS):
        return None
    return folder


def newest_last_checkpoint(log_dir: str | Path) -> Path | None:
    """The most recently written ``checkpoints/last*.ckpt`` under ``log_dir``."""
    candidates = sorted(
        Path(log_dir).glob("**/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime
    )
    return candidates[-1] if candidates else None


def quote_override(value: str) -> str:
    """``value`` as a quoted Hydra override value (any path: spaces, commas, quotes)."""
    # Hydra reads backslashes literally except before a quote or at the end of the value.
    escaped = re.sub(r"(\\*)'", lambda m: 2 * m.group(1) + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: 2 * m.group(1), escaped)
    return f"'{escaped}'"


def register_run_dir_resolver() -> None:
    """``${fer_run_dir:...}``, cached per config like ``fer_unique_dir``."""
    if not OmegaConf.has_resolver("fer_run_dir"):
        OmegaConf.register_new_resolver("fer_run_dir", run_dir, use_cache=True)


register_run_dir_resolver()
