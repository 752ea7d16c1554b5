"""A video's emotions over time: one PNG per video, beside its annotated copy.

Tracked videos (rows with a ``track_id``): one row of panels per person, each emotion's smoothed
probability against time, titled with the person's id and share of each (smoothed) emotion; at
most ``MAX_PEOPLE`` people, those seen in the most frames. Untracked: one panel of each
emotion's probability per processed frame (the mean over the frame's faces). Bottom: the share
of faces given each emotion over the whole video. Frames without the face leave gaps in the
lines.
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

from fer_lightning.inference.tables import emotion_shares, shares_line, tracks_table

# People drawn in a tracked video's figure (the ones seen in the most frames).
MAX_PEOPLE = 8


def emotion_timeline_figure(table: pd.DataFrame, labels: Sequence[str], title: str) -> Figure:
    """The figure for one video's rows of a predictions table (``frame``, ``time_s`` and one
    probability column per label; with ``track_id`` and the smoothed columns, one row of
    panels per person)."""
    if "track_id" in table and table["track_id"].notna().any():
        return _people_figure(table, labels, title)
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
    _share_bars(share_ax, table, labels)
    return fig


def _people_figure(table: pd.DataFrame, labels: Sequence[str], title: str) -> Figure:
    """One panel per person (smoothed probabilities over time), then the shares."""
    people = tracks_table(table, labels)
    shown = people.sort_values("frames", ascending=False, kind="stable").head(MAX_PEOPLE)
    shown = shown.sort_values(["first_frame", "track_id"], kind="stable")
    count = len(shown)
    fig, axes = plt.subplots(
        count + 1,
        1,
        figsize=(10, max(6.0, 1.9 * count + 2.2)),
        height_ratios=[2] * count + [1.3],
        layout="constrained",
    )
    colours = plt.get_cmap("tab10")
    times = table["time_s"]
    use_time = times.notna().all()
    x_all = (times if use_time else table["frame"]).to_numpy(dtype=float)
    gap = _gap_threshold(np.unique(x_all))
    for ax, person in zip(axes[:-1], shown.itertuples(index=False), strict=True):
        rows = table[table["track_id"] == person.track_id].sort_values("frame")
        x = (rows["time_s"] if use_time else rows["frame"]).to_numpy(dtype=float)
        for i, name in enumerate(labels):
            y = rows[f"smoothed_{name}"].to_numpy(dtype=float)
            xs, ys = _with_gaps(x, y, gap)
            ax.plot(
                xs, ys, color=colours(i % 10), linewidth=1.5, label=name if ax is axes[0] else None
            )
            if len(x) == 1:
                ax.plot(x, y, "o", color=colours(i % 10))
        shares = {name: getattr(person, f"share_{name}") for name in labels}
        ax.set_title(f"person #{person.track_id}: {shares_line(shares)}", fontsize=9, loc="left")
        ax.set_xlim(float(np.nanmin(x_all)), max(float(np.nanmax(x_all)), 1e-9))
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("smoothed p")
        ax.grid(alpha=0.3)
    axes[-2].set_xlabel("time (s)" if use_time else "frame")
    left_out = len(people) - count
    more = f" ({left_out} more people not shown)" if left_out else ""
    fig.suptitle((title + more).encode("utf-8", "backslashreplace").decode("utf-8"))
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    _share_bars(axes[-1], table, labels)
    return fig


def _share_bars(share_ax: plt.Axes, table: pd.DataFrame, labels: Sequence[str]) -> None:
    colours = plt.get_cmap("tab10")
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
