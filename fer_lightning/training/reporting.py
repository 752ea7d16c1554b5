"""Run reports: results.json, the confusion-matrix, per-class and curve figures, the summary."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from fer_lightning.labels import EMOTIONS


def confusion_matrix_figure(
    confusion: Sequence[Sequence[int]], labels: Sequence[str] = EMOTIONS, title: str = ""
) -> Figure:
    """Row-normalised confusion matrix (true label per row) with the counts written in."""
    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{rates[i, j]:.2f}\n{counts[i, j]}",
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_title(title or "Confusion matrix (test)")
    return fig


def per_class_figure(recall: Sequence[float], labels: Sequence[str] = EMOTIONS) -> Figure:
    """Bar chart of per-class recall (the accuracy on each true class)."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    bars = ax.bar(labels, recall, color="tab:blue")
    ax.bar_label(bars, labels=[f"{r:.2f}" for r in recall], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall")
    ax.set_title("Per-class recall (test)")
    return fig


def curves_figure(history: Sequence[dict[str, float]]) -> Figure:
    """Loss and accuracy per epoch, training and validation."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    epochs = [row["epoch"] for row in history]
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for split in ("train", "val"):
            values = [row.get(f"{split}/{metric}", math.nan) for row in history]
            ax.plot(epochs, values, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    acc_ax.set_ylim(0, 1)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(path: Path, content: dict[str, Any]) -> Path:
    """Write ``content`` as indented JSON, atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def write_run_report(
    run_dir: Path, results: dict[str, Any], history: Sequence[dict[str, float]]
) -> list[Path]:
    """results.json plus the figures a test produced; returns the files written."""
    run_dir.mkdir(parents=True, exist_ok=True)
    written = [write_json(run_dir / "results.json", results)]
    if "test/confusion_matrix" in results:
        written.append(
            save_figure(
                confusion_matrix_figure(results["test/confusion_matrix"]),
                run_dir / "confusion_matrix.png",
            )
        )
    if "test/recall_per_class" in results:
        written.append(
            save_figure(
                per_class_figure(results["test/recall_per_class"]), run_dir / "per_class.png"
            )
        )
    if history:
        written.append(save_figure(curves_figure(history), run_dir / "curves.png"))
    return written


def format_summary(results: dict[str, Any], files: Sequence[Path]) -> str:
    """The console's closing lines: the accuracies and where the files are."""

    def pct(key: str) -> str:
        value = results.get(key)
        return f"{100 * value:.2f}%" if isinstance(value, float) else "n/a"

    lines = [
        "",
        f"== {results.get('model', '?')} (seed {results.get('seed', '?')}) ==",
        f"best validation accuracy : {pct('val/acc_best')}",
        f"test accuracy            : {pct('test/acc')}",
        f"test accuracy, 10-view TTA: {pct('test/acc_tta')}",
        f"test macro F1            : {pct('test/f1_macro')}",
        f"best checkpoint          : {results.get('best_checkpoint') or 'n/a'}",
    ]
    lines += [f"written                  : {path}" for path in files]
    return "\n".join(lines)
