"""Hydra callback that summarises a multirun: summary.csv and summary.md in the sweep folder.

Besides one row per job, jobs that differ only in ``data.fold`` or ``seed`` (repetitions of one
setting: the folds of a cross-validation, or seeds) are grouped, and each group with two or more
completed jobs gets a ``mean`` and a ``std`` row (sample standard deviation, ddof 1) for every
metric. Failed jobs are left out of both and counted in the row's status.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

METRICS = ("val/acc_best", "test/acc", "test/acc_tta")
COLUMNS = ("job", "overrides", "status", *METRICS, "best_checkpoint", "error")
# Overrides that repeat one setting rather than change it: their jobs are averaged together.
REPETITION_KEYS = ("data.fold", "seed")


def override_list(job_dir: Path) -> list[str]:
    """The job's command-line overrides, from Hydra's ``.hydra/overrides.yaml``."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]


def job_overrides(job_dir: Path) -> str:
    """The job's command-line overrides as one line."""
    return " ".join(override_list(job_dir))


def setting_of(overrides: str) -> str:
    """``overrides`` without the repetition keys (``data.fold=...``, ``seed=...``)."""
    kept = [
        item
        for item in overrides.split()
        if item.split("=", 1)[0].lstrip("+~") not in REPETITION_KEYS
    ]
    return " ".join(kept)


def summarise(sweep_dir: Path) -> pd.DataFrame:
    """One row per job folder of ``sweep_dir`` (a job without results.json did not finish)."""
    rows: list[dict[str, Any]] = []
    job_dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    for job_dir in sorted(job_dirs, key=lambda p: (len(p.name), p.name)):
        results_path = job_dir / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        rows.append(
            {
                "job": job_dir.name,
                "overrides": job_overrides(job_dir),
                "status": results.get("status", "failed (no results.json)"),
                **{key: results.get(key) for key in COLUMNS[3:]},
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def repetition_statistics(table: pd.DataFrame) -> pd.DataFrame:
    """``mean`` and ``std`` rows of each metric over the completed jobs of every group of jobs
    that differ only in ``data.fold`` or ``seed``; groups with fewer than two completed jobs get
    none. ``overrides`` holds the group's shared overrides, ``status`` how many jobs went in."""
    rows: list[dict[str, Any]] = []
    settings = table["overrides"].fillna("").map(setting_of)
    for setting in dict.fromkeys(settings):  # first-seen order
        group = table[settings == setting]
        done = group[group["status"] == "completed"]
        if len(done) < 2:
            continue
        failed = len(group) - len(done)
        note = f" ({failed} failed, left out)" if failed else ""
        for statistic in ("mean", "std"):
            row: dict[str, Any] = {
                "job": statistic,
                "overrides": setting,
                "status": f"{statistic} of {len(done)} jobs{note}",
            }
            for metric in METRICS:
                values = pd.to_numeric(done[metric], errors="coerce").dropna()
                if len(values) == 0 or (statistic == "std" and len(values) < 2):
                    row[metric] = math.nan
                else:
                    row[metric] = float(
                        values.mean() if statistic == "mean" else values.std(ddof=1)
                    )
            rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_summary(sweep_dir: Path) -> tuple[Path, Path]:
    table = summarise(sweep_dir)
    statistics = repetition_statistics(table)
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    combined = pd.concat([table, statistics], ignore_index=True) if len(statistics) else table
    combined.to_csv(csv_path, index=False)
    lines = _markdown_table(table.drop(columns=["error"]))
    failed = table[table["status"] != "completed"]
    lines += ["", *(f"- job {r.job} failed: {r.error}" for r in failed.itertuples(index=False))]
    if len(statistics):
        lines += ["", "## Mean and standard deviation over folds and seeds", ""]
        lines += _statistics_lines(statistics)
    md_path.write_text(f"# Sweep {sweep_dir}\n\n" + "\n".join(lines) + "\n")
    return csv_path, md_path


def _markdown_table(table: pd.DataFrame) -> list[str]:
    shown = table.astype(object).where(table.notna(), "")
    for column in METRICS:
        shown[column] = [f"{v:.4f}" if isinstance(v, float) else v for v in shown[column]]
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += [
        "| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)
    ]
    return lines


def _statistics_lines(statistics: pd.DataFrame) -> list[str]:
    """One table row per group: ``mean ± std`` of each metric."""
    lines = [
        "| overrides | jobs | " + " | ".join(METRICS) + " |",
        "|" + "---|" * (2 + len(METRICS)),
    ]
    means = statistics[statistics["job"] == "mean"].to_dict("records")
    stds = statistics[statistics["job"] == "std"].to_dict("records")
    for mean, std in zip(means, stds, strict=True):
        cells = [
            "" if math.isnan(mean[metric]) else f"{mean[metric]:.4f} ± {std[metric]:.4f}"
            for metric in METRICS
        ]
        jobs = str(mean["status"]).removeprefix("mean of ")
        lines.append(f"| {mean['overrides'] or '(all)'} | {jobs} | " + " | ".join(cells) + " |")
    return lines


class SweepSummary(Callback):
    """Writes the sweep's summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        csv_path, md_path = write_summary(sweep_dir)
        log.info("Sweep summary: %s and %s", csv_path, md_path)
        print(md_path.read_text())
