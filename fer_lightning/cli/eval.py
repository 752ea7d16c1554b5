"""``fer-eval ckpt_path=PATH`` or ``ckpt_path=[A,B,C]`` (``python -m fer_lightning.eval``).

Each checkpoint (this project's Lightning checkpoints, the published RMN ``{"net": ...}`` files,
or bare state dicts) is scored on the test split, plain and with 10-view test-time
augmentation; a list is also scored as the unweighted average of the members' softmax outputs
(the paper's 76.82% came from such a 7-model ensemble). Results go to the console and to
``eval_results.json`` in the run folder.

Each checkpoint's calibration on the test split is reported too: the expected calibration error
(15 bins), negative log-likelihood and Brier score of its own probabilities and of those divided
by its temperature: the one recorded in the checkpoint, else one fitted here on the validation
split (``calibrate=false``: none). The run folder gets a reliability diagram per checkpoint.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from fer_lightning.cli.config import CONFIG_DIR, hydra_entry, typed_override
from fer_lightning.cli.errors import USER_ERRORS, UserError, instantiate
from fer_lightning.cli.recognizer import checked_input_size
from fer_lightning.cli.run_folders import discard_run_folder_if_refused, run_folder_of
from fer_lightning.models import num_classes_of
from fer_lightning.models.calibration import Calibration
from fer_lightning.models.checkpoints import load_model
from fer_lightning.models.presets import check_input_size, default_input_size
from fer_lightning.training.calibrate import calibration_results, fit_on_validation
from fer_lightning.training.evaluate import evaluate_network
from fer_lightning.training.reporting import (
    format_calibration,
    reliability_figure,
    save_figure,
    write_json,
)
from fer_lightning.training.scoring import Predictions, average, metrics

log = logging.getLogger(__name__)

EXAMPLE = "fer-eval ckpt_path=PATH (or ckpt_path=[A,B,C] for an ensemble)."
# What older checkpoints that do not record their training data are taken to be.
ASSUMED_DATASET = "fer2013"


def checkpoint_paths(cfg: DictConfig) -> list[str]:
    """The checkpoints of ``ckpt_path`` (one, or a list)."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError(f"ckpt_path is required: {EXAMPLE}")
    value = cfg.ckpt_path
    paths = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not paths:
        raise UserError("ckpt_path is an empty list.")
    if len(paths) == 1:
        typed = typed_override("ckpt_path")
        return [typed if typed is not None and not typed.startswith("[") else str(paths[0])]
    return [str(p) for p in paths]


def training_dataset(net: nn.Module, path: str) -> tuple[str, str]:
    """The dataset ``net`` (loaded from ``path``) was trained on, and how that is known: its
    recorded training data, else the data config of the run folder it sits in, else FER2013."""
    provenance = getattr(net, "provenance", None)
    if provenance is not None and provenance.dataset:
        return provenance.dataset, "recorded in the checkpoint"
    folder = run_folder_of(path)
    saved = None if folder is None else folder / ".hydra" / "config.yaml"
    if saved is not None and saved.is_file():
        dataset = OmegaConf.select(OmegaConf.load(saved), "data.dataset")
        if dataset:
            return str(dataset), f"from {saved}"
    return ASSUMED_DATASET, "not recorded in the checkpoint, so FER2013 is assumed"


def data_config(cfg: DictConfig, dataset: str, how: str) -> DictConfig:
    """``cfg.data``, or, when the command line did not choose ``data=``, the data config of
    ``dataset`` (the one the checkpoint was trained on) with the command's other overrides."""
    if typed_override("data") is not None:
        return cfg.data
    if dataset != cfg.data.dataset:
        if not (CONFIG_DIR / "data" / f"{dataset}.yaml").is_file():
            raise UserError(
                f"The checkpoint was trained on {dataset!r} ({how}), which has no conf/data "
                "option: choose the test data with data=..."
            )
        overrides = [*HydraConfig.get().overrides.task, f"data={dataset}"]
        cfg = hydra.compose(config_name=str(HydraConfig.get().job.config_name), overrides=overrides)
    log.info(
        "Evaluating on %s, the data the checkpoint was trained on (%s); data=... chooses other "
        "test data.",
        dataset,
        how,
    )
    return cfg.data


def checked_size(cfg_size: int | None, net: nn.Module, path: str) -> int:
    """The input side: ``input_size=``, else the checkpoint's, else the architecture's."""
    size = cfg_size or getattr(net, "input_size", None) or default_input_size(net.arch)
    try:
        return check_input_size(int(size))
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score every checkpoint of ``cfg.ckpt_path`` and, for several, their ensemble."""
    paths = checkpoint_paths(cfg)
    input_size = checked_input_size(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed)
    first = load_model(paths[0], arch=cfg.get("arch"))
    dataset, how = training_dataset(first, paths[0])
    data = data_config(cfg, dataset, how)
    datamodule = instantiate(data)
    datamodule.prepare_data()
    datamodule.setup("test")
    label_names = tuple(datamodule.label_names)

    members: dict[str, Any] = {}
    member_predictions: list[Predictions] = []
    warned: set[str] = set()
    for index, path in enumerate(paths):
        net = first if index == 0 else load_model(path, arch=cfg.get("arch"))
        if num_classes_of(net) != len(label_names):
            raise UserError(
                f"{path} has {num_classes_of(net)} outputs, but the {data.dataset} data have "
                f"{len(label_names)} classes ({', '.join(label_names)}): evaluate it on data "
                "with the classes it was trained on."
            )
        provenance = getattr(net, "provenance", None)
        warning = None if provenance is None else provenance.warning
        if warning and warning not in warned:
            warned.add(warning)
            log.warning(warning)
        size = checked_size(input_size, net, path)
        log.info("Evaluating %s (%s) at %dx%d", path, net.arch, size, size)
        predictions = evaluate_network(
            net,
            datamodule,
            input_size=size,
            tta=bool(cfg.tta),
            accelerator=str(cfg.trainer.get("accelerator", "auto")),
            precision=str(cfg.trainer.get("precision", "32-true")),
            limit_test_batches=cfg.trainer.get("limit_test_batches"),
        )
        member_predictions.append(predictions)
        members[path] = {
            "arch": net.arch,
            "input_size": size,
            **metrics(predictions, labels=label_names),
            **member_calibration(cfg, net, datamodule, size, predictions),
        }
        del net
        first = None
    results: dict[str, Any] = {"dataset": str(data.dataset), "members": members}
    if len(paths) > 1:
        results["ensemble"] = metrics(average(member_predictions), labels=label_names)
    return results


def member_calibration(
    cfg: DictConfig,
    net: nn.Module,
    datamodule: pl.LightningDataModule,
    input_size: int,
    predictions: Predictions,
) -> dict[str, Any]:
    """The test split's ECE, NLL and Brier score before and after the checkpoint's temperature,
    or one fitted on the validation split when it records none (``calibration.source`` says
    which; ``calibrate=false``: before only)."""
    calibration: Calibration | None = getattr(net, "calibration", None)
    reason, source = None, "recorded in the checkpoint"
    if not cfg.get("calibrate", True):
        calibration, reason, source = None, "calibrate=false", None
    elif calibration is None:
        log.info("%s records no temperature: fitting one on the validation split.", net.arch)
        calibration, reason = fit_on_validation(
            net,
            datamodule,
            input_size=input_size,
            accelerator=str(cfg.trainer.get("accelerator", "auto")),
            precision=str(cfg.trainer.get("precision", "32-true")),
            limit_batches=cfg.trainer.get("limit_val_batches"),
        )
        source = "fitted by fer-eval on the validation split" if calibration else None
    results = calibration_results(predictions.logits, predictions.labels, calibration, reason)
    results["calibration"]["source"] = source
    return results


def write_reliability(run_dir: Path, results: dict[str, Any]) -> list[Path]:
    """One reliability diagram per checkpoint: reliability.png, or reliability_<i>.png."""
    written = []
    members = list(results["members"].values())
    for index, member in enumerate(members):
        figure = reliability_figure(member)
        if figure is None:
            continue
        name = "reliability.png" if len(members) == 1 else f"reliability_{index}.png"
        written.append(save_figure(figure, run_dir / name))
    return written


def member_names(paths: list[str]) -> list[str]:
    """Short names for the table: the file name, or, where two members share one (every run's
    ``last.ckpt``), the run folder with it (``demo/2026-01-01_10-00-00/last.ckpt``); the
    whole path where even that is shared."""
    files = [Path(path).name for path in paths]
    names = list(files)
    for index, path in enumerate(paths):
        if files.count(files[index]) > 1:
            folder = Path(path).parent
            if folder.name == "checkpoints":  # <run>/checkpoints/last.ckpt: name the run
                folder = folder.parent
            names[index] = f"{folder.parent.name}/{folder.name}/{Path(path).name}"
    pairs = zip(names, paths, strict=True)
    return [name if names.count(name) == 1 else path for name, path in pairs]


def format_results(results: dict[str, Any]) -> str:
    names = member_names(list(results["members"]))
    rows = list(zip(names, results["members"].values(), strict=True))
    if "ensemble" in results:
        rows.append((f"ensemble of {len(results['members'])}", results["ensemble"]))
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{'checkpoint':<{width}}{'test acc':>10}{'TTA acc':>10}{'macro F1':>10}{'images':>8}"]
    for name, r in rows:
        tta = r.get("test/acc_tta")
        lines.append(
            f"{name:<{width}}{100 * r['test/acc']:>9.2f}%"
            + (f"{100 * tta:>9.2f}%" if tta is not None else f"{'-':>10}")
            + f"{100 * r['test/f1_macro']:>9.2f}%{r['test/samples']:>8}"
        )
    for name, r in rows[: len(results["members"])]:
        calibration = format_calibration(r)
        if calibration:
            lines.append(f"{name}:")
            lines += [f"  {line}" for line in calibration]
    return "\n".join(lines)


def run(cfg: DictConfig) -> None:
    """The Hydra task. A refused command (exit 2) leaves no run folder behind."""
    try:
        results = evaluate(cfg)
    except USER_ERRORS as error:
        discard_run_folder_if_refused(HydraConfig.get().runtime.output_dir)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    path = write_json(Path(cfg.paths.output_dir) / "eval_results.json", results)
    figures = write_reliability(Path(cfg.paths.output_dir), results)
    print(format_results(results))
    for written in (path, *figures):
        print(f"written: {written}")


main = hydra_entry("eval", run)

if __name__ == "__main__":
    main()
