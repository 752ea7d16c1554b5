"""What a training run leaves for people to read: a run folder named after what it is, a
train.log with every epoch and the summary, the configuration tree, failed runs marked, resumed
runs continued in their own folder, unique folders for runs of the same second, the figures,
and the MLflow and Weights & Biases trackers (local store, offline).

Runs are tiny (a few batches of the synthetic faces at 64x64) to stay short.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import struct
import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from fer_lightning.cli import train as train_cli
from fer_lightning.cli.run_folders import FAILED_MARKER, unique_dir
from fer_lightning.cli.train import train
from fer_lightning.training.console import silence_lightning_tips
from tests.helpers.hydra import FAST, compose_train, run_app, run_cli

# A handful of batches: every loop runs, and a run takes seconds (minutes on a busy machine).
TINY = [
    *FAST,
    "model=resnet18",
    "optimizer=adamw",
    "optimizer.lr=1e-3",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=1",
]
RUN_FOLDER_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(_\d+)?$")


def cli_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"paths.log_dir={tmp_path / 'outputs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        *extra,
    ]


def only_run_folder(tmp_path: Path, group: str) -> Path:
    (run_dir,) = [p for p in (tmp_path / "outputs" / group).iterdir() if p.is_dir()]
    return run_dir


# -- fast: the pieces ------------------------------------------------------------------------


def test_unique_dir_gives_each_caller_its_own_folder(tmp_path):
    base = str(tmp_path / "train" / "demo" / "2026-01-01_10-00-00")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(unique_dir(base))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 8
    names = sorted(Path(r).name for r in results)
    assert names[0] == "2026-01-01_10-00-00"
    assert sorted(names[1:], key=lambda n: int(n.rsplit("_", 1)[1])) == [
        f"2026-01-01_10-00-00_{n}" for n in range(2, 9)
    ]


def test_lightning_promotion_lines_are_silenced(capfd, caplog):
    silence_lightning_tips()
    with caplog.at_level(logging.INFO):
        pl.Trainer(
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    output = "".join(capfd.readouterr()) + caplog.text
    assert "GPU available" in output  # Lightning's other lines still come through
    assert "Tip:" not in output and "litlogger" not in output


def test_figures_say_what_they_show():
    import matplotlib.pyplot as plt

    from fer_lightning.training.reporting import (
        confusion_title,
        curves_figure,
        per_class_figure,
        per_class_title,
    )

    results = {"test/acc": 0.9571, "test/acc_tta": 0.9429, "test/samples": 420}
    results["test/split"] = "synthetic test split"
    title = confusion_title(results)
    assert "synthetic test split" in title and "plain (no TTA)" in title and "95.71%" in title
    assert "95.71% plain, 94.29% with TTA" in per_class_title(results)
    figure = per_class_figure(
        [0.9] * 7, recall_tta=[0.8] * 7, counts=[60] * 7, title=per_class_title(results)
    )
    (ax,) = figure.axes
    assert len(ax.patches) == 14  # plain and TTA side by side
    assert ax.get_xticklabels()[0].get_text() == "angry\n60 faces"
    plt.close(figure)
    # One epoch: single points on an integer axis, the learning rate in its own panel, and the
    # legend outside the panels.
    row = {"epoch": 0.0, "train/loss": 1.3, "val/loss": 1.6, "train/acc": 0.47, "val/acc": 0.42}
    figure = curves_figure([{**row, "lr": 1e-3}])
    lr_ax = figure.axes[2]
    for ax in figure.axes:
        assert list(ax.get_xticks()) == [0] and ax.get_legend() is None
    assert lr_ax.get_title() == "learning rate" and figure.legends
    assert "best validation 0.420 (epoch 0)" in [t.get_text() for t in figure.legends[0].texts]
    plt.close(figure)


# -- slow: real runs ---------------------------------------------------------------------------


@pytest.mark.slow
def test_run_folder_log_tree_and_figures(tmp_path):
    result = run_cli(
        "fer_lightning.train",
        cli_args(tmp_path, "experiment=demo", "data.num_workers=0", "trainer.max_epochs=2"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_folder(tmp_path, "train/demo")
    assert RUN_FOLDER_NAME.match(run_dir.name), run_dir.name
    console = result.stdout + result.stderr
    assert "Tip:" not in console and "litlogger" not in console and "litmodels" not in console
    # The configuration: printed as a tree at the start and kept in the run folder.
    tree = (run_dir / "config_tree.txt").read_text()
    assert tree.startswith(f"config ({run_dir})")
    assert "├── model\n│   _target_: fer_lightning.training.module.FERClassifier" in tree
    assert "│   arch: resnet18" in tree and tree in result.stdout
    # train.log: the key choices, one line per epoch, the test and the summary.
    log = (run_dir / "train.log").read_text()
    assert "Config groups:" in log and "experiment=demo" in log and "model=resnet18" in log
    for epoch in (0, 1):
        (line,) = [ln for ln in log.splitlines() if f"epoch {epoch} ({epoch + 1}/2):" in ln]
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
            assert f" {key} " in line, line
    assert "Testing " in log and "synthetic test split" in log and "Test done in" in log
    summary = log[log.index("Summary") :]
    for text in ("test accuracy", "10-view TTA", "best checkpoint", "results.json"):
        assert text in summary
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["test/split"] == "synthetic test split"
    assert len(results["test/recall_per_class_tta"]) == 7
    assert [row["epoch"] for row in results["history"]] == [0, 1]
    for name in ("confusion_matrix.png", "per_class.png", "curves.png"):
        assert (run_dir / name).stat().st_size > 10_000, name
    assert not (run_dir / FAILED_MARKER).exists()


@pytest.mark.slow
def test_failed_runs_are_marked(tmp_path):
    # An error from deep inside a run that has started (a negative learning rate: PyTorch's
    # traceback) marks the run's own folder. (A command refused before it starts writes
    # nothing: tests/integration/test_train_command.py.)
    crashed = run_cli(
        "fer_lightning.train",
        cli_args(tmp_path, "optimizer.lr=-1.0", "paths.log_dir=" + str(tmp_path / "second")),
        cwd=tmp_path,
    )
    assert crashed.returncode == 1
    (run_dir,) = (tmp_path / "second" / "train" / "resnet18").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "Invalid learning rate" in results["error"]
    marker = (run_dir / FAILED_MARKER).read_text()
    assert marker.startswith("status: failed\nerror: ") and "Traceback" in marker
    assert "Run failed:" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_resume_continues_the_run_folder_with_the_best_checkpoint_of_the_whole_run(tmp_path):
    first = run_cli(
        "fer_lightning.train", cli_args(tmp_path, "trainer.max_epochs=1", "tta=false"), cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run_folder(tmp_path, "train/resnet18")
    second = run_cli(
        "fer_lightning.train",
        cli_args(tmp_path, "trainer.max_epochs=3", "tta=false", "ckpt_path=last"),
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert only_run_folder(tmp_path, "train/resnet18") == run_dir  # no second folder
    results = json.loads((run_dir / "results.json").read_text())
    history = results["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    best_acc = max(row["val/acc"] for row in history)
    best_epoch = min(row["epoch"] for row in history if row["val/acc"] == best_acc)
    best = Path(results["best_checkpoint"])
    assert best == (run_dir / "checkpoints" / "best.ckpt").resolve()
    # The best of the whole run, tracked across the resume: its epoch is the best one's.
    assert results["best_epoch"] == best_epoch
    assert torch.load(best, weights_only=True)["epoch"] == best_epoch
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    log = (run_dir / "train.log").read_text()
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'} (the newest last.ckpt" in log
    for epoch, of in ((0, 1), (1, 3), (2, 3)):
        assert f"epoch {epoch} ({epoch + 1}/{of}):" in log  # the first part's lines stay


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import hydra.core.utils

    class FrozenClock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(hydra.core.utils, "datetime", FrozenClock)
    args = cli_args(tmp_path, "train=false", "test=false", "logger=none")
    assert run_app(train_cli.main, args) == 0
    assert run_app(train_cli.main, [*args, "seed=7"]) == 0
    folders = sorted((tmp_path / "outputs" / "train" / "resnet18").iterdir())
    assert [f.name for f in folders] == ["2026-01-02_03-04-05", "2026-01-02_03-04-05_2"]
    seeds = [json.loads((f / "results.json").read_text())["seed"] for f in folders]
    assert seeds == [42, 7]  # neither run wrote into the other's folder
    for folder in folders:
        assert (folder / ".hydra" / "config.yaml").is_file() and (folder / "train.log").is_file()


# -- trackers ----------------------------------------------------------------------------------


def read_wandb_history(run_file: Path) -> dict[str, list[float]]:
    """Metric name -> logged values, from an offline W&B run file (LevelDB-style log records of
    protobuf ``Record`` messages; wandb has no Python reader for them)."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos = run_file.read_bytes(), 32768, 7  # 7: the file's W&B header
    history: dict[str, list[float]] = {}
    chunks: list[bytes] = []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        chunks.append(raw[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if pos > len(raw):  # a record still being written: read again later
            break
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    history.setdefault(key, []).append(json.loads(item.value_json))
    return history


@pytest.mark.slow
def test_mlflow_records_metrics_in_a_local_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cfg = compose_train(tmp_path, [*TINY, "logger=mlflow", "trainer.max_epochs=2", "tta=false"])
    results = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "train/resnet18"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.value for m in history] == pytest.approx([r["val/acc"] for r in results["history"]])
    assert run.data.metrics["test/acc"] == pytest.approx(results["test/acc"])
    assert run.data.params["config/model/arch"] == "resnet18"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "curves.png", "confusion_matrix.png"} <= artifacts
    assert Path(experiment.artifact_location.removeprefix("file://")).is_relative_to(run_dir)
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_wandb_runs_offline_into_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(tmp_path, [*TINY, "logger=wandb", "trainer.max_epochs=2", "tta=false"])
    results = train(cfg)
    wandb.finish()
    run_dir = Path(cfg.paths.output_dir)
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb's service process writes the file: on a loaded machine its last records can land
    # after wandb.finish() returns (seen once in CI: no test/acc yet).
    deadline = time.monotonic() + 60
    while not {"val/acc", "test/acc"} <= set(history := read_wandb_history(run_file)):
        assert time.monotonic() < deadline, sorted(history)
        time.sleep(1)
    assert history["val/acc"] == pytest.approx([r["val/acc"] for r in results["history"]])
    assert history["test/acc"] == pytest.approx([results["test/acc"]])
