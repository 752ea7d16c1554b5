"""Subject-disjoint folds of JAFFE and FACES, FER2013's untouched validation and test when they
are mixed in, and the sweep summary's mean and standard deviation over folds."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from fer_lightning.data import DatasetError, FERDataModule
from fer_lightning.data.cache import load_table
from fer_lightning.data.csv_writer import write_face_csv
from fer_lightning.data.folds import assign_folds, fold_rows, read_subjects
from fer_lightning.training.sweep import write_summary
from tests.helpers.data import csv_text, random_faces, write
from tests.helpers.hydra import compose_train

# 12 people with 1..5 images each: unequal, as real posed sets are after conversion failures.
SUBJECTS = [f"S{i}" for i in range(12) for _ in range(1 + i % 5)]


def subject_csv(path: Path, subjects: list[str]) -> Path:
    """A CSV as `prepare` writes it; each face's first pixel is its subject's index."""
    names = sorted(set(subjects), key=lambda s: int(s[1:]))
    faces, _ = random_faces(len(subjects))
    faces[:, 0, 0] = [names.index(s) for s in subjects]
    labels = np.arange(len(subjects)) % 7
    return write_face_csv(
        path, faces, labels, extra={"subject": subjects, "crop": ["center"] * len(subjects)}
    )


def test_folds_never_share_a_subject_and_test_every_subject_once():
    folds = 4
    tested: list[str] = []
    for fold in range(folds):
        rows = fold_rows(SUBJECTS, folds, fold)
        people = {split: {SUBJECTS[i] for i in r} for split, r in rows.items()}
        assert not people["train"] & people["val"]
        assert not people["train"] & people["test"]
        assert not people["val"] & people["test"]
        assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(len(SUBJECTS)))
        # Validation is the next fold's test set.
        assert (
            rows["val"].tolist() == fold_rows(SUBJECTS, folds, (fold + 1) % folds)["test"].tolist()
        )
        tested += sorted(people["test"])
    assert sorted(tested) == sorted(set(SUBJECTS))  # each person is a test subject exactly once
    sizes = [fold_rows(SUBJECTS, folds, k)["test"].size for k in range(folds)]
    assert max(sizes) - min(sizes) <= 5  # balanced by images, within one subject's count


def test_assignment_is_deterministic_and_leave_one_subject_out_at_full_folds():
    shuffled = list(np.random.default_rng(0).permutation(SUBJECTS))
    assert assign_folds(shuffled, 4) == assign_folds(SUBJECTS, 4)
    fold_of = assign_folds(SUBJECTS, 12)
    assert sorted(fold_of.values()) == list(range(12))  # one person per fold


def test_fold_counts_outside_the_data_are_refused():
    with pytest.raises(ValueError, match=r"only 12 subjects: use data\.folds from 3 to 12"):
        assign_folds(SUBJECTS, 13)
    with pytest.raises(ValueError, match=r"data\.folds=2: .* at least 3"):
        assign_folds(SUBJECTS, 2)


@pytest.mark.parametrize("people", [1, 2, 3, 4, 5])
def test_the_advice_for_too_many_folds_is_a_setting_that_works(people):
    """The advice and the rule agree: what the message suggests is accepted, and with fewer
    people than the minimum of 3 folds no fold count is suggested at all."""
    subjects = [f"P{i}" for i in range(people) for _ in range(2)]
    with pytest.raises(ValueError) as err:
        assign_folds(subjects, people + 1)
    message = str(err.value)
    suggested = re.search(r"use data\.folds from (\d+) to (\d+)", message)
    if people < 3:
        assert suggested is None and "at most" not in message
        assert f"only {people} subject" in message and "at least 3 people" in message
        for folds in range(1, people + 1):  # nothing a user could try is accepted either
            with pytest.raises(ValueError):
                assign_folds(subjects, folds)
    else:
        low, high = int(suggested.group(1)), int(suggested.group(2))
        assert (low, high) == (3, people)
        for folds in (low, high):
            rows = fold_rows(subjects, folds, 0)
            assert all(r.size for r in rows.values())
    with pytest.raises(ValueError, match=r"data\.fold=10 is outside 0\.\.9"):
        FERDataModule("jaffe", root="unused", fold=10, folds=10)


def test_jaffe_datamodule_folds_split_the_faces_by_person(tmp_path):
    subject_csv(tmp_path / "jaffe" / "jaffe.csv", SUBJECTS)
    names = sorted(set(SUBJECTS), key=lambda s: int(s[1:]))
    tested = []
    for fold in range(12):  # leave-one-subject-out
        dm = FERDataModule(
            "jaffe",
            root=str(tmp_path),
            fold=fold,
            folds=12,
            num_workers=0,
            augment={},
            input_size=64,
        )
        dm.setup("fit")
        people = dm.source.fold_subjects
        assert len(people["test"]) == 1 and len(people["val"]) == 1
        assert not set(people["train"]) & (set(people["test"]) | set(people["val"]))
        for split in ("train", "val", "test"):
            dataset = getattr(dm, f"{split}_set")
            faces, _ = dataset.__getitems__(list(range(len(dataset))))
            shown = {names[int(v)] for v in faces[:, 0, 0].tolist()}
            assert shown == set(people[split])  # the faces are those of the split's people
        tested += people["test"]
    assert sorted(tested) == sorted(names)


def test_faces_dataset_and_configs(tmp_path):
    subject_csv(tmp_path / "faces" / "faces.csv", SUBJECTS)
    dm = FERDataModule("faces", root=str(tmp_path), fold=2, folds=3, num_workers=0, augment={})
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == len(SUBJECTS)
    cfg = compose_train(tmp_path, ["experiment=jaffe_cv"])
    assert (cfg.data.dataset, cfg.data.folds, cfg.data.fold) == ("jaffe", 10, 0)
    assert cfg.model.num_classes == 7 and cfg.run_name == "jaffe_cv"
    cfg = compose_train(tmp_path, ["experiment=faces_cv", "data.fold=4"])
    assert (cfg.data.dataset, cfg.data.folds, cfg.data.fold) == ("faces", 10, 4)


def test_a_file_without_subjects_is_refused(tmp_path):
    write(tmp_path / "jaffe" / "jaffe.csv", csv_text(*random_faces(6), None, ("emotion", "pixels")))
    dm = FERDataModule("jaffe", root=str(tmp_path), folds=3, num_workers=0)
    with pytest.raises(DatasetError) as err:
        dm.setup("fit")
    assert "jaffe.csv: no 'subject' column" in str(err.value)
    assert "prepare jaffe" in str(err.value)


def test_subjects_stay_in_step_with_blank_lines_and_skipped_rows(tmp_path):
    path = subject_csv(tmp_path / "jaffe.csv", SUBJECTS)
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(" ", " x", 1)  # a bad pixel: skipped with on_bad_row=skip
    lines.insert(6, "")  # a blank line
    path.write_text("\n".join(lines) + "\n")
    table = load_table(path, None, on_bad_row="skip")
    assert len(table) == len(SUBJECTS) - 1
    subjects = read_subjects(path, table)
    names = sorted(set(SUBJECTS), key=lambda s: int(s[1:]))
    assert [names.index(s) for s in subjects] == table.faces[:, 0, 0].tolist()
    lines[8] = lines[8].rsplit(",", 2)[0] + ",,center"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"jaffe.csv, line 9: empty subject"):
        read_subjects(path, load_table(path, None, on_bad_row="skip"))


def test_faces_and_jaffe_in_training_leave_fer2013_validation_and_test_alone(tmp_path):
    faces, labels = random_faces(12)
    usage = ["Training"] * 6 + ["PublicTest"] * 3 + ["PrivateTest"] * 3
    write(tmp_path / "fer2013" / "fer2013.csv", csv_text(faces, labels, usage))
    subject_csv(tmp_path / "faces" / "faces.csv", SUBJECTS[:5])
    subject_csv(tmp_path / "jaffe" / "jaffe.csv", SUBJECTS[:7])
    sets = {}
    for dataset in ("fer2013", "fer2013_faces_jaffe"):
        dm = FERDataModule(dataset, root=str(tmp_path), num_workers=0, augment={})
        dm.setup("fit")
        sets[dataset] = dm
    alone, mixed = sets["fer2013"], sets["fer2013_faces_jaffe"]
    assert len(mixed.train_set) == len(alone.train_set) + 12
    for split in ("val_set", "test_set"):
        a, m = getattr(alone, split), getattr(mixed, split)
        assert len(a) == len(m) == 3
        for x, y in zip(a.__getitems__([0, 1, 2]), m.__getitems__([0, 1, 2]), strict=True):
            assert np.array_equal(x.numpy(), y.numpy())


# ---------------------------------------------------------------------------- sweep summary


def fake_job(sweep: Path, number: int, overrides: list[str], results: dict | None) -> None:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def completed(acc: float, tta: float, val: float) -> dict:
    return {"status": "completed", "test/acc": acc, "test/acc_tta": tta, "val/acc_best": val}


def test_summary_adds_mean_and_standard_deviation_over_folds(tmp_path):
    accs = [0.5, 0.7, 0.9]
    for fold, acc in enumerate(accs):
        fake_job(
            tmp_path,
            fold,
            ["experiment=jaffe_cv", f"data.fold={fold}"],
            completed(acc, acc + 0.05, 0.6),
        )
    fake_job(tmp_path, 3, ["experiment=jaffe_cv", "data.fold=3"], {"status": "failed"})
    csv_path, md_path = write_summary(tmp_path)
    rows = read_rows(csv_path)
    assert [row["job"] for row in rows] == ["0", "1", "2", "3", "mean", "std"]
    mean, std = rows[4], rows[5]
    assert float(mean["test/acc"]) == pytest.approx(0.7)
    assert float(std["test/acc"]) == pytest.approx(0.2)  # sample standard deviation (ddof 1)
    assert float(mean["test/acc_tta"]) == pytest.approx(0.75)
    assert float(std["val/acc_best"]) == pytest.approx(0.0)
    assert mean["overrides"] == "experiment=jaffe_cv"
    assert mean["status"] == "mean of 3 jobs (1 failed, left out)"
    text = md_path.read_text()
    assert "| experiment=jaffe_cv | 3 jobs (1 failed, left out) | 0.6000 ± 0.0000 |" in text
    assert "0.7000 ± 0.2000" in text


def test_summary_groups_jobs_that_differ_in_more_than_fold_or_seed(tmp_path):
    values = {("a", 1): 0.1, ("a", 2): 0.3, ("b", 1): 0.6, ("b", 2): 0.8}
    for number, ((model, seed), acc) in enumerate(values.items()):
        fake_job(tmp_path, number, [f"model={model}", f"seed={seed}"], completed(acc, acc, acc))
    fake_job(tmp_path, 4, ["model=c", "seed=1"], completed(0.5, 0.5, 0.5))  # alone: no rows
    rows = read_rows(write_summary(tmp_path)[0])
    stats = {(row["job"], row["overrides"]): float(row["test/acc"]) for row in rows[5:]}
    assert stats == pytest.approx(
        {
            ("mean", "model=a"): 0.2,
            ("std", "model=a"): math.sqrt(0.02),
            ("mean", "model=b"): 0.7,
            ("std", "model=b"): math.sqrt(0.02),
        }
    )
