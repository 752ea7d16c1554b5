"""Files the data layer writes get the permissions of any new file (the umask), not 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_lightning.data.cache import load_table
from fer_lightning.data.convert import convert
from fer_lightning.data.synthetic import generate_synthetic_csv, generate_synthetic_ferplus

SIZES = {"train_per_class": 1, "val_per_class": 1, "test_per_class": 1, "seed": 0}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_generated_and_converted_csvs_and_the_cache_follow_the_umask(tmp_path, umask):
    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask
    synthetic = generate_synthetic_csv(tmp_path / "synthetic", **SIZES)
    pixels, votes = generate_synthetic_ferplus(tmp_path / "ferplus", **SIZES)
    src = tmp_path / "jaffe"
    src.mkdir()
    cv2.imwrite(str(src / "KA.HA1.39.tiff"), np.full((64, 64), 128, np.uint8))
    converted = tmp_path / "jaffe.csv"
    convert("jaffe", src, converted)
    for path in (synthetic, pixels, votes, converted):
        assert mode(path) == file_mode, (path, oct(mode(path)))
    cache = tmp_path / "cache"
    load_table(synthetic, cache)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    assert mode(entry) == folder_mode
    assert {mode(p) for p in cache.rglob("*") if p.is_file()} == {file_mode}
    assert not list(tmp_path.rglob("*.part"))  # no temporary file left behind
