"""fer-train as a command: which run folder a run gets, and what a refused command leaves (nothing).

A command refused before training starts (a checkpoint that cannot resume this run, a missing
dataset, a tracker that is not installed) prints one line, exits 2 and writes nothing: no run
folder, no FAILED marker, and never a change to another run's files. No test here trains.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from lightning_utilities.core.imports import RequirementCache

from fer_lightning.cli import train as train_cli
from fer_lightning.cli.run_folders import discard_run_folder_if_refused, run_dir, unique_dir
from fer_lightning.labels import EMOTIONS, FERPLUS_EMOTIONS
from fer_lightning.training.evaluate import evaluate_network
from tests.helpers.hydra import FAST, compose_train, run_app

# A tiny resnet18 command on the synthetic faces; never gets to train in these tests.
TINY = [*FAST, "model=resnet18", "optimizer=adamw", "tta=false", "trainer.max_epochs=1"]


def paths(tmp_path: Path) -> list[str]:
    return [f"paths.log_dir={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}"]


def finished_run(
    folder: Path,
    num_classes: int = 8,
    label_names: tuple[str, ...] = tuple(FERPLUS_EMOTIONS),
    dataset: str = "ferplus",
    input_size: int = 64,
) -> Path:
    """A completed run's folder with a Lightning-format last.ckpt; returns the checkpoint."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("model:\n  arch: resnet18\n")
    (folder / ".hydra" / "overrides.yaml").write_text("- experiment=ferplus\n")
    (folder / "results.json").write_text('{"status": "completed"}\n')
    (folder / "config_tree.txt").write_text("config\n")
    (folder / "train.log").write_text("epoch 0 (1/1): val/acc 0.5\n")
    (folder / "checkpoints").mkdir()
    checkpoint = folder / "checkpoints" / "last.ckpt"
    hyper = {
        "arch": "resnet18",
        "num_classes": num_classes,
        "label_names": list(label_names),
        "input_size": input_size,
        "training_data": {"dataset": dataset, "synthetic": dataset == "synthetic"},
    }
    torch.save(
        {"state_dict": {"net.fc.bias": torch.zeros(num_classes)}, "hyper_parameters": hyper},
        checkpoint,
    )
    return checkpoint


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: content hash and modification time."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def folders_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


# -- resuming ----------------------------------------------------------------------------------


def test_ckpt_path_last_takes_only_the_same_experiments_checkpoint(tmp_path, capsys):
    other = tmp_path / "outputs" / "train" / "ferplus" / "2026-01-01_10-00-00"
    finished_run(other)
    before, folders = fingerprint(tmp_path / "outputs"), folders_under(tmp_path / "outputs")
    status = run_app(train_cli.main, [*TINY, "run_name=demo", "ckpt_path=last", *paths(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2, error
    assert "no checkpoints/last.ckpt of this experiment (train/demo)" in error
    assert fingerprint(tmp_path / "outputs") == before  # the other run is untouched
    assert folders_under(tmp_path / "outputs") == folders  # and no folder was left behind


def test_a_checkpoint_that_cannot_resume_is_refused_naming_both_sides(tmp_path, capsys):
    other = tmp_path / "outputs" / "train" / "ferplus" / "2026-01-01_10-00-00"
    checkpoint = finished_run(other)
    before, folders = fingerprint(tmp_path / "outputs"), folders_under(tmp_path / "outputs")
    status = run_app(train_cli.main, [*TINY, f"ckpt_path={checkpoint}", *paths(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2, error
    (line,) = [ln for ln in error.splitlines() if ln.startswith("error:")]
    assert "num_classes 8 (this run: 7)" in line
    assert "label_names neutral,happiness" in line and "(this run: angry,disgust" in line
    assert "dataset ferplus (this run: synthetic)" in line and "data=ferplus" in line
    assert "model=" not in line  # the architecture is the same: no remedy for it
    assert fingerprint(tmp_path / "outputs") == before
    assert folders_under(tmp_path / "outputs") == folders


def test_a_refused_resume_leaves_the_run_it_would_continue_as_it_was(tmp_path, capsys):
    # The checkpoint fits the command (so the run continues its folder), but the dataset is
    # missing: Hydra has already written .hydra/ and train.log there; both are restored.
    run = tmp_path / "outputs" / "train" / "resnet18" / "2026-01-01_10-00-00"
    checkpoint = finished_run(run, 7, tuple(EMOTIONS), "fer2013")
    before = fingerprint(run)
    args = [
        "data=fer2013",
        "model=resnet18",
        "data.input_size=64",
        "trainer=cpu",
        "logger=csv",
        f"ckpt_path={checkpoint}",
        f"paths.log_dir={tmp_path / 'outputs'}",
        f"paths.data_dir={tmp_path / 'nowhere'}",
    ]
    status = run_app(train_cli.main, args)
    assert status == 2, capsys.readouterr().err
    after = fingerprint(run)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert folders_under(tmp_path / "outputs" / "train") == folders_under(
        tmp_path / "outputs" / "train"
    )
    assert [p.name for p in run.parent.iterdir()] == [run.name]


def test_resumed_runs_continue_the_folder_of_a_checkpoint_that_fits(tmp_path):
    experiment = tmp_path / "outputs" / "train" / "resnet18"
    run = experiment / "2026-01-01_10-00-00 it's"
    checkpoint = finished_run(run, 7, tuple(EMOTIONS), "synthetic")
    fits = {
        "arch": "resnet18",
        "num_classes": 7,
        "label_names": list(EMOTIONS),
        "input_size": 64,
        "dataset": "synthetic",
    }
    new = str(experiment / "2026-01-02_10-00-00")
    assert run_dir(new, {**fits, "ckpt_path": "last"}) == str(run)
    assert run_dir(new, {**fits, "ckpt_path": str(checkpoint)}) == str(run)
    # Another size, another dataset, no checkpoint, one outside a run folder: a new folder.
    outside = tmp_path / "published.ckpt"
    outside.write_bytes(checkpoint.read_bytes())
    for resume in (
        {**fits, "ckpt_path": "last", "input_size": 96},
        {**fits, "ckpt_path": "last", "dataset": "fer2013"},
        {**fits, "ckpt_path": None},
        {**fits, "ckpt_path": str(outside)},
    ):
        folder = run_dir(new, resume)
        assert folder != str(run) and Path(folder).is_dir()
        assert discard_run_folder_if_refused(folder)
        assert not Path(folder).exists()


def test_discarding_removes_only_what_this_run_created(tmp_path):
    created = unique_dir(str(tmp_path / "outputs" / "eval" / "2026-01-01_10-00-00"))
    assert discard_run_folder_if_refused(created)
    assert not (tmp_path / "outputs").exists()  # the parents it made for the run went too
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert not discard_run_folder_if_refused(mine)  # not picked by this process: left alone
    assert (mine / "notes.txt").read_text() == "keep"


# -- refused before training -------------------------------------------------------------------


def test_a_missing_dataset_writes_nothing(tmp_path, capsys):
    args = [
        "data=fer2013",
        "model=resnet18",
        "trainer=cpu",
        "logger=csv",
        f"paths.log_dir={tmp_path / 'outputs'}",
        f"paths.data_dir={tmp_path / 'nowhere'}",
    ]
    status = run_app(train_cli.main, args)
    error = capsys.readouterr().err
    assert status == 2 and "Traceback" not in error
    assert "experiment=demo" in error or "data=synthetic" in error
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("logger", "module", "flag"),
    [("mlflow", "mlflow", "_MLFLOW_AVAILABLE"), ("wandb", "wandb", "_WANDB_AVAILABLE")],
)
def test_a_tracker_that_is_not_installed_names_the_projects_extra(
    tmp_path, capsys, monkeypatch, logger, module, flag
):
    # What Lightning sees where the package is not installed.
    monkeypatch.setattr(
        f"pytorch_lightning.loggers.{module}.{flag}", RequirementCache("fer-no-such-package")
    )
    status = run_app(train_cli.main, [*TINY, f"logger={logger}", *paths(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2, error
    (line,) = error.strip().splitlines()
    assert f'pip install -e ".[{logger}]"' in line and "pip install -U" not in line
    assert not (tmp_path / "outputs").exists()


# -- presets and helpers -----------------------------------------------------------------------


def test_debug_overfit_tests_briefly_without_tta(tmp_path):
    cfg = compose_train(tmp_path, ["debug=overfit"])
    assert cfg.tta is False and cfg.model.tta is False
    assert 0 < cfg.trainer.limit_test_batches <= 5


def test_evaluate_network_leaves_the_callers_datamodule_as_it_was(tmp_path):
    import hydra.utils

    cfg = compose_train(tmp_path, [*TINY])
    datamodule = hydra.utils.instantiate(cfg.data)
    net = hydra.utils.instantiate(cfg.model, _recursive_=False).net
    predictions = evaluate_network(
        net,
        datamodule,
        input_size=32,
        tta=False,
        accelerator="cpu",
        limit_test_batches=1,
        progress=False,
    )
    assert datamodule.input_size == 64
    assert len(predictions.labels) == 16
