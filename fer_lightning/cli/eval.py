"""``fer-eval ckpt_path=PATH`` or ``ckpt_path=[A,B,C]`` (``python -m fer_lightning.eval``).

Each checkpoint (this project's Lightning checkpoints, the published RMN ``{"net": ...}`` files,
or bare state dicts) is scored on the test split, plain and with 10-view test-time
augmentation; a list is also scored as the unweighted average of the members' softmax outputs
(the paper's 76.82% came from such a 7-model ensemble). Results go to the console and to
``eval_results.json`` in the run folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, ListConfig

from fer_lightning.cli.config import hydra_entry
from fer_lightning.cli.errors import USER_ERRORS, UserError, instantiate
from fer_lightning.models import num_classes_of
from fer_lightning.models.checkpoints import load_model
from fer_lightning.models.presets import check_input_size, default_input_size
from fer_lightning.training.evaluate import evaluate_network
from fer_lightning.training.reporting import write_json
from fer_lightning.training.scoring import Predictions, average, metrics

log = logging.getLogger(__name__)


def checkpoint_paths(value: Any) -> list[str]:
    paths = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not paths:
        raise UserError("ckpt_path is an empty list.")
    return [str(p) for p in paths]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score every checkpoint of ``cfg.ckpt_path`` and, for several, their ensemble."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed)
    paths = checkpoint_paths(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    label_names = tuple(datamodule.label_names)

    members: dict[str, Any] = {}
    member_predictions: list[Predictions] = []
    for path in paths:
        net = load_model(path, arch=cfg.get("arch"))
        if num_classes_of(net) != len(label_names):
            raise UserError(
                f"{path} has {num_classes_of(net)} outputs, but the {cfg.data.dataset} data have "
                f"{len(label_names)} classes ({', '.join(label_names)}): evaluate it on data "
                "with the classes it was trained on."
            )
        size = cfg.get("input_size") or getattr(net, "input_size", None)
        input_size = check_input_size(int(size or default_input_size(net.arch)))
        log.info("Evaluating %s (%s) at %dx%d", path, net.arch, input_size, input_size)
        predictions = evaluate_network(
            net,
            datamodule,
            input_size=input_size,
            tta=bool(cfg.tta),
            accelerator=str(cfg.trainer.get("accelerator", "auto")),
            precision=str(cfg.trainer.get("precision", "32-true")),
            limit_test_batches=cfg.trainer.get("limit_test_batches"),
        )
        member_predictions.append(predictions)
        members[path] = {
            "arch": net.arch,
            "input_size": input_size,
            **metrics(predictions, labels=label_names),
        }
        del net
    results: dict[str, Any] = {"members": members}
    if len(paths) > 1:
        results["ensemble"] = metrics(average(member_predictions), labels=label_names)
    return results


def format_results(results: dict[str, Any]) -> str:
    rows = [(Path(path).name, r) for path, r in results["members"].items()]
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
    return "\n".join(lines)


def run(cfg: DictConfig) -> None:
    """The Hydra task."""
    try:
        results = evaluate(cfg)
    except (*USER_ERRORS, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    path = write_json(Path(cfg.paths.output_dir) / "eval_results.json", results)
    print(format_results(results))
    print(f"written: {path}")


main = hydra_entry("eval", run)

if __name__ == "__main__":
    main()
