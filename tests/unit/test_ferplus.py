"""FER+: the row-by-row check against FER2013, the dropped rows, each label mode's targets, the
soft-target loss, the data check's vote statistics and the synthetic FER+ files."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer_lightning.data import DatasetError, DatasetNotFoundError, FERDataModule
from fer_lightning.data.check import summarize
from fer_lightning.data.csv_reader import read_face_csv
from fer_lightning.data.ferplus import (
    DROP_REASONS,
    NO_IMAGE,
    NO_MAJORITY,
    SPREAD,
    UNKNOWN,
    majority_labels,
    read_votes,
)
from fer_lightning.data.synthetic import FER_TO_FERPLUS, generate_synthetic_ferplus
from fer_lightning.labels import FERPLUS_EMOTIONS
from fer_lightning.training.module import FERClassifier, hard_labels
from tests.helpers.data import csv_text, random_faces, write

HEADER = (
    "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
)
# (Usage, has an image name, the 10 vote counts) and what each row must give.
ROWS = [
    # Training
    ("Training", True, (10, 0, 0, 0, 0, 0, 0, 0, 0, 0)),  # a: neutral, unanimous
    ("Training", True, (0, 6, 4, 0, 0, 0, 0, 0, 0, 0)),  # b: happiness 6 / surprise 4
    ("Training", True, (0, 0, 0, 5, 4, 0, 1, 0, 0, 0)),  # c: the single fear vote is dropped
    ("Training", True, (4, 4, 0, 2, 0, 0, 0, 0, 0, 0)),  # d: a tie: no majority, two emotions
    ("Training", True, (4, 0, 0, 0, 0, 0, 0, 0, 6, 0)),  # e: unknown has the most votes
    ("Training", False, (0, 0, 0, 0, 0, 0, 0, 0, 0, 10)),  # f: not a face, no image name
    ("Training", True, (0, 0, 0, 0, 3, 3, 2, 2, 0, 0)),  # g: four emotions: too spread
    ("Training", True, (5, 0, 0, 0, 0, 0, 0, 0, 5, 0)),  # h: neutral ties unknown
    # PublicTest
    ("PublicTest", True, (0, 0, 0, 0, 0, 0, 0, 9, 1, 0)),  # contempt
    ("PublicTest", True, (0, 0, 9, 0, 0, 0, 0, 0, 0, 1)),  # surprise
    # PrivateTest
    ("PrivateTest", True, (0, 1, 0, 0, 0, 8, 1, 0, 0, 0)),  # disgust
    ("PrivateTest", True, (4, 4, 0, 2, 0, 0, 0, 0, 0, 0)),  # a tie: dropped in every mode
]
KEPT_MAJORITY = {0: 0, 1: 1, 2: 3}  # row -> label
DISTRIBUTIONS = {
    0: [1, 0, 0, 0, 0, 0, 0, 0],
    1: [0, 0.6, 0.4, 0, 0, 0, 0, 0],
    2: [0, 0, 0, 5 / 9, 4 / 9, 0, 0, 0],
    3: [0.5, 0.5, 0, 0, 0, 0, 0, 0],
}


def label_text(rows=ROWS) -> str:
    lines = [HEADER]
    for i, (usage, named, votes) in enumerate(rows):
        name = f"fer{i:07d}.png" if named else ""
        lines.append(",".join([usage, name, *map(str, votes)]))
    return "\n".join(lines) + "\n"


@pytest.fixture
def ferplus_root(tmp_path):
    """data.root with fer2013/fer2013.csv (pixels) and fer2013/fer2013new.csv (votes)."""
    faces, labels = random_faces(len(ROWS))
    usage = [usage for usage, _, _ in ROWS]
    write(tmp_path / "fer2013" / "fer2013.csv", csv_text(faces, labels, usage))
    write(tmp_path / "fer2013" / "fer2013new.csv", label_text())
    return tmp_path


def datamodule(root, mode="majority", **kwargs) -> FERDataModule:
    dm = FERDataModule(
        "ferplus", root=str(root), num_workers=0, augment={}, ferplus={"labels": mode}, **kwargs
    )
    dm.setup("fit")
    return dm


def all_items(dataset):
    return dataset.__getitems__(list(range(len(dataset))))


# ---------------------------------------------------------------------------- row agreement


def test_a_shifted_label_file_is_refused_with_its_first_disagreeing_line(ferplus_root):
    # Row d (line 5) deleted: every later row moves up one, and the first Usage that no longer
    # matches is the first PublicTest row, now on line 9 against image row 8 (Training).
    shifted = [row for i, row in enumerate(ROWS) if i != 3]
    write(ferplus_root / "fer2013" / "fer2013new.csv", label_text(shifted))
    with pytest.raises(DatasetError) as err:
        datamodule(ferplus_root)
    message = str(err.value)
    assert "fer2013new.csv, line 9: Usage PublicTest but row 8 of" in message
    assert "fer2013.csv is Training" in message
    assert "(11 label rows, 12 image rows)" in message


def test_a_shortened_label_file_is_refused_with_the_first_missing_row(ferplus_root):
    write(ferplus_root / "fer2013" / "fer2013new.csv", label_text(ROWS[:-2]))
    with pytest.raises(DatasetError) as err:
        datamodule(ferplus_root)
    message = str(err.value)
    assert "fer2013new.csv: ends after line 11 (row 10)" in message
    assert "first row without labels is row 11 of" in message


def test_a_longer_label_file_is_refused_too(ferplus_root):
    write(ferplus_root / "fer2013" / "fer2013new.csv", label_text([*ROWS, ROWS[-1]]))
    with pytest.raises(
        DatasetError, match=r"fer2013new.csv, line 14: row 13, but .* ends at row 12"
    ):
        datamodule(ferplus_root)


def test_bad_label_files_name_the_line(tmp_path):
    path = write(tmp_path / "new.csv", label_text().replace(",0,6,4,", ",0,six,4,"))
    with pytest.raises(DatasetError, match=r"new.csv, line 3: the happiness vote count 'six'"):
        read_votes(path)
    path = write(tmp_path / "new.csv", label_text().replace("PublicTest", "Public"))
    with pytest.raises(DatasetError, match=r"line 10: unknown Usage value 'Public'"):
        read_votes(path)
    path = write(tmp_path / "new.csv", label_text().replace(",contempt", ""))
    with pytest.raises(DatasetError, match=r"line 1: not a FER\+ label file: no column 'contempt'"):
        read_votes(path)


def test_missing_label_file_says_where_to_get_it(ferplus_root):
    (ferplus_root / "fer2013" / "fer2013new.csv").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        datamodule(ferplus_root)
    assert "fer2013new.csv" in str(err.value) and "microsoft/FERPlus" in str(err.value)


def test_skipped_image_rows_would_misalign_the_labels_and_are_refused(ferplus_root):
    faces, labels = random_faces(len(ROWS))
    text = csv_text(faces, labels, [usage for usage, _, _ in ROWS]).replace(
        ",Training", ",Trainin", 1
    )
    write(ferplus_root / "fer2013" / "fer2013.csv", text)
    with pytest.raises(DatasetError, match="1 bad rows were skipped"):
        datamodule(ferplus_root, on_bad_row="skip")


# ---------------------------------------------------------------------------- targets and drops


def test_majority_mode_targets_and_dropped_rows(ferplus_root):
    dm = datamodule(ferplus_root, "majority")
    faces, labels = all_items(dm.train_set)
    assert labels.dtype == torch.int64
    assert labels.tolist() == list(KEPT_MAJORITY.values())
    expected_faces = random_faces(len(ROWS))[0][list(KEPT_MAJORITY)]
    assert np.array_equal(faces.numpy(), expected_faces)  # the right images with the labels
    assert dm.source.report["train"] == {
        "rows": 8,
        "kept": 3,
        "dropped": {NO_IMAGE: 1, UNKNOWN: 1, NO_MAJORITY: 3},
    }
    assert dm.num_classes == 8 and dm.label_names == FERPLUS_EMOTIONS


@pytest.mark.parametrize("mode", ["majority", "probability", "crossentropy"])
def test_validation_and_test_always_use_majority_labels(ferplus_root, mode):
    dm = datamodule(ferplus_root, mode)
    assert all_items(dm.val_set)[1].tolist() == [7, 2]  # contempt, surprise
    assert all_items(dm.test_set)[1].tolist() == [5]  # disgust; the tie is dropped
    assert dm.source.report["test"]["dropped"] == {NO_MAJORITY: 1}


def test_crossentropy_mode_gives_the_vote_distributions(ferplus_root):
    dm = datamodule(ferplus_root, "crossentropy")
    _, targets = all_items(dm.train_set)
    assert targets.dtype == torch.float32 and targets.shape == (4, 8)
    expected = torch.tensor(list(DISTRIBUTIONS.values()), dtype=torch.float32)
    assert torch.allclose(targets, expected)
    assert dm.source.report["train"]["dropped"] == {NO_IMAGE: 1, UNKNOWN: 1, SPREAD: 2}
    # Class counts (and so class weights and balanced sampling) use each row's largest class.
    assert dm.class_counts().tolist() == [2, 1, 0, 1, 0, 0, 0, 0]


def test_probability_mode_draws_a_label_per_fetch_from_the_distribution(ferplus_root):
    dm = datamodule(ferplus_root, "probability")
    torch.manual_seed(0)
    draws = torch.stack([dm.train_set.__getitems__([0, 1, 2, 3])[1] for _ in range(2000)])
    assert draws.dtype == torch.int64
    assert set(draws[:, 0].tolist()) == {0}
    assert set(draws[:, 1].tolist()) == {1, 2}  # never a class without votes
    assert 0.55 < (draws[:, 1] == 1).float().mean() < 0.65  # happiness has 6 of 10 votes
    assert 0.50 < (draws[:, 2] == 3).float().mean() < 0.61  # sadness 5 of 9
    assert set(draws[:, 3].tolist()) == {0, 1}


def test_majority_rule_on_edge_cases():
    votes = np.array(
        [
            [6, 0, 0, 0, 0, 0, 0, 0, 4, 0],  # neutral has 6 of 10
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # only single votes: nothing left
            [0, 0, 0, 0, 0, 0, 0, 0, 3, 7],  # not a face
            [3, 0, 0, 0, 0, 0, 0, 0, 3, 3],  # neutral ties unknown and NF, no majority
        ]
    )
    labels, reason = majority_labels(votes, np.ones(4, dtype=bool))
    assert labels.tolist() == [0, -1, -1, -1]
    assert [DROP_REASONS[r] for r in reason[1:]] == [NO_MAJORITY, UNKNOWN, NO_MAJORITY]


def test_soft_targets_train_with_cross_entropy_against_the_distribution():
    module = FERClassifier(arch="resnet18", num_classes=8, input_size=64)
    logits = torch.randn(3, 8)
    distribution = torch.tensor([[0.6, 0.4, 0, 0, 0, 0, 0, 0]] * 3)
    expected = -(distribution * F.log_softmax(logits, dim=1)).sum(1).mean()
    assert torch.allclose(module._loss(logits, distribution, weighted=False), expected)
    one_hot = F.one_hot(torch.tensor([2, 0, 7]), 8).float()
    hard = module._loss(logits, torch.tensor([2, 0, 7]), weighted=False)
    assert torch.allclose(module._loss(logits, one_hot, weighted=False), hard)
    assert hard_labels(distribution).tolist() == [0, 0, 0]


# ---------------------------------------------------------------------------- config, check


def test_ferplus_config_gives_the_model_eight_named_classes(tmp_path):
    from tests.helpers.hydra import compose_train

    cfg = compose_train(tmp_path, ["data=ferplus", "model=resnet18"])
    assert cfg.data.dataset == "ferplus" and cfg.data.ferplus.labels == "majority"
    assert cfg.model.num_classes == 8 and list(cfg.model.label_names) == list(FERPLUS_EMOTIONS)
    assert cfg.data.augment.Rotate.limit == 30  # the shared defaults
    cfg = compose_train(tmp_path, ["experiment=ferplus"])
    assert cfg.model.arch == "resmasking_dropout1" and cfg.data.dataset == "ferplus"
    assert cfg.model.pretrained_backbone == "imagenet" and cfg.trainer.max_epochs == 50
    cfg = compose_train(tmp_path, ["data=fer2013"])
    assert cfg.model.num_classes == 7 and cfg.model.label_names[0] == "angry"


def test_mismatched_class_settings_are_refused():
    with pytest.raises(ValueError, match=r"data\.num_classes=7, but the ferplus data have 8"):
        FERDataModule("ferplus", root="unused", num_classes=7)
    with pytest.raises(ValueError, match=r"data\.ferplus\.labels must be one of"):
        FERDataModule("ferplus", root="unused", ferplus={"labels": "soft"})
    with pytest.raises(ValueError, match="label_names has 7 names for 8 classes"):
        FERClassifier(arch="resnet18", num_classes=8, label_names=["a"] * 7)


def test_data_check_shows_vote_statistics_and_refuses_a_shifted_file(ferplus_root):
    out = io.StringIO()
    summarize(ferplus_root / "fer2013" / "fer2013new.csv", out)
    text = out.getvalue()
    assert "12 rows, row by row the same as" in text
    train_line = next(line for line in text.splitlines() if line.split()[:1] == ["train"])
    # rows, votes per row, unanimous, dropped (no image, unknown, no majority), then the
    # majority histogram: neutral 1, happiness 1, sadness 1.
    assert (
        train_line.split()[1:] == ["8", "10.00", "2", "1", "1", "3", "1", "1", "0", "1"] + ["0"] * 4
    )
    out = io.StringIO()
    summarize(ferplus_root / "fer2013", out)  # the folder: FER2013's summary, then the votes
    assert "angry" in out.getvalue() and "FER+ votes" in out.getvalue()
    write(ferplus_root / "fer2013" / "fer2013new.csv", label_text(ROWS[1:]))
    with pytest.raises(DatasetError, match=r"fer2013new.csv, line \d+: Usage"):
        summarize(ferplus_root / "fer2013" / "fer2013new.csv", io.StringIO())


def test_synthetic_ferplus_files_read_through_the_whole_path(tmp_path):
    pixels, labels_file = generate_synthetic_ferplus(
        tmp_path / "fer2013", train_per_class=6, val_per_class=2, test_per_class=2, seed=3
    )
    again = generate_synthetic_ferplus(
        tmp_path / "again", train_per_class=6, val_per_class=2, test_per_class=2, seed=3
    )
    assert labels_file.read_bytes() == again[1].read_bytes()  # deterministic by seed
    votes = read_votes(labels_file)
    assert len(votes) == 7 * 10 and votes.votes.sum(1).max() == 10
    assert not votes.has_image.all()  # some non-faces, as FER+ marks them
    labels, reason = majority_labels(votes.votes, votes.has_image)
    assert {DROP_REASONS[r] for r in reason[reason >= 0]} == {NO_IMAGE, UNKNOWN, NO_MAJORITY}
    kept = reason == -1
    assert 0.5 < kept.mean() < 1
    # The majority label is the face's true class, in FER+'s order.
    true = np.asarray(FER_TO_FERPLUS)[read_face_csv(pixels).labels]
    assert np.mean(true[kept] == labels[kept]) > 0.9
    dm = datamodule(tmp_path)
    assert len(dm.train_set) == sum(kept[votes.usage == 0])


# ---------------------------------------------------------------------------- image names


def named_label_text(rows: list[tuple[str, int | None, tuple[int, ...]]]) -> str:
    """A label file whose rows carry the given image numbers (None: no image name)."""
    lines = [HEADER]
    for usage, number, votes in rows:
        name = "" if number is None else f"fer{number:07d}.png"
        lines.append(",".join([usage, name, *map(str, votes)]))
    return "\n".join(lines) + "\n"


def rows_with_names():
    """ROWS with the names FER+ gives them: each row's own index, none for the non-face."""
    return [(usage, i if named else None, votes) for i, (usage, named, votes) in enumerate(ROWS)]


def test_a_label_file_shifted_inside_a_split_is_refused(ferplus_root):
    # Training row 1 dropped, the last Training row duplicated: the same row count and the same
    # Usage on every row, but every Training label between them belongs to the next image.
    rows = rows_with_names()
    shifted = [rows[0], *rows[2:8], rows[7], *rows[8:]]
    assert [r[0] for r in shifted] == [r[0] for r in rows]
    write(ferplus_root / "fer2013" / "fer2013new.csv", named_label_text(shifted))
    with pytest.raises(DatasetError, match=r"line 3: row 1 .* named fer0000002.png.*missing"):
        datamodule(ferplus_root)
    with pytest.raises(DatasetError, match=r"fer2013new.csv, line 3: row 1"):
        summarize(ferplus_root / "fer2013" / "fer2013new.csv", io.StringIO())
    with pytest.raises(DatasetError, match=r"fer2013new.csv, line 3: row 1"):
        summarize(ferplus_root / "fer2013", io.StringIO())


def test_a_repeated_row_and_a_stray_name_are_refused(tmp_path):
    rows = rows_with_names()
    repeated = [*rows[:3], (rows[3][0], 2, rows[3][2]), *rows[4:]]  # row 3 repeats row 2's name
    path = write(tmp_path / "new.csv", named_label_text(repeated))
    with pytest.raises(DatasetError, match=r"lines 4 and 5: both name fer0000002.png, a row rep"):
        read_votes(path)
    stray = [*rows[:3], (rows[3][0], 50, rows[3][2]), *rows[4:]]  # no row 50 anywhere
    path = write(tmp_path / "new.csv", named_label_text(stray))
    with pytest.raises(DatasetError, match=r"line 5: row 3 is named fer0000050.png, out of"):
        read_votes(path)
    path = write(tmp_path / "new.csv", label_text().replace("fer0000004.png", "img4.png"))
    with pytest.raises(DatasetError, match=r"line 6: Image name 'img4.png' is not fer<7 digits>"):
        read_votes(path)


def test_names_that_fall_behind_and_rows_naming_another_rows_image_are_kept(ferplus_root, caplog):
    # As in Microsoft's file: a non-face row that takes no number (the names fall one behind
    # the rows from there on), and a row naming an image that has its own row further down.
    rows = rows_with_names()
    behind = [*rows[:5], rows[5], *[(u, i - 1, v) for u, i, v in rows[6:]]]
    behind[3] = (behind[3][0], 9, behind[3][2])  # row 3 names fer0000009.png, row 10's image
    assert behind[10][1] == 9
    write(ferplus_root / "fer2013" / "fer2013new.csv", named_label_text(behind))
    votes = read_votes(ferplus_root / "fer2013" / "fer2013new.csv")
    assert votes.repeated == [(3, 10)]
    with caplog.at_level(logging.INFO, logger="fer_lightning.data.ferplus"):
        dm = datamodule(ferplus_root)
    assert "Training row 3 (line 5) names fer0000009.png like row 10" in caplog.text
    assert all_items(dm.train_set)[1].tolist() == [0, 1, 3]  # kept by position, as before
    out = io.StringIO()
    summarize(ferplus_root / "fer2013", out)
    text = out.getvalue()
    assert "1 rows name an image that another row names in its own place" in text
    assert "Kept, each with its own votes" in text
    assert "of these rows, 0 hold the same image as the row they name" in text


def test_a_sparse_label_file_is_refused_at_once_with_little_memory(ferplus_root):
    """``truncate -s 1G fer2013new.csv``: refused before it is read (it used to be read,
    decoded and split: 3.6 GB and 13 s)."""
    label_file = ferplus_root / "fer2013" / "fer2013new.csv"
    with label_file.open("r+b") as handle:
        handle.truncate(1 << 30)
    sparse_faces = ferplus_root / "sparse" / "fer2013.csv"
    sparse_faces.parent.mkdir()
    with sparse_faces.open("wb") as handle:
        handle.truncate(1 << 30)
    script = (
        "import io, resource, sys, time\n"
        "from pathlib import Path\n"
        "from fer_lightning.data.check import summarize\n"
        "from fer_lightning.data.errors import DatasetError\n"
        "from fer_lightning.data.ferplus import read_votes\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "start = time.perf_counter()\n"
        "for call, arg in ((read_votes, sys.argv[1]), (summarize, sys.argv[2]),\n"
        "                  (summarize, sys.argv[3])):\n"
        "    try:\n"
        "        call(Path(arg)) if call is read_votes else call(Path(arg), io.StringIO())\n"
        "    except DatasetError as error:\n"
        "        print(error)\n"
        "print(time.perf_counter() - start)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(label_file), str(label_file.parent), str(sparse_faces)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    votes_error, folder_error, faces_error, seconds, growth_mb = result.stdout.splitlines()
    assert "fer2013new.csv: is more than 67 MB of text; a FER+ label file is far" in votes_error
    assert folder_error == votes_error
    assert "sparse/fer2013.csv: not a text file (binary data at byte 0" in faces_error
    assert float(seconds) < 5, seconds
    assert int(growth_mb) < 100, growth_mb
