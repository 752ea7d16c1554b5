"""``python -m fer_lightning.eval ckpt_path=PATH`` or ``ckpt_path=[A,B,C]``: test checkpoints.

Each checkpoint (this project's Lightning checkpoints, the published RMN ``{"net": ...}`` files,
or bare state dicts) is evaluated on the test split, plain and with 10-view test-time
augmentation; a list is also evaluated as an unweighted average of the members' softmax outputs
(the paper's 76.82% came from such a 7-model ensemble). Results go to the console and to
``eval_results.json`` in the run folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig

from fer_lightning import config as _config  # noqa: F401  (registers the resolvers)
from fer_lightning.checkpoints import load_model
from fer_lightning.evaluation import Predictions, average, metrics, predict
from fer_lightning.reporting import write_json
from fer_lightning.train import USER_ERRORS, UserError

log = logging.getLogger(__name__)

# The published checkpoints were trained at 224x224 and do not record it.
DEFAULT_INPUT_SIZE = 224


def checkpoint_paths(value: Any) -> list[str]:
    paths = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not paths:
        raise UserError("ckpt_path is an empty list.")
    return [str(p) for p in paths]


def resolve_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every checkpoint of ``cfg.ckpt_path`` and, for several, their ensemble."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed)
    paths = checkpoint_paths(cfg.ckpt_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    device = resolve_device(str(cfg.trainer.get("accelerator", "auto")))
    precision = str(cfg.trainer.get("precision", "32-true"))

    members: dict[str, Any] = {}
    member_predictions: list[Predictions] = []
    for path in paths:
        net = load_model(path, arch=cfg.get("arch"))
        input_size = int(cfg.get("input_size") or getattr(net, "input_size", DEFAULT_INPUT_SIZE))
        log.info("Evaluating %s (%s) at %dx%d", path, net.arch, input_size, input_size)
        predictions = predict(
            net,
            datamodule.test_dataloader(),
            input_size=input_size,
            device=device,
            tta=bool(cfg.tta),
            precision=precision,
        )
        member_predictions.append(predictions)
        members[path] = {"arch": net.arch, "input_size": input_size, **metrics(predictions)}
        del net
    results: dict[str, Any] = {"members": members}
    if len(paths) > 1:
        results["ensemble"] = metrics(average(member_predictions))
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        results = evaluate(cfg)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    path = write_json(Path(cfg.paths.output_dir) / "eval_results.json", results)
    print(format_results(results))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
