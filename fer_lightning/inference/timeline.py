"""A video's emotions over time: one PNG per video, beside its annotated copy.

Top: each emotion's probability per processed frame (the mean over the frame's faces), against
the frame's time. Bottom: the share of faces given each emotion over the whole video. Frames
without a face leave gaps in the lines.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lightning.inference.tables import emotion_shares


def emotion_timeline_figure(table: pd.DataFrame, labels: Sequence[str], title: str) -> Figure:
    """The figure for one video's rows of a predictions table (``frame``, ``time_s`` and one
    probability column per label)."""
    fig, (line_ax, share_ax) = plt.subplots(
        2, 1, figsize=(10, 6), height_ratios=(3, 1.3), layout="constrained"
    )
    colours = plt.get_cmap("tab10")
    if table.empty:
        line_ax.text(0.5, 0.5, "no face found", ha="center", transform=line_ax.transAxes)
    else:
        per_frame = table.groupby("frame", sort=True)[list(labels)].mean()
        times = table.groupby("frame", sort=True)["time_s"].first()
        use_time = times.notna().all()
        x = times.to_numpy(dtype=float) if use_time else per_frame.index.to_numpy(dtype=float)
        gap = _gap_threshold(x)
        for i, name in enumerate(labels):
            y = per_frame[name].to_numpy(dtype=float)
            xs, ys = _with_gaps(x, y, gap)
            line_ax.plot(xs, ys, color=colours(i % 10), label=name, linewidth=1.5)
            if len(x) == 1:
                line_ax.plot(x, y, "o", color=colours(i % 10))
        line_ax.set_xlabel("time (s)" if use_time else "frame")
    line_ax.set_ylim(0, 1.02)
    line_ax.set_ylabel("probability (mean over faces)")
    line_ax.grid(alpha=0.3)
    # A file name that is not valid UTF-8 is shown with escapes (matplotlib refuses it).
    line_ax.set_title(title.encode("utf-8", "backslashreplace").decode("utf-8"))
    # Beside the panels, where it cannot hide a line.
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    shares = emotion_shares(table, labels)
    bars = share_ax.bar(
        list(labels),
        [shares[n] for n in labels],
        color=[colours(i % 10) for i in range(len(labels))],
    )
    share_ax.bar_label(
        bars, labels=[f"{100 * shares[n]:.0f}%" if shares[n] else "" for n in labels], fontsize=8
    )
    share_ax.set_ylim(0, 1.15)
    share_ax.set_ylabel("share of faces")
    share_ax.tick_params(axis="x", labelsize=8)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (written to disk by the caller); the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _gap_threshold(x: np.ndarray) -> float:
    """Consecutive points further apart than this are not joined (frames without faces)."""
    if len(x) < 2:
        return np.inf
    return 1.5 * float(np.median(np.diff(x)))


def _with_gaps(x: np.ndarray, y: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` with a NaN inserted wherever consecutive ``x`` differ by more than ``gap``."""
    if len(x) < 2:
        return x, y
    breaks = np.flatnonzero(np.diff(x) > gap) + 1
    return np.insert(x, breaks, np.nan), np.insert(y, breaks, np.nan)
