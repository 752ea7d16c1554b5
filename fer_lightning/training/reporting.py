"""Run reports: results.json, the confusion-matrix, per-class, reliability and curve figures,
the summary.

Every figure is drawn from results.json alone (``test/confusion_matrix``, the per-class recall
plain and with TTA, ``history``, ``calibration``), so a report can be drawn again from a
finished run.
"""

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
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fer_lightning.labels import EMOTIONS

PLAIN_COLOUR, TTA_COLOUR = "tab:blue", "tab:orange"
TRAIN_COLOUR, VAL_COLOUR, LR_COLOUR = "tab:blue", "tab:orange", "tab:green"
# A learning rate that varies by more than this factor is drawn on a log scale.
LOG_SCALE_RANGE = 20.0
MAX_EPOCH_TICKS = 15


def class_names(results: dict[str, Any], num_classes: int) -> list[str]:
    """The class names of a results dict (``test/recall`` keys), else the 7 emotions when the
    count fits, else ``class 0``, ``class 1``, ..."""
    named = results.get("test/recall")
    if isinstance(named, dict) and len(named) == num_classes:
        return list(named)
    if num_classes == len(EMOTIONS):
        return list(EMOTIONS)
    return [f"class {i}" for i in range(num_classes)]


def split_name(results: dict[str, Any]) -> str:
    return str(results.get("test/split") or "test split")


def confusion_matrix_figure(
    confusion: Sequence[Sequence[int]], labels: Sequence[str] = EMOTIONS, title: str = ""
) -> Figure:
    """Row-normalised confusion matrix (true label per row) with the counts written in."""
    counts = np.asarray(confusion, dtype=np.int64)
    if len(labels) != counts.shape[0]:
        labels = [f"class {i}" for i in range(counts.shape[0])]
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    fig, ax = plt.subplots(figsize=(7, 6.2), layout="constrained")
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(
        range(len(labels)), [f"{n} ({t})" for n, t in zip(labels, totals[:, 0], strict=True)]
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (faces)")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j] == 0:
                continue  # empty cells stay empty, so the mistakes stand out
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


def confusion_title(results: dict[str, Any]) -> str:
    """``Confusion matrix, synthetic test split, plain (no TTA)`` and the accuracy below it."""
    samples = results.get("test/samples")
    faces = f", {samples} faces" if isinstance(samples, int) else ""
    return (
        f"Confusion matrix, {split_name(results)}, plain (no TTA)\n"
        f"accuracy {_pct(results.get('test/acc'))}{faces}"
    )


def per_class_figure(
    recall: Sequence[float],
    labels: Sequence[str] = EMOTIONS,
    recall_tta: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
    title: str = "",
) -> Figure:
    """Per-class recall (the accuracy on each true class), plain and with TTA side by side;
    ``counts`` (faces per true class) go under the class names."""
    if len(labels) != len(recall):
        labels = [f"class {i}" for i in range(len(recall))]
    positions = np.arange(len(recall))
    width = 0.4 if recall_tta is not None else 0.6
    fig, ax = plt.subplots(figsize=(8, 4.4), layout="constrained")
    series = [("plain", recall, PLAIN_COLOUR)]
    if recall_tta is not None:
        series.append(("10-view TTA", recall_tta, TTA_COLOUR))
    for k, (name, values, colour) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        bars = ax.bar(positions + offset, values, width, label=name, color=colour)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    tick_labels = list(labels)
    if counts is not None:
        tick_labels = [f"{name}\n{n} faces" for name, n in zip(labels, counts, strict=True)]
    ax.set_xticks(positions, tick_labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("recall (share of the class found)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Per-class recall (test)")
    fig.legend(loc="outside upper right", ncols=len(series), fontsize=8, frameon=False)
    return fig


def per_class_title(results: dict[str, Any]) -> str:
    tta = results.get("test/acc_tta")
    accuracy = f"accuracy {_pct(results.get('test/acc'))} plain"
    if isinstance(tta, float):
        accuracy += f", {_pct(tta)} with TTA"
    return f"Per-class recall, {split_name(results)} ({accuracy})"


def curves_figure(history: Sequence[dict[str, float]]) -> Figure:
    """Loss, accuracy and learning rate per epoch (epochs counted from 0, as in the checkpoint
    names); the best validation epoch is marked. One epoch gives single labelled points."""
    epochs = [int(row["epoch"]) for row in history]
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    for ax, metric, name in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy")):
        for split, colour in (("train", TRAIN_COLOUR), ("val", VAL_COLOUR)):
            values = [row.get(f"{split}/{metric}", math.nan) for row in history]
            if all(math.isnan(v) for v in values):
                continue
            label = "training" if split == "train" else "validation"
            ax.plot(epochs, values, marker="o", color=colour, label=label)
            if len(epochs) == 1:
                _label_points(ax, epochs, values, colour)
        ax.set_ylabel(name)
        ax.set_title(name)
    acc_ax.set_ylim(0, 1.05)
    best = best_epoch(history)
    if best is not None:
        epoch, value = best
        acc_ax.axvline(epoch, color="grey", linestyle=":", linewidth=1)
        acc_ax.plot(
            [epoch],
            [value],
            marker="*",
            markersize=13,
            color=VAL_COLOUR,
            linestyle="none",
            label=f"best validation {value:.3f} (epoch {epoch})",
        )
    rates = [row.get("lr", math.nan) for row in history]
    if any(math.isfinite(r) and r > 0 for r in rates):
        lr_ax.plot(epochs, rates, marker="o", color=LR_COLOUR, label="learning rate")
        finite = [r for r in rates if math.isfinite(r) and r > 0]
        if max(finite) / min(finite) > LOG_SCALE_RANGE:
            lr_ax.set_yscale("log")
        else:
            lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if len(epochs) == 1:
            _label_points(lr_ax, epochs, rates, LR_COLOUR, fmt="{:.2e}")
    else:
        lr_ax.text(0.5, 0.5, "no learning rate recorded", ha="center", transform=lr_ax.transAxes)
    lr_ax.set_title("learning rate")
    for ax in (loss_ax, acc_ax, lr_ax):
        _epoch_axis(ax, epochs)
    handles, labels = [], []
    for ax in (loss_ax, acc_ax, lr_ax):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    # Above the panels, where it cannot hide a point.
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)
    return fig


def _epoch_axis(ax: Axes, epochs: Sequence[int]) -> None:
    ax.set_xlabel("epoch")
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    # One tick per epoch while they fit; whole numbers only, also for a one-epoch run.
    if 0 < len(epochs) <= MAX_EPOCH_TICKS:
        ax.set_xticks(sorted(set(epochs)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _label_points(
    ax: Axes, xs: Sequence[int], ys: Sequence[float], colour: str, fmt: str = "{:.3f}"
) -> None:
    for x, y in zip(xs, ys, strict=True):
        if math.isfinite(y):
            ax.annotate(
                fmt.format(y),
                (x, y),
                textcoords="offset points",
                xytext=(8, 0),
                va="center",
                color=colour,
                fontsize=8,
            )


def reliability_figure(results: dict[str, Any]) -> Figure | None:
    """Reliability diagram of the test split from results.json's ``calibration``: per
    confidence bin, the accuracy (bars) against the mean confidence (the diagonal is perfect
    calibration), with each bin's face count; the network's own probabilities beside those
    divided by the fitted temperature. ``None`` without the bins."""
    record = results.get("calibration")
    reliability = record.get("reliability") if isinstance(record, dict) else None
    if not isinstance(reliability, dict) or "before" not in reliability:
        return None
    panels = [("before: the network's softmax", reliability["before"], "")]
    temperature = record.get("temperature")
    if "after" in reliability and temperature is not None:
        panels.append(
            (f"after: softmax(logits / {temperature:.3g})", reliability["after"], "_calibrated")
        )
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.8), layout="constrained", squeeze=False
    )
    for ax, (name, bins, suffix) in zip(axes[0], panels, strict=True):
        edges = np.asarray(bins["edges"], dtype=float)
        width = edges[1:] - edges[:-1]
        counts = bins["count"]
        accuracy = [a if a is not None else 0.0 for a in bins["accuracy"]]
        confidence = [c if c is not None else 0.0 for c in bins["confidence"]]
        ax.bar(
            edges[:-1],
            accuracy,
            width,
            align="edge",
            color=PLAIN_COLOUR,
            edgecolor="white",
            label="accuracy",
        )
        low = [
            min(a, c) if n else 0.0 for a, c, n in zip(accuracy, confidence, counts, strict=True)
        ]
        gaps = [
            abs(c - a) if n else 0.0 for a, c, n in zip(accuracy, confidence, counts, strict=True)
        ]
        ax.bar(
            edges[:-1],
            gaps,
            width,
            bottom=low,
            align="edge",
            color="none",
            edgecolor="tab:red",
            hatch="////",
            linewidth=0.8,
            label="gap to the mean confidence",
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        for left, w, n in zip(edges[:-1], width, counts, strict=True):
            if n:
                ax.text(left + w / 2, 1.03, str(n), ha="center", va="bottom", fontsize=6)
        ax.text(0.0, 1.1, "faces per bin:", fontsize=6, va="bottom")
        ece = results.get(f"test/ece{suffix}")
        nll = results.get(f"test/nll{suffix}")
        scores = (
            f"\nECE {ece:.4f}, NLL {nll:.4f}"
            if isinstance(ece, float) and isinstance(nll, float)
            else ""
        )
        ax.set_title(f"{name}{scores}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.2)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_xlabel("confidence (probability of the predicted class)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    if temperature is None:
        reason = record.get("reason") or "not fitted"
        # The reason in full is results.json's calibration.reason.
        short = reason.split(":")[0][:60]
        axes[0][0].set_title(f"{axes[0][0].get_title()}\nno temperature ({short})", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    samples = results.get("test/samples")
    faces = f", {samples} faces" if isinstance(samples, int) else ""
    fig.suptitle(f"Reliability, {split_name(results)}{faces}", fontsize=10)
    return fig


def best_epoch(history: Sequence[dict[str, float]]) -> tuple[int, float] | None:
    """(epoch, validation accuracy) of the best epoch: the checkpoint kept as best.ckpt."""
    scored = [(row["val/acc"], int(row["epoch"])) for row in history if "val/acc" in row]
    if not scored:
        return None
    # The first epoch that reached the best accuracy: the one ModelCheckpoint kept.
    best = max(value for value, _ in scored)
    epoch = min(epoch for value, epoch in scored if value == best)
    return epoch, best


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
    confusion = results.get("test/confusion_matrix")
    if confusion:
        labels = class_names(results, len(confusion))
        written.append(
            save_figure(
                confusion_matrix_figure(confusion, labels, confusion_title(results)),
                run_dir / "confusion_matrix.png",
            )
        )
    if "test/recall_per_class" in results:
        recall = results["test/recall_per_class"]
        counts = [int(sum(row)) for row in confusion] if confusion else None
        figure = per_class_figure(
            recall,
            class_names(results, len(recall)),
            recall_tta=results.get("test/recall_per_class_tta"),
            counts=counts,
            title=per_class_title(results),
        )
        written.append(save_figure(figure, run_dir / "per_class.png"))
    reliability = reliability_figure(results)
    if reliability is not None:
        written.append(save_figure(reliability, run_dir / "reliability.png"))
    if history:
        written.append(save_figure(curves_figure(history), run_dir / "curves.png"))
    return written


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, float) else "n/a"


def _training_data(record: Any) -> str:
    if not isinstance(record, dict):
        return "n/a"
    return f"{record.get('dataset')}" + (" (synthetic faces)" if record.get("synthetic") else "")


def format_calibration(results: dict[str, Any], prefix: str = "test/") -> list[str]:
    """Summary lines: the temperature (or why none) and ECE / NLL / Brier before and after."""
    record = results.get("calibration")
    if not isinstance(record, dict):
        return []
    if record.get("temperature") is not None:
        head = (
            f"temperature               : {record['temperature']:.4f} (fitted on "
            f"{record.get('fitted_on')} {record.get('split')} faces"
            + (f"; {record['source']})" if record.get("source") else ")")
        )
    else:
        head = f"temperature               : none ({record.get('reason') or 'not fitted'})"
    lines = [head]
    for name, label in (("ece", "ECE (15 bins)"), ("nll", "NLL"), ("brier", "Brier")):
        before = results.get(f"{prefix}{name}")
        if not isinstance(before, float):
            continue
        after = results.get(f"{prefix}{name}_calibrated")
        text = f"{before:.4f}" + (f" -> {after:.4f}" if isinstance(after, float) else "")
        lines.append(f"test {label:<21}: {text}")
    return lines


def format_summary(results: dict[str, Any], files: Sequence[Path]) -> str:
    """The closing lines of a run (logged, so also in train.log): the accuracies and where the
    files are."""
    samples = results.get("test/samples", "n/a")
    lines = [
        f"== {results.get('model', '?')} (seed {results.get('seed', '?')}): "
        f"{results.get('status', '?')} ==",
        f"best validation accuracy  : {_pct(results.get('val/acc_best'))}",
        f"test accuracy             : {_pct(results.get('test/acc'))}",
        f"test accuracy, 10-view TTA: {_pct(results.get('test/acc_tta'))}",
        f"test macro F1             : {_pct(results.get('test/f1_macro'))}",
        f"test split                : {split_name(results)}, {samples} faces",
        f"epochs trained            : {results.get('epochs_trained', 'n/a')}",
        f"best checkpoint           : {results.get('best_checkpoint') or 'n/a'}"
        + (f" (epoch {results['best_epoch']})" if "best_epoch" in results else ""),
        f"trained on                : {_training_data(results.get('training_data'))}",
    ]
    lines += format_calibration(results)
    if results.get("warning"):
        lines.append(f"warning                   : {results['warning']}")
    lines += [f"written                   : {path}" for path in files]
    return "\n".join(lines)
