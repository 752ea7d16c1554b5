"""Readers: every accepted layout, every validation error (file + line), skip mode, the cache."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from fer_lightning.data.cache import load_table
from fer_lightning.data.csv_reader import read_face_csv
from fer_lightning.data.errors import DatasetError, DatasetNotFoundError
from fer_lightning.data.layouts import load_splits
from tests.helpers.data import csv_text, random_faces, usage_column, write

N = 9


@pytest.fixture
def data():
    return random_faces(N)


def _check_splits(splits, faces, labels, usage):
    codes = np.array([("Training", "PublicTest", "PrivateTest").index(u) for u in usage])
    for code, split in enumerate(("train", "val", "test")):
        rows = np.flatnonzero(codes == code)
        np.testing.assert_array_equal(splits[split].faces, faces[rows])
        np.testing.assert_array_equal(splits[split].labels, labels[rows])
        assert splits[split].labels.dtype == np.int64


def test_kaggle_fer2013_csv(tmp_path, data):
    faces, labels = data
    usage = usage_column(N)
    path = write(tmp_path / "fer2013.csv", csv_text(faces, labels, usage))
    table = read_face_csv(path)
    assert table.faces.dtype == np.uint8 and table.faces.shape == (N, 48, 48)
    np.testing.assert_array_equal(table.faces, faces)
    _check_splits(load_splits(tmp_path), faces, labels, usage)  # the folder finds fer2013.csv


def test_icml_face_data_with_leading_space_columns(tmp_path, data):
    faces, labels = data
    usage = usage_column(N)
    text = csv_text(faces, labels, usage, columns=("emotion", " Usage", " pixels"), sep=", ")
    path = write(tmp_path / "icml_face_data.csv", text)
    _check_splits(load_splits(path), faces, labels, usage)
    _check_splits(load_splits(tmp_path), faces, labels, usage)


def test_folder_with_train_val_test(tmp_path, data):
    faces, labels = data
    for split, rows in (("train", slice(0, 5)), ("val", slice(5, 7)), ("test", slice(7, 9))):
        text = csv_text(faces[rows], labels[rows], columns=("emotion", "pixels"))
        write(tmp_path / f"{split}.csv", text)
    splits = load_splits(tmp_path)
    np.testing.assert_array_equal(splits["train"].faces, faces[:5])
    np.testing.assert_array_equal(splits["val"].labels, labels[5:7])
    np.testing.assert_array_equal(splits["test"].faces, faces[7:])


def test_single_split_csv_is_train(tmp_path, data):
    faces, labels = data
    path = write(tmp_path / "jaffe.csv", csv_text(faces, labels, columns=("emotion", "pixels")))
    splits = load_splits(path)
    assert list(splits) == ["train"]
    np.testing.assert_array_equal(splits["train"].faces, faces)
    assert read_face_csv(path).usage is None


@pytest.mark.parametrize(
    "variant",
    [
        {"gz": True},
        {"crlf": True},
        {"bom": True},
        {"crlf": True, "bom": True, "gz": True},
        {"quote": True},
        {"quote": True, "crlf": True},
    ],
)
def test_gzip_crlf_bom_quotes(tmp_path, data, variant):
    faces, labels = data
    quote = variant.pop("quote", False)
    text = csv_text(faces, labels, usage_column(N), quote_pixels=quote)
    name = "fer2013.csv.gz" if variant.get("gz") else "fer2013.csv"
    path = write(tmp_path / name, text, **variant)
    table = read_face_csv(path)
    np.testing.assert_array_equal(table.faces, faces)
    np.testing.assert_array_equal(table.labels, labels)
    _check_splits(load_splits(tmp_path), faces, labels, usage_column(N))


def test_extra_columns_blank_lines_and_no_final_newline(tmp_path, data):
    faces, labels = data
    text = csv_text(faces, labels, columns=("emotion", "pixels"))
    lines = text.rstrip("\n").split("\n")
    lines = [lines[0] + ",subject,crop"] + [
        f"{line},S{i},center" for i, line in enumerate(lines[1:])
    ]
    lines.insert(3, "")
    table = read_face_csv(write(tmp_path / "x.csv", "\n".join(lines)))
    np.testing.assert_array_equal(table.faces, faces)


# --------------------------------------------------------------------------- validation
def _bad_file(tmp_path, data, row: int, field: str, value: str, usage=True):
    """A valid file with one field of data row ``row`` (0-based; line row + 2) replaced."""
    faces, labels = data
    text = csv_text(faces, labels, usage_column(N) if usage else None)
    lines = text.split("\n")
    emotion, pixels, usage_value = lines[row + 1].split(",")
    fields = {"emotion": emotion, "pixels": pixels, "usage": usage_value}
    fields[field] = value
    lines[row + 1] = ",".join(fields.values())
    return write(tmp_path / "bad.csv", "\n".join(lines))


def _pixels_with(index: int, token: str, count: int = 2304) -> str:
    tokens = ["7"] * count
    if index is not None:
        tokens[index] = token
    return " ".join(tokens)


@pytest.mark.parametrize(
    ("row", "field", "value", "expected"),
    [
        (0, "pixels", _pixels_with(None, "", 2303), "2303 pixel values, expected 2304"),
        (4, "pixels", _pixels_with(None, "", 2305), "2305 pixel values, expected 2304"),
        (3, "pixels", _pixels_with(100, "x12"), "pixel 101 ('x12') is not an integer"),
        (3, "pixels", _pixels_with(5, "1.5"), "pixel 6 ('1.5') is not an integer"),
        (6, "pixels", _pixels_with(2303, "256"), "pixel 2304 has value 256, outside 0-255"),
        (2, "pixels", _pixels_with(0, "1000"), "pixel 1 has value 1000, outside 0-255"),
        (2, "pixels", _pixels_with(9, "-1"), "pixel 10 has value -1, outside 0-255"),
        (1, "pixels", "", "the pixels field is empty"),
        (5, "emotion", "7", "emotion label 7 is outside 0-6"),
        (5, "emotion", "-1", "emotion label -1 is outside 0-6"),
        (8, "emotion", "", "missing emotion label"),
        (8, "emotion", "happy", "emotion label 'happy' is not an integer"),
        (7, "usage", "Validation", "unknown Usage value 'Validation'"),
        (0, "usage", "", "unknown Usage value empty"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, data, row, field, value, expected):
    path = _bad_file(tmp_path, data, row, field, value)
    with pytest.raises(DatasetError) as err:
        read_face_csv(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line {row + 2}: ")
    assert expected in message


def test_first_bad_line_is_reported_when_several(tmp_path, data):
    faces, labels = data
    lines = csv_text(faces, labels, usage_column(N)).split("\n")
    lines[7] = lines[7].replace("Training", "Nope").replace("PublicTest", "Nope")
    lines[7] = lines[7].replace("PrivateTest", "Nope")
    lines[3] = "9" + lines[3][1:]  # label 9 on line 4
    path = write(tmp_path / "bad.csv", "\n".join(lines))
    with pytest.raises(DatasetError, match=r"line 4: emotion label 9 .*\(1 more bad rows\)"):
        read_face_csv(path)


def test_wrong_column_count(tmp_path, data):
    faces, labels = data
    lines = csv_text(faces, labels, usage_column(N)).split("\n")
    lines[5] = lines[5] + ",extra"
    path = write(tmp_path / "bad.csv", "\n".join(lines))
    with pytest.raises(
        DatasetError, match=r"line 6: expected 3 comma-separated columns .* found 4"
    ):
        read_face_csv(path)


@pytest.mark.parametrize(
    ("header", "missing"), [("emotion,Usage", "pixels"), ("label,pixels,Usage", "emotion")]
)
def test_missing_column_is_line_1(tmp_path, header, missing):
    path = write(tmp_path / "bad.csv", f"{header}\n0,1 2,Training\n")
    with pytest.raises(DatasetError, match=rf"bad.csv, line 1: missing column '{missing}'"):
        read_face_csv(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        (b"\n \r\n", "the file is empty"),
        (b"emotion,pixels,Usage\n", "has a header but no data rows"),
        (b"emotion,pixels,Usage\r\n\r\n", "has a header but no data rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"),
        (b"\xff\xfe\xfa,emotion\n0,1\n", "not a text file"),
        (b"\x1f\x8b\x08\x00garbage", "not a readable gzip file"),
    ],
)
def test_whole_file_errors(tmp_path, content, expected):
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=expected) as err:
        read_face_csv(path)
    assert str(path) in str(err.value)


def test_missing_path_and_folder_without_dataset(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"nope\.csv: no such file"):
        read_face_csv(tmp_path / "nope.csv")
    with pytest.raises(DatasetNotFoundError, match="no such file or folder"):
        load_splits(tmp_path / "missing")
    (tmp_path / "a.csv").write_text("emotion,pixels\n")
    (tmp_path / "b.csv").write_text("emotion,pixels\n")
    with pytest.raises(DatasetNotFoundError, match=r"looked for fer2013.csv.*holds 2 other CSVs"):
        load_splits(tmp_path)
    assert issubclass(DatasetNotFoundError, DatasetError) and issubclass(DatasetError, ValueError)


def test_skip_mode_reports_count_and_lines(tmp_path, data, caplog):
    faces, labels = data
    lines = csv_text(faces, labels, usage_column(N)).split("\n")
    lines[2] = "8" + lines[2][1:]
    lines[6] = lines[6].replace(" 7 ", " seven ", 1) if " 7 " in lines[6] else lines[6] + " 1"
    path = write(tmp_path / "bad.csv", "\n".join(lines))
    with pytest.raises(DatasetError, match="line 3"):
        read_face_csv(path)  # never the default
    with caplog.at_level(logging.WARNING):
        table = read_face_csv(path, on_bad_row="skip")
    assert [line for line, _ in table.skipped] == [3, 7]
    assert "skipped 2 bad rows" in caplog.text and "lines 3, 7" in caplog.text
    keep = [i for i in range(N) if i not in (1, 5)]
    np.testing.assert_array_equal(table.faces, faces[keep])
    np.testing.assert_array_equal(table.labels, labels[keep])


def test_skip_mode_when_every_row_is_bad(tmp_path):
    path = write(tmp_path / "bad.csv", "emotion,pixels\n9,1 2\n")
    with pytest.raises(DatasetError, match="every data row is bad"):
        read_face_csv(path, on_bad_row="skip")


# --------------------------------------------------------------------------- cache
def test_cache_hit_then_reread_after_change(tmp_path, data):
    faces, labels = data
    path = write(tmp_path / "fer2013.csv", csv_text(faces, labels, usage_column(N)))
    cache = tmp_path / "cache"
    first = load_table(path, cache)
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and isinstance(first.faces, np.memmap)
    np.testing.assert_array_equal(first.faces, faces)

    second = load_table(path, cache)  # from the cache: the same entry, memory-mapped
    assert isinstance(second.faces, np.memmap)
    assert os.path.samefile(second.faces.filename, entries[0] / "faces.npy")

    changed_labels = (labels + 1) % 7
    write(path, csv_text(faces, changed_labels, usage_column(N)))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime on any filesystem
    third = load_table(path, cache)
    np.testing.assert_array_equal(third.labels, changed_labels)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2


def test_cache_keeps_skip_report_and_error_mode_still_raises(tmp_path, data, caplog):
    faces, labels = data
    lines = csv_text(faces, labels, usage_column(N)).split("\n")
    lines[4] = "7" + lines[4][1:]
    path = write(tmp_path / "bad.csv", "\n".join(lines))
    cache = tmp_path / "cache"
    assert [ln for ln, _ in load_table(path, cache, "skip").skipped] == [5]
    with caplog.at_level(logging.WARNING):
        again = load_table(path, cache, "skip")
    assert [ln for ln, _ in again.skipped] == [5] and "skipped 1 bad rows" in caplog.text
    with pytest.raises(DatasetError, match="line 5"):
        load_table(path, cache, "error")


def test_damaged_cache_entry_is_replaced(tmp_path, data, caplog):
    faces, labels = data
    path = write(tmp_path / "fer2013.csv", csv_text(faces, labels, usage_column(N)))
    cache = tmp_path / "cache"
    load_table(path, cache)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    (entry / "faces.npy").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        table = load_table(path, cache)
    assert "damaged data cache entry" in caplog.text
    np.testing.assert_array_equal(table.faces, faces)
    assert isinstance(load_table(path, cache).faces, np.memmap)  # rewritten
