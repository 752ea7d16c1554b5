"""Run folders: one per run, never shared, and the folder a resumed run continues in.

``${fer_unique_dir:PATH}`` (conf/hydra/default.yaml) names a run folder: ``PATH`` itself, or
``PATH_2``, ``PATH_3``, ... when a run started in the same second already took it. The folder is
created here with an exclusive ``mkdir``, so two processes can never both get it; the resolver
is cached per config, so every later reading of ``hydra.run.dir`` in one run gives the same one.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

# Files that mark a folder as one of this project's run folders.
RUN_FOLDER_MARKERS = (".hydra", "results.json", "train.log")
# A run that ended with an error leaves this file (the error and its traceback) in its folder.
FAILED_MARKER = "FAILED"


def unique_dir(path: str) -> str:
    """``path``, or the first free ``path_N`` (N = 2, 3, ...), created empty; its text."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        candidate = base if number == 1 else base.with_name(f"{base.name}_{number}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return str(candidate)
    raise AssertionError("unreachable")


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder holding ``checkpoint`` (``<run>/checkpoints/<file>.ckpt``), or None for a
    checkpoint that is not inside one of this project's run folders. The path is absolute but
    symbolic links are kept, as Hydra keeps them in ``hydra.runtime.output_dir``."""
    path = Path(os.path.abspath(checkpoint))
    if path.parent.name != "checkpoints":
        return None
    run_dir = path.parent.parent
    if not any((run_dir / marker).exists() for marker in RUN_FOLDER_MARKERS):
        return None
    return run_dir


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
