"""``python -m fer_lightning.data check|prepare``: output, exit codes, no traceback."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fer_lightning.cli.data import main
from tests.helpers.data import csv_text, random_faces, write


def _run(*args: str) -> subprocess.CompletedProcess:
    """The command in this process (what a subprocess would print, without its start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exit_:  # argparse
            status = exit_.code
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


@pytest.mark.slow
def test_module_entry_point_is_the_same_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fer_lightning.data", "check", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "missing.csv: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_valid_file_prints_splits_histogram_and_duplicates(tmp_path):
    faces, labels = random_faces(8)
    faces[5] = faces[0]  # the same image in train (row 0) and val (row 5)
    faces[6] = faces[3]  # and a duplicate within train
    usage = ["Training"] * 5 + ["PublicTest"] + ["Training"] + ["PrivateTest"]
    path = write(tmp_path / "fer2013.csv", csv_text(faces, labels, usage))
    result = _run("check", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "train        6" in out and "val          1" in out and "test         1" in out
    train_line = next(line for line in out.splitlines() if line.strip().startswith("train"))
    assert train_line.split()[2:] == ["1", "1", "1", "1", "1", "0", "1"]  # labels 0-4 and 6
    assert "within a split (extra copies): train 1, val 0, test 0" in out
    assert "train-val 1, train-test 0, val-test 0" in out


def test_check_bad_file_exits_2_with_file_and_line_and_no_traceback(tmp_path):
    faces, labels = random_faces(4)
    lines = csv_text(faces, labels, ["Training"] * 4).split("\n")
    lines[3] = lines[3].replace("Training", "Train")
    path = write(tmp_path / "fer2013.csv", "\n".join(lines))
    result = _run("check", str(path), str(tmp_path / "missing.csv"))
    assert result.returncode == 2
    assert f"error: {path}, line 4: unknown Usage value 'Train'" in result.stderr
    assert "missing.csv: no such file" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_skip_mode_summarises_and_exits_1(tmp_path, capsys):
    faces, labels = random_faces(4)
    lines = csv_text(faces, labels, None, ("emotion", "pixels")).split("\n")
    lines[2] = "9" + lines[2][1:]
    path = write(tmp_path / "jaffe.csv", "\n".join(lines))
    assert main(["check", "--on-bad-row", "skip", str(path)]) == 1
    out = capsys.readouterr().out
    assert "skipped 1 bad rows" in out and ": 3" in out and "train        3" in out


def test_check_dataset_folder(tmp_path, capsys):
    for split in ("train", "val", "test"):
        write(
            tmp_path / f"{split}.csv.gz",
            csv_text(*random_faces(3), None, ("emotion", "pixels")),
            gz=True,
        )
    assert main(["check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train.csv.gz" in out and "val          3" in out


def test_check_folder_without_dataset(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    assert "no dataset found: looked for fer2013.csv" in capsys.readouterr().err


def test_prepare_jaffe_and_user_errors(tmp_path):
    src = tmp_path / "jaffe"
    src.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    cv2.imwrite(str(src / "KA.SA1.33.tiff"), image)
    out = tmp_path / "jaffe.csv"
    result = _run("prepare", "jaffe", str(src), str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote 1 faces to {out} (crop: center 1)" in result.stdout
    assert out.read_text().splitlines()[1].startswith("4,")

    cv2.imwrite(str(src / "KA.ZZ1.34.tiff"), image)
    result = _run("prepare", "jaffe", str(src), str(tmp_path / "x.csv"))
    assert result.returncode == 2 and "KA.ZZ1.34.tiff: not a JAFFE name" in result.stderr
    assert "Traceback" not in result.stderr
    result = _run("prepare", "faces", str(tmp_path / "nowhere"), str(tmp_path / "x.csv"))
    assert result.returncode == 2 and "no such folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_a_missing_path_says_what_it_looks_for(tmp_path):
    result = _run("check", str(tmp_path / "data" / "fer2013"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fer2013: no such file or folder" in result.stderr
    for words in ("emotion,pixels", "fer2013.csv or icml_face_data.csv", "train.csv/val.csv"):
        assert words in result.stderr, words
