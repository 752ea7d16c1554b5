"""Hydra callback that summarises a multirun: summary.csv and summary.md in the sweep folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

COLUMNS = (
    "job",
    "overrides",
    "status",
    "val/acc_best",
    "test/acc",
    "test/acc_tta",
    "best_checkpoint",
    "error",
)


def job_overrides(job_dir: Path) -> str:
    """The job's command-line overrides, from Hydra's ``.hydra/overrides.yaml``."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    lines = [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]
    return " ".join(lines)


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


def write_summary(sweep_dir: Path) -> tuple[Path, Path]:
    table = summarise(sweep_dir)
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    table.to_csv(csv_path, index=False)
    shown = table.drop(columns=["error"]).fillna("")
    for column in ("val/acc_best", "test/acc", "test/acc_tta"):
        shown[column] = [f"{v:.4f}" if isinstance(v, float) else v for v in shown[column]]
    header = "| " + " | ".join(shown.columns) + " |"
    lines = [header, "|" + "---|" * len(shown.columns)]
    lines += [
        "| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)
    ]
    failed = table[table["status"] != "completed"]
    lines += ["", *(f"- job {r.job} failed: {r.error}" for r in failed.itertuples(index=False))]
    md_path.write_text(f"# Sweep {sweep_dir}\n\n" + "\n".join(lines) + "\n")
    return csv_path, md_path


class SweepSummary(Callback):
    """Writes the sweep's summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        csv_path, md_path = write_summary(sweep_dir)
        log.info("Sweep summary: %s and %s", csv_path, md_path)
        print(md_path.read_text())
