"""``fer-train [overrides]`` (``python -m fer_lightning.train``): train, test, report.

Hydra composes ``conf/train.yaml``; this file only instantiates what the config names and runs
it. After training, the best checkpoint (by validation accuracy) is evaluated on the test split
(FER2013: PrivateTest) on one process, plain and with 10-view test-time augmentation, and the
run folder receives results.json, confusion_matrix.png, per_class.png and curves.png.

The run folder is ``outputs/train/<experiment or model>/<date>_<time>/`` (``_2``, ``_3``... for
runs started in the same second). It also gets ``config_tree.txt`` (the composed configuration,
printed at the start) and ``train.log`` (the key choices, one line per epoch, the test, the
summary). A run that fails leaves ``FAILED`` (the error and its traceback) and a results.json
with ``"status": "failed"``. ``ckpt_path=last`` (or the path of a checkpoint inside an earlier
run folder) continues in that folder, so that its ModelCheckpoint keeps tracking the best
checkpoint of the whole run.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from fer_lightning.cli.config import CONFIG_DIR, hydra_entry
from fer_lightning.cli.errors import USER_ERRORS, UserError, instantiate
from fer_lightning.cli.run_folders import (
    FAILED_MARKER,
    newest_last_checkpoint,
    quote_override,
    run_folder_of,
)
from fer_lightning.models.checkpoints import load_model, read_checkpoint
from fer_lightning.runtime import lightning_precision, resolve_device
from fer_lightning.training.callbacks import EpochHistory
from fer_lightning.training.checkpoint_io import check_resume_checkpoint
from fer_lightning.training.console import config_tree, silence_lightning_tips
from fer_lightning.training.evaluate import evaluate_network
from fer_lightning.training.module import FERClassifier
from fer_lightning.training.reporting import (
    class_names,
    confusion_matrix_figure,
    confusion_title,
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
        callbacks.append(instantiate(callback_cfg))
    return callbacks


def instantiate_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    return [
        instantiate(logger_cfg)
        for logger_cfg in (cfg.get("logger") or {}).values()
        if isinstance(logger_cfg, DictConfig) and "_target_" in logger_cfg
    ]


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str) -> str | None:
    """``last`` -> the newest ``last.ckpt`` under ``log_dir``; a path must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        newest = newest_last_checkpoint(log_dir)
        if newest is None:
            raise UserError(
                f"ckpt_path=last: no checkpoints/last.ckpt under {log_dir}. Pass the checkpoint "
                "to resume from: ckpt_path=outputs/train/<name>/<date>_<time>/checkpoints/last.ckpt"
            )
        log.info("Resuming from %s", newest)
        return str(newest)
    if not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file.")
    return ckpt_path


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
    split = split_label(cfg)
    test_set = getattr(datamodule, "test_set", None)
    size = f"{len(test_set)} faces" if test_set is not None else "all faces"
    limit = cfg.trainer.get("limit_test_batches")
    if limit is not None:
        size += f", limit_test_batches={limit}"
    views = "plain and with 10-view TTA" if cfg.tta else "plain"
    log.info("Testing %s on the %s (%s), %s", best or "the final weights", split, size, views)
    started = time.perf_counter()
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
    results["test/split"] = split
    tta = results.get("test/acc_tta")
    log.info(
        "Test done in %.1f s: accuracy %.2f%%%s on %d faces",
        time.perf_counter() - started,
        100 * results["test/acc"],
        f", {100 * tta:.2f}% with TTA" if isinstance(tta, float) else "",
        results["test/samples"],
    )
    results["best_checkpoint"] = str(Path(best).resolve()) if best else None
    label_names = getattr(datamodule, "label_names", None)
    results["model_file"] = str(
        save_published_format(
            net,
            Path(cfg.paths.output_dir),
            int(cfg.data.input_size),
            label_names and list(label_names),
        )
    )
    return results


def save_published_format(
    net: torch.nn.Module, run_dir: Path, input_size: int, label_names: list[str] | None
) -> Path:
    """The tested network alone as ``model.pt`` in the published format (``{"net": state}``),
    with its architecture, input size and class names beside it: a small file that the
    original code, fer-predict and load_model all read."""
    path = run_dir / "model.pt"
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(".model.pt.partial")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    content = {"net": state, "arch": str(getattr(net, "arch", "")), "input_size": input_size}
    if label_names:
        content["label_names"] = list(label_names)
    torch.save(content, partial)
    partial.replace(path)
    return path


def split_label(cfg: DictConfig) -> str:
    """How the test split is called in the report: FER2013's is PrivateTest."""
    dataset = str(cfg.data.get("dataset", ""))
    if dataset.startswith("fer2013"):
        return "FER2013 PrivateTest split"
    return f"{dataset} test split" if dataset else "test split"


def resolve_precision_setting(cfg: DictConfig) -> None:
    """``trainer.precision=auto`` -> what this machine runs natively (logged)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    device = resolve_device("cpu" if accelerator == "cpu" else "auto")
    requested = str(cfg.trainer.get("precision"))
    cfg.trainer.precision = lightning_precision(requested, device)
    log.info("Precision %s on %s (trainer.precision=%s)", cfg.trainer.precision, device, requested)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint; returns the results written to results.json."""
    silence_lightning_tips()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere+ GPUs; no effect on CPUs
    resolve_precision_setting(cfg)
    show_config(cfg)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    # The data are looked for (and parsed into the cache) before any weights are downloaded,
    # so that a missing dataset is the first thing a user hears about.
    datamodule.prepare_data()
    model: FERClassifier = instantiate(cfg.model, _recursive_=False)
    loggers = instantiate_loggers(cfg)
    callbacks = instantiate_callbacks(cfg, with_logger=bool(loggers))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({"config": resolved})

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir)
    if ckpt_path is not None:
        check_resume_checkpoint(ckpt_path, str(cfg.model.arch), int(cfg.model.num_classes))
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
    report_to_loggers(loggers, results, files)
    log.info("Summary\n%s", format_summary(results, files))
    return results


def show_config(cfg: DictConfig) -> None:
    """Log the key choices (train.log), print the composed configuration as a tree and save it
    as config_tree.txt in the run folder."""
    if rank_zero_only.rank != 0:
        return
    run_dir = Path(cfg.paths.output_dir)
    log.info("Run folder %s", run_dir)
    if HydraConfig.initialized():
        runtime = HydraConfig.get().runtime
        choices = " ".join(
            f"{group}={choice}"
            for group, choice in runtime.choices.items()
            if group.split("/")[0] != "hydra" and choice is not None
        )
        log.info("Config groups: %s", choices)
        overrides = " ".join(HydraConfig.get().overrides.task)
        log.info("Overrides: %s", overrides or "none")
    trainer = cfg.trainer
    log.info(
        "model %s at %sx%s, %s classes; batch size %s; optimizer lr %s; max_epochs %s; "
        "precision %s; seed %s; ckpt_path %s",
        cfg.model.arch,
        cfg.data.input_size,
        cfg.data.input_size,
        cfg.model.get("num_classes"),
        cfg.data.get("batch_size"),
        cfg.get("optimizer", {}).get("lr"),
        trainer.get("max_epochs"),
        trainer.get("precision"),
        cfg.get("seed"),
        cfg.get("ckpt_path"),
    )
    tree = config_tree(OmegaConf.to_container(cfg, resolve=True), title=f"config ({run_dir})")
    print(tree, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config_tree.txt").write_text(tree, encoding="utf-8")


def report_to_loggers(
    loggers: list[pl.loggers.Logger], results: dict[str, Any], files: list[Path]
) -> None:
    """The test scores to every tracker; the figures to those that store images."""
    scores = {k: v for k, v in results.items() if k.startswith("test/") and isinstance(v, float)}
    confusion = results.get("test/confusion_matrix")
    for logger in loggers:
        if scores:
            logger.log_metrics(scores)
        if isinstance(logger, pl.loggers.TensorBoardLogger) and confusion:
            figure = confusion_matrix_figure(
                confusion, class_names(results, len(confusion)), confusion_title(results)
            )
            logger.experiment.add_figure("test/confusion_matrix", figure)
        elif isinstance(logger, pl.loggers.MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path))
        elif isinstance(logger, pl.loggers.WandbLogger):
            images = [path for path in files if path.suffix == ".png"]
            if images:
                logger.log_image("report", [str(path) for path in images])
        logger.finalize("success")


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(cfg: DictConfig, error: BaseException, status: str = "failed") -> None:
    """Mark the run folder as failed: ``FAILED`` (the error and its traceback), results.json
    with the status and error (a sweep's summary lists it), and the error in train.log."""
    if rank_zero_only.rank != 0:
        return
    run_dir = Path(cfg.paths.output_dir)
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    details = "".join(traceback.format_exception(error))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / FAILED_MARKER).write_text(
            f"status: {status}\nerror: {message}\n\n{details}", encoding="utf-8"
        )
        write_json(
            run_dir / "results.json",
            {
                "status": status,
                "error": message,
                "model": cfg.model.get("arch"),
                "seed": cfg.get("seed"),
            },
        )
    except OSError as write_error:  # a full disk must not hide the original error
        log.error("Could not mark %s as %s: %s", run_dir, status, write_error)
    log_to_file(logging.ERROR, f"Run {status}: {message}\n{details}")


def log_to_file(level: int, message: str) -> None:
    """A record for the log file only (train.log), for what the console already shows."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run(cfg: DictConfig) -> float | None:
    """The Hydra task; returns ``cfg.optimized_metric`` for sweeps (NaN for a failed job)."""
    if rank_zero_only.rank == 0:
        # A resumed run is running again; it is marked anew if it fails again.
        (Path(cfg.paths.output_dir) / FAILED_MARKER).unlink(missing_ok=True)
    try:
        results = train(cfg)
    except USER_ERRORS as error:
        record_failure(cfg, error)
        if _is_multirun():
            log.error("Job failed: %s", error)
            return math.nan
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as error:
        # Lightning turns Ctrl-C during fit into SystemExit(1).
        if not (isinstance(error, SystemExit) and error.code in (0, None)):
            record_failure(cfg, error, status="interrupted")
        raise
    except Exception as error:
        record_failure(cfg, error)
        if not _is_multirun():
            raise
        # One failed job must not end the sweep: record it and go on.
        log.error("Job failed:\n%s", traceback.format_exc())
        return math.nan
    value = results.get(cfg.get("optimized_metric") or "")
    return float(value) if isinstance(value, int | float) else None


def resume_overrides(args: list[str]) -> list[str]:
    """``args`` plus ``hydra.run.dir=<earlier run folder>`` when ``ckpt_path`` names ``last`` or
    a checkpoint inside an earlier run folder, so that the resumed run continues that folder
    (Hydra fixes the run folder before the task starts, hence here, before Hydra parses the
    command line). Unchanged for sweeps, Hydra flags, an explicit ``hydra.run.dir`` or a
    checkpoint outside a run folder."""
    names = [arg.partition("=")[0].lstrip("+~") for arg in args]
    if "ckpt_path" not in names or "hydra.run.dir" in names:
        return args
    if any(arg.startswith("-") for arg in args):
        return args  # -m, --cfg, --help, ...: no single run to continue
    from hydra import compose, initialize_config_dir

    task_overrides = [a for a, n in zip(args, names, strict=True) if not n.startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=task_overrides)
        ckpt_path, log_dir = cfg.get("ckpt_path"), str(cfg.paths.log_dir)
    except Exception:  # Hydra reports a bad command line itself, in a moment
        return args
    if ckpt_path is None:
        return args
    checkpoint = newest_last_checkpoint(log_dir) if ckpt_path == "last" else Path(str(ckpt_path))
    if checkpoint is None or not checkpoint.is_file():
        return args  # the task reports it
    run_dir = run_folder_of(checkpoint)
    if run_dir is None:
        return args
    return [*args, f"hydra.run.dir={quote_override(str(run_dir))}"]


_hydra_main = hydra_entry("train", run)


def main() -> Any:
    """``fer-train``: the Hydra app over conf/train.yaml (resuming in the earlier run folder)."""
    sys.argv[1:] = resume_overrides(sys.argv[1:])
    return _hydra_main()


if __name__ == "__main__":
    main()
