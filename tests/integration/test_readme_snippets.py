"""The README's Python snippets run as written.

The ```python blocks of README.md run in order in one namespace (as a reader would paste them
into one Python session), in a working folder laid out as a user's is after the README's own
commands: a finished demo run
(``outputs/train/demo/2026-11-28_10-00-00/`` with ``model.pt``, ``results.json`` and its
checkpoints), photos (``photo.jpg``, ``a.jpg``, ``b.jpg``) and a short video (``clip.mp4``),
the published checkpoint in the download cache and the ImageNet trunk in torch's hub cache
(downloads are switched off, so a snippet that would download fails instead). The networks
are small stand-ins (a ResNet-18 at 64x64) except where a snippet names an architecture.
A snippet that names a file no user would have fails with the file's name.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.readme_workdir import DEMO_RUN, prepare_workdir

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def elided_paths(code: str) -> list[str]:
    """String literals of ``code`` that are paths with a ``...`` in them (no user has one)."""
    literals = re.findall(r"""["']([^"'\n]*/\.\.\./[^"'\n]*)["']""", code)
    return literals


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert blocks, "README.md has no ```python blocks"
    prepare_workdir(tmp_path, "\n".join(blocks), monkeypatch)
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, code in enumerate(blocks, start=1):
        elided = elided_paths(code)
        assert not elided, (
            f"README.md python block {number} names {elided}: no user has such a path; name a "
            f"file of the demo run ({DEMO_RUN}/model.pt, checkpoints/last.ckpt) instead."
        )
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"README.md python block {number} failed:\n{code}") from error
