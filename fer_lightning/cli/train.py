"""``fer-train [overrides]`` (``python -m fer_lightning.train``): train, test, report.

Hydra composes ``conf/train.yaml``; this file only instantiates what the config names and runs
it. After training, the best checkpoint (by validation accuracy) is evaluated on the test split
(FER2013: PrivateTest) on one process, plain and with 10-view test-time augmentation; a
temperature is fitted on the validation split (``calibrate``; recorded in best.ckpt and
model.pt), and the run folder receives results.json, confusion_matrix.png, per_class.png,
reliability.png and curves.png.

The run folder is ``outputs/train/<experiment or model>/<date>_<time>/`` (``_2``, ``_3``... for
runs started in the same second). It also gets ``config_tree.txt`` (the composed configuration,
printed at the start), ``train.log`` (the key choices, one line per epoch, the test, the
summary), ``checkpoints/best.ckpt`` and ``checkpoints/last.ckpt``, and ``model.pt`` (the tested
network in the published format).

A command is checked before its work starts (the trackers it names, the checkpoint it resumes,
the dataset, the model); a command refused there writes nothing: the run folder Hydra made for
it is removed (:func:`~fer_lightning.cli.run_folders.discard_run_folder_if_refused`). A run that
fails after it started leaves ``FAILED`` (the error and its traceback) and a results.json with
``"status": "failed"`` in its own folder. ``ckpt_path=last`` (the newest last.ckpt of the same
experiment) or the path of a checkpoint inside an earlier run folder continues in that folder
(conf/hydra/train.yaml), so that its ModelCheckpoint keeps tracking the best checkpoint of the
whole run.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from fer_lightning.cli.config import hydra_entry
from fer_lightning.cli.errors import USER_ERRORS, UserError, instantiate
from fer_lightning.cli.run_folders import (
    FAILED_MARKER,
    close_log_files_under,
    discard_run_folder_if_refused,
    resume_checkpoint,
)
from fer_lightning.models.calibration import Calibration
from fer_lightning.models.checkpoints import load_model, read_checkpoint
from fer_lightning.models.provenance import TRAINED_HERE, ModelProvenance
from fer_lightning.runtime import lightning_precision, resolve_device
from fer_lightning.training.calibrate import (
    calibration_results,
    fit_on_validation,
    record_in_checkpoint,
)
from fer_lightning.training.callbacks import EpochHistory
from fer_lightning.training.checkpoint_io import ResumeTarget, check_resume_checkpoint
from fer_lightning.training.console import config_tree, silence_lightning_tips
from fer_lightning.training.evaluate import evaluate_network
from fer_lightning.training.module import FERClassifier
from fer_lightning.training.reporting import (
    best_epoch,
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


# Trackers that need an optional package: the class -> the project's extra that installs it.
TRACKER_EXTRAS = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}


def instantiate_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    """The configured trackers; a missing tracker package is a one-line :class:`UserError` that
    names the project's extra (not Lightning's bare ``pip install`` hint)."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if not (isinstance(logger_cfg, DictConfig) and "_target_" in logger_cfg):
            continue
        try:
            loggers.append(instantiate(logger_cfg))
        except InstantiationException as error:
            if not isinstance(error.__cause__, ImportError):
                raise
            extra = TRACKER_EXTRAS.get(str(logger_cfg._target_).rsplit(".", 1)[-1], name)
            raise UserError(
                f"logger={name} needs the {extra} package, which is not installed: "
                f'pip install -e ".[{extra}]" (in a checkout of fer-lightning; else '
                f'pip install "fer-lightning[{extra}]"), or choose another logger (logger=csv).'
            ) from None
    return loggers


def resume_target(cfg: DictConfig) -> ResumeTarget:
    """What this run trains, as a resumed checkpoint must match it."""
    return ResumeTarget.from_config(
        {
            "arch": cfg.model.arch,
            "num_classes": cfg.model.num_classes,
            "input_size": cfg.model.get("input_size") or cfg.data.input_size,
            "label_names": cfg.model.get("label_names"),
            "dataset": cfg.data.get("dataset"),
        }
    )


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``ckpt_path=`` resumes, checked against this run before anything is
    written: ``last`` -> the newest ``last.ckpt`` of this experiment's runs (logged)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    experiment_dir = Path(cfg.paths.log_dir) / str(cfg.run_group)
    checkpoint = resume_checkpoint(str(ckpt_path), experiment_dir)
    if checkpoint is None:
        raise UserError(
            f"ckpt_path=last: no checkpoints/last.ckpt of this experiment ({cfg.run_group}) "
            f"under {experiment_dir}. Pass the checkpoint to resume from: "
            f"ckpt_path={experiment_dir}/<date>_<time>/checkpoints/last.ckpt"
        )
    if not checkpoint.is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file.")
    check_resume_checkpoint(checkpoint, resume_target(cfg))
    if ckpt_path == "last":
        log.info("Resuming from %s (the newest last.ckpt of %s)", checkpoint, cfg.run_group)
    else:
        log.info("Resuming from %s", checkpoint)
    return str(checkpoint)


def training_data_of(cfg: DictConfig, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """``{"dataset": ..., "synthetic": bool}``: what the model learns from (saved in its
    checkpoints, model.pt and results.json)."""
    dataset = cfg.data.get("dataset")
    synthetic = getattr(datamodule, "is_synthetic", None)
    if synthetic is None:
        synthetic = dataset == "synthetic"
    return {"dataset": str(dataset), "synthetic": bool(synthetic)}


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


def calibrate_best(
    cfg: DictConfig, trainer: pl.Trainer, datamodule: pl.LightningDataModule, net: torch.nn.Module
) -> tuple[Calibration | None, str | None]:
    """Fit a temperature for ``net`` on the validation split (``calibrate=false``: none); it is
    set as ``net.calibration`` and recorded in the best checkpoint. (None, why) when none."""
    if not cfg.get("calibrate", True):
        net.calibration = None
        return None, "calibrate=false"
    calibration, reason = fit_on_validation(
        net,
        datamodule,
        input_size=int(cfg.data.input_size),
        accelerator=trainer.strategy.root_device.type,
        precision=str(trainer.precision),
        limit_batches=cfg.trainer.get("limit_val_batches"),
    )
    net.calibration = calibration
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if calibration is not None and best:
        record_in_checkpoint(best, calibration)
    return calibration, reason


def test_best(
    cfg: DictConfig, trainer: pl.Trainer, datamodule: pl.LightningDataModule, model: FERClassifier
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Test the best checkpoint (or the final weights without one) on one process: the network
    tested and its scores, with its calibration before and after a temperature fitted on the
    validation split."""
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
    calibration, reason = calibrate_best(cfg, trainer, datamodule, net)
    results.update(calibration_results(predictions.logits, predictions.labels, calibration, reason))
    tta = results.get("test/acc_tta")
    log.info(
        "Test done in %.1f s: accuracy %.2f%%%s on %d faces",
        time.perf_counter() - started,
        100 * results["test/acc"],
        f", {100 * tta:.2f}% with TTA" if isinstance(tta, float) else "",
        results["test/samples"],
    )
    results["best_checkpoint"] = str(Path(best).resolve()) if best else None
    return net, results


def save_published_format(
    net: torch.nn.Module,
    run_dir: Path,
    input_size: int,
    label_names: list[str] | None,
    training_data: dict[str, Any] | None = None,
) -> Path:
    """The tested network alone as ``model.pt`` in the published format (``{"net": state}``),
    with its architecture, input size, class names, training data and fitted temperature
    (``calibration``, when ``net.calibration`` is set) beside it (plain values): a small file
    that the original code, fer-predict and load_model all read."""
    path = run_dir / "model.pt"
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(".model.pt.partial")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    content = {"net": state, "arch": str(getattr(net, "arch", "")), "input_size": input_size}
    if label_names:
        content["label_names"] = list(label_names)
    if training_data is not None:
        content["training_data"] = dict(training_data)
    calibration = getattr(net, "calibration", None)
    if calibration is not None:
        content["calibration"] = calibration.to_dict()
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


class OneRunFolder(pl.Callback):
    """One run folder for all the processes of a distributed run: rank 0's.

    Every process of a run started on several machines (torchrun, SLURM) composes its own
    config, and so picks its own run folder (``<date>_<time>`` of its own start, or ``_2`` on a
    shared filesystem); only rank 0 writes the run's files (checkpoints, results.json, the
    report; Lightning sends every process rank 0's checkpoint folder). Once the processes can
    talk, the others leave their own folder (removed when this process created it: it holds only
    Hydra's copy of the config and the log) and stop writing the log file there; their log stays
    on their console."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = str(output_dir)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        rank_zero_dir = trainer.strategy.broadcast(self.output_dir)
        if trainer.is_global_zero:
            return
        if Path(rank_zero_dir).resolve() != Path(self.output_dir).resolve():
            discard_run_folder_if_refused(self.output_dir)
        close_log_files_under(Path(self.output_dir))


@dataclass
class TrainingJob:
    """Everything a run needs, built and checked before anything is written."""

    datamodule: pl.LightningDataModule
    model: FERClassifier
    trainer: pl.Trainer
    loggers: list[pl.loggers.Logger]
    ckpt_path: str | None


def prepare_training(cfg: DictConfig) -> TrainingJob:
    """Build the run and check it (the trackers, the checkpoint to resume, the dataset, the
    model) without writing into the run folder: whatever is refused here leaves no trace."""
    silence_lightning_tips()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere+ GPUs; no effect on CPUs
    resolve_precision_setting(cfg)
    show_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    loggers = instantiate_loggers(cfg)
    callbacks = instantiate_callbacks(cfg, with_logger=bool(loggers))
    # Checkpoints are the callbacks' business: without a ModelCheckpoint (callbacks=none) Lightning
    # would add its own and write a full checkpoint (1.65 GB for a Residual Masking Network) into
    # the logger's folder, unasked.
    checkpointing = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)
    callbacks.append(OneRunFolder(cfg.paths.output_dir))
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=checkpointing,
    )
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    # The data are looked for (and parsed into the cache) before any weights are downloaded,
    # so that a missing dataset is the first thing a user hears about.
    datamodule.prepare_data()
    model: FERClassifier = instantiate(
        cfg.model, _recursive_=False, training_data=training_data_of(cfg, datamodule)
    )
    return TrainingJob(datamodule, model, trainer, loggers, ckpt_path)


def start_run(cfg: DictConfig, job: TrainingJob) -> None:
    """The run begins: its folder gets config_tree.txt (an earlier FAILED marker of a resumed
    run goes: it is running again), and the trackers the configuration."""
    if rank_zero_only.rank == 0:
        run_dir = Path(cfg.paths.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / FAILED_MARKER).unlink(missing_ok=True)
        (run_dir / "config_tree.txt").write_text(configuration_tree(cfg), encoding="utf-8")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in job.loggers:
        logger.log_hyperparams({"config": resolved})


def fit_and_test(cfg: DictConfig, job: TrainingJob) -> dict[str, Any]:
    """Fit, then test the best checkpoint and save it as model.pt; returns the results written
    to results.json."""
    trainer, model = job.trainer, job.model
    if cfg.get("train", True):
        trainer.fit(model, datamodule=job.datamodule, ckpt_path=job.ckpt_path)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Processes started by torchrun, SLURM or Lightning's ddp launcher keep their process
        # group after fit; the test below runs on rank 0 alone, and a Trainer in a process with a
        # live group waits for the other processes (which have finished) at its first barrier.
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return {}
    run_dir = Path(cfg.paths.output_dir)
    training_data = model.hparams.get("training_data")
    results: dict[str, Any] = {
        "status": "completed",
        "model": cfg.model.arch,
        "seed": cfg.get("seed"),
        "epochs_trained": int(trainer.current_epoch),
        "precision": str(trainer.precision),
        "training_data": training_data,
    }
    history = epoch_history(trainer)
    if cfg.get("test", True):
        net, scores = test_best(cfg, trainer, job.datamodule, model)
        results.update(scores)
        label_names = getattr(job.datamodule, "label_names", None)
        results["model_file"] = str(
            save_published_format(
                net,
                run_dir,
                int(cfg.data.input_size),
                label_names and list(label_names),
                training_data,
            )
        )
        if scores.get("best_checkpoint") and best_epoch(history) is not None:
            results["best_epoch"] = best_epoch(history)[0]
    val_accs = [row["val/acc"] for row in history if "val/acc" in row]
    if val_accs:
        results["val/acc_best"] = max(val_accs)
    provenance = ModelProvenance(
        arch=str(cfg.model.arch),
        origin=TRAINED_HERE,
        training_data=training_data,
        path=str(results.get("model_file") or run_dir),
    )
    if provenance.warning:
        results["warning"] = provenance.warning
    results["history"] = history
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    files = write_run_report(run_dir, results, history)
    report_to_loggers(job.loggers, results, files)
    log.info("Summary\n%s", format_summary(results, files))
    return results


def train(cfg: DictConfig) -> dict[str, Any]:
    """Prepare, fit, then test the best checkpoint; returns the results written to
    results.json (in-process use and tests; the command is :func:`run`)."""
    job = prepare_training(cfg)
    start_run(cfg, job)
    return fit_and_test(cfg, job)


def show_config(cfg: DictConfig) -> None:
    """Log the key choices (train.log) and print the composed configuration as a tree (saved
    as config_tree.txt once the run starts)."""
    if rank_zero_only.rank != 0:
        return
    log.info("Run folder %s", cfg.paths.output_dir)
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
    print(configuration_tree(cfg), flush=True)


def configuration_tree(cfg: DictConfig) -> str:
    return config_tree(
        OmegaConf.to_container(cfg, resolve=True), title=f"config ({cfg.paths.output_dir})"
    )


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
    try:
        job = prepare_training(cfg)
    except BaseException as error:
        return refuse(cfg, error)
    try:
        start_run(cfg, job)
        results = fit_and_test(cfg, job)
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


def refuse(cfg: DictConfig, error: BaseException) -> float:
    """A command refused before its work started writes nothing: the run folder Hydra made for
    it goes (a user's mistake: one line, exit 2). In a sweep, the job's folder belongs to the
    sweep and records the failure, so that the sweep's summary lists the job."""
    if _is_multirun():
        interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
        record_failure(cfg, error, status="interrupted" if interrupted else "failed")
        if interrupted or not isinstance(error, Exception):
            raise error
        log.error("Job refused: %s", error)
        return math.nan
    if rank_zero_only.rank == 0:
        discard_run_folder_if_refused(cfg.paths.output_dir)
    if isinstance(error, USER_ERRORS):
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    raise error


main = hydra_entry("train", run)


if __name__ == "__main__":
    main()
