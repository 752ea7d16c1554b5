"""Scores of a test split, from the softmax outputs the LightningModule's test path collects.

Plain functions over tensors: accuracy (micro, as papers report it), macro F1, per-class recall,
the confusion matrix, with and without test-time augmentation, and the unweighted average of
several members' outputs (the paper's 7-model ensemble).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_recall,
)

from fer_lightning.faces.transforms import tta_views
from fer_lightning.labels import EMOTIONS


@dataclass
class Predictions:
    """Softmax outputs over a split: ``probs`` (N, C), ``probs_tta`` (N, C) or None, ``labels``,
    and the plain ``logits`` (N, C) they came from (None for an ensemble's average)."""

    probs: Tensor
    labels: Tensor
    probs_tta: Tensor | None = None
    logits: Tensor | None = None


def tta_probabilities(forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Mean softmax of ``forward`` over the 10 test-time augmentation views of ``x``: (N, C)."""
    views = tta_views(x)  # (V, N, 3, S, S)
    return torch.stack([torch.softmax(forward(view).float(), dim=1) for view in views]).mean(0)


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


def metrics(
    predictions: Predictions, prefix: str = "test/", labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy (micro, as papers report it), macro F1, per-class recall, confusion matrix;
    ``recall`` by class name when ``labels`` (default: the 7 emotions) fit the outputs."""
    num_classes = predictions.probs.shape[1]
    probs, targets = predictions.probs, predictions.labels
    names = tuple(labels) if labels is not None else EMOTIONS
    result: dict[str, Any] = {
        f"{prefix}acc": float(multiclass_accuracy(probs, targets, num_classes, average="micro")),
        f"{prefix}f1_macro": float(
            multiclass_f1_score(probs, targets, num_classes, average="macro")
        ),
        f"{prefix}recall_per_class": [
            float(r) for r in multiclass_recall(probs, targets, num_classes, average=None)
        ],
        f"{prefix}confusion_matrix": multiclass_confusion_matrix(probs, targets, num_classes)
        .long()
        .tolist(),
        f"{prefix}samples": int(targets.numel()),
    }
    if predictions.probs_tta is not None:
        tta = predictions.probs_tta
        result[f"{prefix}acc_tta"] = float(
            multiclass_accuracy(tta, targets, num_classes, average="micro")
        )
        result[f"{prefix}f1_macro_tta"] = float(
            multiclass_f1_score(tta, targets, num_classes, average="macro")
        )
        result[f"{prefix}recall_per_class_tta"] = [
            float(r) for r in multiclass_recall(tta, targets, num_classes, average=None)
        ]
    if num_classes == len(names):
        result[f"{prefix}recall"] = dict(
            zip(names, result[f"{prefix}recall_per_class"], strict=True)
        )
    return result
