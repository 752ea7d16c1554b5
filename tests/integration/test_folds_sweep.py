"""A cross-validation sweep over subject-disjoint folds runs every fold and summarises them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.hydra import FAST, run_cli
from tests.unit.test_folds import SUBJECTS, read_rows, subject_csv


@pytest.mark.slow
def test_cross_validation_sweep_runs_every_fold_and_summarises_them(tmp_path):
    data = tmp_path / "data"
    subject_csv(data / "jaffe" / "jaffe.csv", SUBJECTS)
    result = run_cli(
        "fer_lightning.train",
        [
            "-m",
            "experiment=jaffe_cv",
            "data.fold=range(3)",
            "data.folds=3",
            *[arg for arg in FAST if not arg.startswith(("data=", "data.synthetic"))],
            "model=resnet18",
            "model.pretrained_backbone=null",
            "trainer.max_epochs=1",
            "tta=false",
            f"paths.log_dir={tmp_path / 'outputs'}",
            f"paths.data_dir={data}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = (tmp_path / "outputs").glob("train/jaffe_cv/multirun_*/summary.csv")
    rows = read_rows(summary)
    assert [row["status"] for row in rows[:3]] == ["completed"] * 3
    assert [row["job"] for row in rows[3:]] == ["mean", "std"]
    assert "experiment=jaffe_cv" in rows[3]["overrides"]
    assert "data.fold=" not in rows[3]["overrides"]
    accs = [float(row["test/acc"]) for row in rows[:3]]
    assert float(rows[3]["test/acc"]) == pytest.approx(np.mean(accs))
    assert float(rows[4]["test/acc"]) == pytest.approx(np.std(accs, ddof=1))
