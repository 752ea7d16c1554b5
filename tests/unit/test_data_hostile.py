"""Hostile data files: no crash, no hang, no stale cache, bounded memory, short messages."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_lightning.data.cache import load_table
from fer_lightning.data.convert import convert
from fer_lightning.data.csv_reader import MAX_CSV_BYTES, read_bytes, read_face_csv
from fer_lightning.data.errors import DatasetError
from fer_lightning.inference.samples import ASTRONAUT_PATH
from tests.helpers.data import csv_text, random_faces, usage_column, write
from tests.helpers.inference import png_with_claimed_size


def fer_csv(path: Path, n: int = 9, seed: int = 0) -> Path:
    faces, labels = random_faces(n, seed)
    return write(path, csv_text(faces, labels, usage_column(n)))


def test_mid_file_edit_with_same_size_and_mtime_is_seen(tmp_path):
    csv = fer_csv(tmp_path / "fer2013.csv")
    cache = tmp_path / "cache"
    assert load_table(csv, cache).labels[4] == 4
    stat = csv.stat()
    text = csv.read_text().splitlines(keepends=True)
    text[5] = "6" + text[5][1:]  # row 4's label 4 -> 6, same length
    csv.write_text("".join(text))
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p, tar or rsync leave it
    assert csv.stat().st_size == stat.st_size and csv.stat().st_mtime_ns == stat.st_mtime_ns
    assert load_table(csv, cache).labels[4] == 6


@pytest.mark.parametrize("damage", ["meta-not-json", "meta-missing-keys", "labels-out-of-range"])
def test_damaged_cache_entries_are_rebuilt(tmp_path, damage, caplog):
    csv = fer_csv(tmp_path / "fer2013.csv")
    cache = tmp_path / "cache"
    expected = load_table(csv, cache).labels.copy()
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    if damage == "meta-not-json":
        (entry / "meta.json").write_text("{not json")
    elif damage == "meta-missing-keys":
        (entry / "meta.json").write_text(json.dumps({"has_usage": True}))
    else:
        np.save(entry / "labels.npy", np.full(9, 99, dtype=np.int64))
    table = load_table(csv, cache)
    np.testing.assert_array_equal(table.labels, expected)
    assert "damaged data cache entry" in caplog.text


@pytest.mark.parametrize("label", ["３", "0_5", "-0", "+1", " 1.0"])
def test_labels_are_ascii_digits_only(tmp_path, label):
    faces, labels = random_faces(3)
    text = csv_text(faces, labels, usage_column(3)).splitlines()
    text[2] = label + text[2][1:]
    path = write(tmp_path / "x.csv", "\n".join(text) + "\n")
    refused = r"line 3: emotion label .* (is not an integer|is outside 0-6)"
    with pytest.raises(DatasetError, match=refused):
        read_face_csv(path)


def test_a_huge_single_line_gives_a_short_message(tmp_path):
    path = tmp_path / "one_line.csv"
    path.write_bytes(b"x," * 5_000_000)  # 10 MB, no newline, no emotion column
    with pytest.raises(DatasetError) as error:
        read_face_csv(path)
    assert "missing column 'emotion'" in str(error.value)
    assert len(str(error.value)) < 600


def test_a_huge_pixel_token_gives_a_short_message(tmp_path):
    faces, labels = random_faces(2)
    text = csv_text(faces, labels, columns=("emotion", "pixels")).splitlines()
    text[1] = "1," + "9" * 1_000_000
    path = write(tmp_path / "x.csv", "\n".join(text) + "\n")
    with pytest.raises(DatasetError, match="line 2: pixel 1") as error:
        read_face_csv(path)
    assert len(str(error.value)) < 400


def _write_gzip_bomb(path: Path, megabytes: int, byte: bytes = b" ") -> Path:
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    with path.open("wb") as handle:
        for _ in range(megabytes):
            handle.write(compressor.compress(byte * (1 << 20)))
        handle.write(compressor.flush())
    return path


def test_gzip_and_png_bombs_stop_with_bounded_memory(tmp_path):
    bomb = _write_gzip_bomb(tmp_path / "bomb.csv.gz", 1024)  # 1 GB of spaces in about 1 MB
    assert bomb.stat().st_size < 2_000_000
    png = png_with_claimed_size(tmp_path / "bomb.png", 30000, 30000)  # 900 MP in 100 bytes
    # In a fresh process, so that the peak resident size measures this read alone.
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from fer_lightning.data.csv_reader import read_bytes\n"
        "from fer_lightning.data.errors import DatasetError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "from fer_lightning.faces.images import ImageError, read_image\n"
        "try:\n"
        "    read_bytes(Path(sys.argv[1]), 64 << 20)\n"
        "except DatasetError as error:\n"
        "    print(error)\n"
        "try:\n"
        "    read_image(sys.argv[2])\n"
        "except ImageError as error:\n"
        "    print(error)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(bomb), str(png)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    message, png_message, growth_mb = result.stdout.strip().splitlines()
    assert "expands to more than 67 MB of text" in message and "bomb.csv.gz" in message
    assert "bomb.png: too large to decode safely" in png_message
    assert int(growth_mb) < 200, growth_mb  # the limit plus a chunk, not 1 GB or 900 MP
    assert MAX_CSV_BYTES > 290_000_000 * 4  # FER2013 itself fits with room to spare


def test_truncated_and_concatenated_gzip(tmp_path):
    whole = gzip.compress(b"emotion,pixels\n") + gzip.compress(b"more\n")
    assert read_bytes(write_bytes(tmp_path / "two.gz", whole)) == b"emotion,pixels\nmore\n"
    data = gzip.compress(os.urandom(200_000))
    with pytest.raises(DatasetError, match="truncated"):
        read_bytes(write_bytes(tmp_path / "cut.gz", data[: len(data) // 2]))


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_fifo_is_neither_read_as_csv_nor_as_an_image(tmp_path):
    fifo_csv = tmp_path / "fer2013.csv"
    os.mkfifo(fifo_csv)
    with pytest.raises(DatasetError, match="not a regular file"):
        read_bytes(fifo_csv)
    src = tmp_path / "jaffe"
    src.mkdir()
    cv2.imwrite(str(src / "KA.HA1.39.tiff"), np.full((64, 64), 128, np.uint8))
    os.mkfifo(src / "KA.AN1.40.tiff")
    outcome: dict[str, object] = {}

    def run() -> None:
        outcome["report"] = convert("jaffe", src, tmp_path / "jaffe.csv")

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "convert hung on a FIFO"
    assert outcome["report"].rows == 1


def _image_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "train" / "happy").mkdir(parents=True)
    (src / "val" / "sad").mkdir(parents=True)
    (src / "test" / "angry").mkdir(parents=True)
    photo = ASTRONAUT_PATH.read_bytes()
    for folder in ("train/happy", "val/sad", "test/angry"):
        (src / folder / "ok.jpg").write_bytes(photo)
    return src


def test_prepare_reads_non_utf8_names(tmp_path):
    src = _image_folder(tmp_path)
    odd = os.fsencode(src / "train" / "happy") + b"/caf\xe9.jpg"
    with open(odd, "wb") as handle:
        handle.write(ASTRONAUT_PATH.read_bytes())
    report = convert("folder", src, tmp_path / "out.csv")
    assert report.rows == 4 and not report.problems
    assert len(read_face_csv(tmp_path / "out.csv")) == 4


def test_prepare_refuses_truncated_images_and_pixel_bombs(tmp_path):
    src = _image_folder(tmp_path)
    photo = ASTRONAUT_PATH.read_bytes()
    (src / "train" / "happy" / "cut.jpg").write_bytes(photo[: len(photo) // 2])
    png_with_claimed_size(src / "train" / "happy" / "bomb.png", 30000, 30000)
    before = sorted(p.read_bytes() for p in src.rglob("*") if p.is_file())
    with pytest.raises(DatasetError) as error:
        convert("folder", src, tmp_path / "out.csv")
    message = str(error.value)
    assert "2 problem(s), nothing written" in message
    assert "cut.jpg: unreadable or damaged image" in message
    assert "bomb.png: too large to decode safely" in message
    assert not (tmp_path / "out.csv").exists()
    report = convert("folder", src, tmp_path / "out.csv", skip_bad=True)
    assert report.rows == 3 and len(report.problems) == 2
    assert sorted(p.read_bytes() for p in src.rglob("*") if p.is_file()) == before
