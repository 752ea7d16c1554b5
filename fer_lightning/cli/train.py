"""``fer-train [overrides]`` (``python -m fer_lightning.train``): train, test, report.

Hydra composes ``conf/train.yaml``; this file only instantiates what the config names and runs
it. After training, the best checkpoint (by validation accuracy) is evaluated on the test split
(FER2013: PrivateTest) on one process, plain and with 10-view test-time augmentation, and the
run folder receives results.json, confusion_matrix.png, per_class.png and curves.png.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fer_lightning.cli.config import hydra_entry
from fer_lightning.cli.errors import USER_ERRORS, UserError
from fer_lightning.models.checkpoints import load_model, read_checkpoint
from fer_lightning.runtime import lightning_precision, resolve_device
from fer_lightning.training.callbacks import EpochHistory
from fer_lightning.training.evaluate import evaluate_network
from fer_lightning.training.module import FERClassifier
from fer_lightning.training.reporting import (
    confusion_matrix_figure,
    format_summary,
    write_json,
    write_run_report,
)
from fer_lightning.training.scoring import metrics

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig, with_logger: bool) -> list[pl.Callback]:
    callbacks = []
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        if not isinstance(callback_cfg, DictConfig) or "_target_" not in callback_cfg:
            continue
        if name == "lr_monitor" and not with_logger:
            continue  # Lightning refuses a LearningRateMonitor without a logger.
        callbacks.append(hydra.utils.instantiate(callback_cfg))
    return callbacks


def instantiate_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    return [
        hydra.utils.instantiate(logger_cfg)
        for logger_cfg in (cfg.get("logger") or {}).values()
        if isinstance(logger_cfg, DictConfig) and "_target_" in logger_cfg
    ]


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str) -> str | None:
    """``last`` -> the newest ``last.ckpt`` under ``log_dir``; a path must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        candidates = sorted(Path(log_dir).glob("**/checkpoints/last*.ckpt"), key=_mtime)
        if not candidates:
            raise UserError(
                f"ckpt_path=last: no checkpoints/last.ckpt under {log_dir}. Pass the path of the "
                "checkpoint to resume from: ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt"
            )
        log.info("Resuming from %s", candidates[-1])
        return str(candidates[-1])
    if not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file.")
    return ckpt_path


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def epoch_history(trainer: pl.Trainer) -> list[dict[str, float]]:
    """Per-epoch metrics: from the callback, or (after ``ddp_spawn``) from the last checkpoint."""
    for callback in trainer.callbacks:
        if isinstance(callback, EpochHistory) and callback.rows:
            return callback.rows
    checkpoint_cb = trainer.checkpoint_callback
    if checkpoint_cb is None or not checkpoint_cb.dirpath:
        return []
    # ddp_spawn hands the best path, not the callback states, back to the main process.
    last = Path(checkpoint_cb.last_model_path or Path(checkpoint_cb.dirpath) / "last.ckpt")
    if not last.is_file():
        return []
    state = read_checkpoint(last).get("callbacks", {})
    return state.get(EpochHistory.__qualname__, {}).get("rows", [])


def evaluate_best(
    cfg: DictConfig, trainer: pl.Trainer, datamodule: pl.LightningDataModule, model: FERClassifier
) -> dict[str, Any]:
    """Test the best checkpoint (or the final weights without one) on one process."""
    checkpoint_cb = trainer.checkpoint_callback
    best = checkpoint_cb.best_model_path if checkpoint_cb else ""
    net = load_model(best) if best else model.net
    if not best:
        log.warning("No best checkpoint was saved; testing the final weights.")
    log.info("Testing %s on the test split", best or "the final weights")
    predictions = evaluate_network(
        net,
        datamodule,
        input_size=int(cfg.data.input_size),
        tta=bool(cfg.tta),
        accelerator=trainer.strategy.root_device.type,
        precision=str(trainer.precision),
        limit_test_batches=cfg.trainer.get("limit_test_batches"),
    )
    results = metrics(predictions, labels=getattr(datamodule, "label_names", None))
    results["best_checkpoint"] = str(Path(best).resolve()) if best else None
    return results


def resolve_precision_setting(cfg: DictConfig) -> None:
    """``trainer.precision=auto`` -> what this machine runs natively (logged)."""
    if str(cfg.trainer.get("precision")) != "auto":
        return
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    device = resolve_device("cpu" if accelerator == "cpu" else "auto")
    cfg.trainer.precision = lightning_precision("auto", device)
    log.info("trainer.precision=auto -> %s on %s", cfg.trainer.precision, device)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint; returns the results written to results.json."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere+ GPUs; no effect on CPUs
    resolve_precision_setting(cfg)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: FERClassifier = hydra.utils.instantiate(cfg.model, _recursive_=False)
    loggers = instantiate_loggers(cfg)
    callbacks = instantiate_callbacks(cfg, with_logger=bool(loggers))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({"config": resolved})

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if not trainer.is_global_zero:
        return {}

    results: dict[str, Any] = {
        "status": "completed",
        "model": cfg.model.arch,
        "seed": cfg.get("seed"),
        "epochs_trained": int(trainer.current_epoch),
        "precision": str(trainer.precision),
    }
    if cfg.get("test", True):
        results.update(evaluate_best(cfg, trainer, datamodule, model))
    history = epoch_history(trainer)
    val_accs = [row["val/acc"] for row in history if "val/acc" in row]
    if val_accs:
        results["val/acc_best"] = max(val_accs)
    results["history"] = history
    results["config"] = resolved
    run_dir = Path(cfg.paths.output_dir)
    files = write_run_report(run_dir, results, history)
    for logger in loggers:
        if isinstance(logger, pl.loggers.TensorBoardLogger) and "test/confusion_matrix" in results:
            logger.experiment.add_figure(
                "test/confusion_matrix", confusion_matrix_figure(results["test/confusion_matrix"])
            )
            logger.log_metrics(
                {k: v for k, v in results.items() if k.startswith("test/") and isinstance(v, float)}
            )
    print(format_summary(results, files))
    return results


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failure(cfg: DictConfig, error: BaseException) -> None:
    """A failed sweep job still leaves a results.json, so the sweep summary lists it."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / "results.json",
        {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "model": cfg.model.get("arch"),
            "seed": cfg.get("seed"),
        },
    )


def run(cfg: DictConfig) -> float | None:
    """The Hydra task; returns ``cfg.optimized_metric`` for sweeps (NaN for a failed job)."""
    try:
        results = train(cfg)
    except USER_ERRORS as error:
        if _is_multirun():
            log.error("Job failed: %s", error)
            _record_failure(cfg, error)
            return math.nan
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        if not _is_multirun():
            raise
        # One failed job must not end the sweep: record it and go on.
        log.error("Job failed:\n%s", traceback.format_exc())
        _record_failure(cfg, error)
        return math.nan
    value = results.get(cfg.get("optimized_metric") or "")
    return float(value) if isinstance(value, int | float) else None


main = hydra_entry("train", run)

if __name__ == "__main__":
    main()
