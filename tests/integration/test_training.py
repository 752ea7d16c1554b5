"""The main job: Hydra configs, the LightningModule, training, resume, sweeps, evaluation.

Everything runs on the embedded synthetic data at 64x64 on the CPU. The subprocess tests run
the real command lines a user types.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from fer_lightning.checkpoints import load_model
from fer_lightning.cli.train import train
from fer_lightning.models import list_models
from fer_lightning.runtime import lightning_precision
from fer_lightning.training.module import FERClassifier, NonFiniteLossError
from tests.helpers.hydra import FAST, SMALL_DATA, TRAINED_RUN_DATA, compose_train, run_cli

pytestmark = pytest.mark.slow


# -- training in process -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", [a for a in list_models() if a != "resmasking50_dropout1"])
def test_each_model_config_trains_a_few_steps(tmp_path, arch):
    cfg = compose_train(
        tmp_path,
        [
            *FAST,
            f"model={arch}",
            "data.batch_size=4",
            "trainer.fast_dev_run=2",
            "test=false",
            "logger=none",
        ],
    )
    results = train(cfg)
    assert results["model"] == arch


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A short real run of resnet18 on the synthetic data (shared by several tests)."""
    tmp_path = tmp_path_factory.mktemp("run")
    cfg = compose_train(
        tmp_path,
        [
            *FAST,
            "model=resnet18",
            "optimizer=adamw",
            "optimizer.lr=1e-3",
            "trainer.max_epochs=4",
            "scheduler=cosine",
            *TRAINED_RUN_DATA,
        ],
    )
    results = train(cfg)
    return cfg, results, tmp_path


def test_short_run_learns_and_writes_its_report(trained_run):
    cfg, results, _ = trained_run
    run_dir = Path(cfg.paths.output_dir)
    assert results["val/acc_best"] > 0.5, results["history"]  # chance is 1/7
    assert results["test/acc"] > 0.5
    saved = json.loads((run_dir / "results.json").read_text())
    for key in (
        "test/acc",
        "test/acc_tta",
        "test/f1_macro",
        "test/recall_per_class",
        "test/confusion_matrix",
        "best_checkpoint",
        "model",
        "seed",
        "config",
        "precision",
    ):
        assert key in saved, key
    assert len(saved["test/confusion_matrix"]) == 7
    assert sum(map(sum, saved["test/confusion_matrix"])) == saved["test/samples"]
    assert saved["config"]["model"]["arch"] == "resnet18"
    assert [row["epoch"] for row in saved["history"]] == [0, 1, 2, 3]
    for name in ("confusion_matrix.png", "per_class.png", "reliability.png", "curves.png"):
        assert (run_dir / name).stat().st_size > 5_000, name
    # The tested network alone, in the published format, beside the Lightning checkpoints,
    # with the temperature fitted on the 210 validation faces (tests/integration/
    # test_calibration_run.py checks its numbers).
    published = torch.load(run_dir / "model.pt", weights_only=True)
    calibrated = saved["calibration"]["temperature"] is not None
    assert set(published) == {"net", "arch", "input_size", "label_names", "training_data"} | (
        {"calibration"} if calibrated else set()
    )
    assert published["arch"] == "resnet18" and published["input_size"] == 64
    # Provenance: what the model learned from, in model.pt and results.json, with the caution
    # a model of the synthetic faces needs.
    synthetic = {"dataset": "synthetic", "synthetic": True}
    assert published["training_data"] == synthetic and saved["training_data"] == synthetic
    assert "synthetic demo faces" in saved["warning"] and "model.pt" in saved["warning"]
    assert load_model(run_dir / "model.pt").input_size == 64
    assert saved["model_file"] == str(run_dir / "model.pt")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(
        load_model(run_dir / "model.pt")(x), load_model(saved["best_checkpoint"])(x)
    )
    # trainer.precision=auto: what this CPU runs natively.
    assert saved["precision"] == lightning_precision("auto", torch.device("cpu"))
    # The best checkpoint has a stable name; its epoch is in results.json.
    best = Path(saved["best_checkpoint"])
    assert best == (run_dir / "checkpoints" / "best.ckpt").resolve() and best.is_file()
    assert (best.parent / "last.ckpt").is_file()
    best_acc = max(row["val/acc"] for row in saved["history"])
    assert saved["best_epoch"] == min(
        row["epoch"] for row in saved["history"] if row["val/acc"] == best_acc
    )


def test_checkpoints_load_with_weights_only_and_lightning_defaults(trained_run):
    _cfg, results, _tmp_path = trained_run
    path = results["best_checkpoint"]
    content = torch.load(path, map_location="cpu", weights_only=True)
    assert content["hyper_parameters"]["arch"] == "resnet18"
    training_data = {"dataset": "synthetic", "synthetic": True}
    assert content["hyper_parameters"]["training_data"] == training_data
    module = FERClassifier.load_from_checkpoint(path)
    assert module.hparams.input_size == 64
    assert module.hparams.training_data == training_data
    net = load_model(path)
    assert net.arch == "resnet18" and net.input_size == 64
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(net(x), module.eval()(x))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    class PoisonAtStep(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                with torch.no_grad():
                    pl_module.net.fc.weight.fill_(float("nan"))

    cfg = compose_train(tmp_path, [*FAST, "model=resnet18"])
    import hydra.utils

    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model, _recursive_=False)
    checkpoints = tmp_path / "checkpoints"
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        limit_train_batches=4,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[
            PoisonAtStep(),
            pl.callbacks.ModelCheckpoint(dirpath=checkpoints, save_last=True),
        ],
    )
    with pytest.raises(NonFiniteLossError, match="at global step 5 \\(epoch 1, batch 1\\)"):
        trainer.fit(module, datamodule=datamodule)
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


# -- command lines -----------------------------------------------------------------------------


def test_override_typo_fails_before_any_work(tmp_path):
    result = run_cli(
        "fer_lightning.train", ["model=resmasking_dropout", *FAST], cwd=tmp_path, timeout=120
    )
    assert result.returncode != 0
    assert "resmasking_dropout1" in result.stderr  # Hydra lists the valid options
    assert not (tmp_path / "outputs").exists()


def test_missing_dataset_is_one_clear_message(tmp_path):
    result = run_cli(
        "fer_lightning.train",
        ["data=fer2013", f"paths.data_dir={tmp_path / 'nowhere'}", f"paths.log_dir={tmp_path}"],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "data=synthetic" in result.stderr


def _train_args(tmp_path: Path, *extra: str) -> list[str]:
    """A quick resnet18 run on the synthetic data, writing under ``tmp_path``."""
    return [
        *FAST,
        "model=resnet18",
        "optimizer=adamw",
        "tta=false",
        f"paths.log_dir={tmp_path / 'outputs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        *extra,
    ]


def test_resume_after_kill_9(tmp_path):
    """SIGKILL after epoch 1's checkpoint, then ckpt_path=last finishes the remaining epochs."""
    killer = tmp_path / "killer.py"
    killer.write_text(
        "import os, signal\nimport pytorch_lightning as pl\n"
        "class KillAfterCheckpoint(pl.Callback):\n"
        "    def on_save_checkpoint(self, trainer, pl_module, checkpoint):\n"
        "        if trainer.current_epoch == 1:\n"
        "            self.armed = True\n"
        "    def on_train_epoch_start(self, trainer, pl_module):\n"
        "        if getattr(self, 'armed', False):\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    first = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_lightning.train",
            *_train_args(
                tmp_path,
                "trainer.max_epochs=4",
                "optimizer.lr=1e-3",
                "+callbacks.killer._target_=killer.KillAfterCheckpoint",
            ),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(tmp_path)},
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    (last,) = (tmp_path / "outputs").glob("train/resnet18/*/checkpoints/last.ckpt")
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1
    second = run_cli(
        "fer_lightning.train",
        _train_args(tmp_path, "trainer.max_epochs=4", "optimizer.lr=1e-3", "ckpt_path=last"),
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    (results_path,) = (tmp_path / "outputs").glob("train/resnet18/*/results.json")
    results = json.loads(results_path.read_text())
    # Epochs 0-1 come from the killed run's checkpoint, 2-3 from the resumed run.
    assert [row["epoch"] for row in results["history"]] == [0, 1, 2, 3]
    assert results["epochs_trained"] == 4
    resumed = torch.load(Path(results["best_checkpoint"]).parent / "last.ckpt", weights_only=True)
    early_stopping = next(
        v for k, v in resumed["callbacks"].items() if k.startswith("EarlyStopping")
    )
    assert early_stopping["patience"] == 8
    assert resumed["optimizer_states"][0]["state"]  # optimiser moments came along


def test_multirun_writes_a_summary_and_survives_a_failed_job(tmp_path):
    result = run_cli(
        "fer_lightning.train",
        # A negative learning rate makes the second job fail.
        ["-m", *_train_args(tmp_path, "trainer.max_epochs=1", "optimizer.lr=1e-3,-1.0")],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_csv,) = (tmp_path / "outputs").glob("train/resnet18/multirun_*/summary.csv")
    rows = list(csv.DictReader(summary_csv.open()))
    assert [row["status"] for row in rows] == ["completed", "failed"]
    assert "optimizer.lr=0.001" in rows[0]["overrides"]
    assert float(rows[0]["test/acc"]) > 0
    assert "Invalid learning rate" in rows[1]["error"]
    assert (summary_csv.parent / "summary.md").read_text().count("| completed |") == 1


def test_ddp_sim_trains_on_two_cpu_processes(tmp_path):
    result = run_cli(
        "fer_lightning.train",
        _train_args(
            tmp_path, "optimizer.lr=1e-3", "trainer=ddp_sim", "trainer.max_epochs=1", "logger=none"
        ),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert (
        "All distributed processes registered. Starting with 2 processes"
        in result.stderr + result.stdout
    )
    (results_path,) = (tmp_path / "outputs").glob("train/resnet18/*/results.json")
    results = json.loads(results_path.read_text())
    assert results["test/samples"] > 0 and results["history"]


def test_eval_single_checkpoint_and_ensemble(trained_run, tmp_path):
    _cfg, results, run_root = trained_run
    best = results["best_checkpoint"]
    # A second member in the published RMN format.
    published = tmp_path / "published_resnet18.pt"
    torch.save({"net": load_model(best).state_dict(), "best_val_acc": 0.5}, published)
    common = [
        *SMALL_DATA,
        *TRAINED_RUN_DATA,
        f"paths.data_dir={run_root / 'data'}",
        "input_size=64",
    ]
    single = run_cli(
        "fer_lightning.eval",
        [f"ckpt_path={best}", *common, f"hydra.run.dir={tmp_path / 'single'}"],
        cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    assert "Tip:" not in single.stdout + single.stderr  # Lightning's advert lines are filtered
    ensemble = run_cli(
        "fer_lightning.eval",
        [f"ckpt_path=[{best},{published}]", *common, f"hydra.run.dir={tmp_path / 'ensemble'}"],
        cwd=tmp_path,
    )
    assert ensemble.returncode == 0, ensemble.stderr[-2000:]
    assert "ensemble of 2" in ensemble.stdout
    single_results = json.loads((tmp_path / "single" / "eval_results.json").read_text())
    member = single_results["members"][best]
    assert member["test/acc"] == pytest.approx(results["test/acc"], abs=1e-6)
    both = json.loads((tmp_path / "ensemble" / "eval_results.json").read_text())
    # Two copies of one network: the ensemble is that network.
    assert both["ensemble"]["test/acc"] == pytest.approx(member["test/acc"], abs=1e-6)
    bad = run_cli(
        "fer_lightning.eval",
        [f"ckpt_path={tmp_path / 'missing.ckpt'}", *common, f"hydra.run.dir={tmp_path / 'bad'}"],
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_debug_fast_runs_every_loop_briefly_without_checkpoints(tmp_path):
    cfg = compose_train(tmp_path, [*FAST, "model=resnet18", "debug=fast"])
    results = train(cfg)
    # The test after training honours limit_test_batches: 2 batches of 16 faces.
    assert results["test/samples"] == 32
    assert results["best_checkpoint"] is None
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert results["precision"] == lightning_precision("auto", torch.device("cpu"))
