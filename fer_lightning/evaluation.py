"""Test-split evaluation of one network or an ensemble: probabilities, then metrics.

Used after training (on one process, so every test image counts exactly once whatever the
training strategy) and by ``python -m fer_lightning.eval``. Ensembles average the softmax
outputs of their members with equal weights, as the paper's 7-model ensemble did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_recall,
)

from fer_lightning.data.device_transforms import to_model_input, tta_views
from fer_lightning.labels import EMOTIONS


@dataclass
class Predictions:
    """Softmax outputs over a split: ``probs`` (N, C), ``probs_tta`` (N, C) or None, ``labels``."""

    probs: Tensor
    labels: Tensor
    probs_tta: Tensor | None = None


def autocast_for(
    precision: str | int | None, device: torch.device
) -> contextlib.AbstractContextManager:
    """The autocast context matching a Lightning precision setting (nothing for 32-bit)."""
    precision = str(precision or "32")
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def tta_probabilities(forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Mean softmax of ``forward`` over the 10 test-time augmentation views of ``x``: (N, C)."""
    views = tta_views(x)  # (V, N, 3, S, S)
    return torch.stack([torch.softmax(forward(view).float(), dim=1) for view in views]).mean(0)


@torch.no_grad()
def predict(
    net: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    input_size: int,
    device: torch.device | str = "cpu",
    tta: bool = True,
    precision: str | None = None,
) -> Predictions:
    """Run ``net`` (eval mode) over ``(faces uint8 (N, 48, 48), labels)`` batches."""
    device = torch.device(device)
    net = net.to(device).eval()
    probs, probs_tta, labels = [], [], []
    for faces, y in batches:
        x = to_model_input(faces.to(device), input_size)
        with autocast_for(precision, device):
            probs.append(torch.softmax(net(x).float(), dim=1).cpu())
            if tta:
                probs_tta.append(tta_probabilities(net, x).cpu())
        labels.append(y.cpu())
    return Predictions(
        probs=torch.cat(probs),
        labels=torch.cat(labels),
        probs_tta=torch.cat(probs_tta) if tta else None,
    )


def average(predictions: Sequence[Predictions]) -> Predictions:
    """Unweighted mean of the members' softmax outputs (same split, same order)."""
    labels = predictions[0].labels
    for member in predictions[1:]:
        if not torch.equal(member.labels, labels):
            raise ValueError("Ensemble members were evaluated on different samples.")
    tta = [p.probs_tta for p in predictions]
    return Predictions(
        probs=torch.stack([p.probs for p in predictions]).mean(0),
        labels=labels,
        probs_tta=torch.stack(tta).mean(0) if all(t is not None for t in tta) else None,
    )


def metrics(predictions: Predictions, prefix: str = "test/") -> dict[str, Any]:
    """Accuracy (micro, as papers report it), macro F1, per-class recall, confusion matrix."""
    num_classes = predictions.probs.shape[1]
    probs, labels = predictions.probs, predictions.labels
    result: dict[str, Any] = {
        f"{prefix}acc": float(multiclass_accuracy(probs, labels, num_classes, average="micro")),
        f"{prefix}f1_macro": float(
            multiclass_f1_score(probs, labels, num_classes, average="macro")
        ),
        f"{prefix}recall_per_class": [
            float(r) for r in multiclass_recall(probs, labels, num_classes, average=None)
        ],
        f"{prefix}confusion_matrix": multiclass_confusion_matrix(probs, labels, num_classes)
        .long()
        .tolist(),
        f"{prefix}samples": int(labels.numel()),
    }
    if predictions.probs_tta is not None:
        tta = predictions.probs_tta
        result[f"{prefix}acc_tta"] = float(
            multiclass_accuracy(tta, labels, num_classes, average="micro")
        )
        result[f"{prefix}f1_macro_tta"] = float(
            multiclass_f1_score(tta, labels, num_classes, average="macro")
        )
    if num_classes == len(EMOTIONS):
        result[f"{prefix}recall"] = dict(
            zip(EMOTIONS, result[f"{prefix}recall_per_class"], strict=True)
        )
    return result
