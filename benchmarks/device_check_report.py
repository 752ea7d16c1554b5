"""Gathers the parts of ``benchmarks/device_check.sh`` into its one JSON file.

    python benchmarks/device_check_report.py WORK_DIR OUT_JSON [--dry-run]

``WORK_DIR`` holds ``parts.tsv`` (one line per part: name, status, exit status, seconds,
budget), each part's log (``<part>.log``) and what the parts wrote: ``gpu_tier.xml`` (pytest's
JUnit XML), ``bench_gpu.json``, ``train_speed.json``. The JSON has every part's status and exit
status, its figures, the end of its log when it did not pass, and a ``summary`` that sets the
end-to-end training images/s (fer-train, loader included) beside the network-only figure
(bench_gpu.py, same precision and layout) with both model FLOP utilisations. The exit status is
1 when any part failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# The bench_gpu setting that fer-train's run matches (bf16-mixed, channels-last, no compile).
NETWORK_SETTING = "bf16-mixed + channels-last"
LOG_TAIL_CHARS = 4000
PASSING = ("passed", "skipped")


def read_parts(work: Path) -> dict[str, dict[str, Any]]:
    parts: dict[str, dict[str, Any]] = {}
    table = work / "parts.tsv"
    lines = table.read_text().splitlines() if table.is_file() else []
    for line in lines:
        name, status, exit_status, seconds, budget = line.split("\t")[:5]
        parts[name] = {
            "status": status,
            "exit_status": None if exit_status == "" else int(exit_status),
            "seconds": float(seconds),
            "budget_s": float(budget),
        }
    return parts


def log_tail(work: Path, name: str) -> str:
    log = work / f"{name}.log"
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.is_file() else ""


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gpu_tier_results(work: Path) -> dict[str, Any]:
    """Counts, the failed tests and every skip's reason, from pytest's JUnit XML."""
    path = work / "gpu_tier.xml"
    if not path.is_file():
        return {"tests": None, **tests_in_log(work / "gpu_tier.log")}
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed: list[str] = []
    skipped: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failed.append(name)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            skipped[name] = skip.get("message", "")
        else:
            counts["passed"] += 1
    return {"tests": counts, "failed_tests": failed, "skipped_tests": skipped}


def tests_in_log(log: Path) -> dict[str, Any]:
    """What pytest -v printed before it was stopped (no JUnit XML then): each test's outcome."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    outcomes = dict(re.findall(r"^(tests/gpu/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", text, re.M))
    return {
        "error": "no JUnit XML: pytest did not finish (the outcomes below are from its log)",
        "outcomes_before_stop": outcomes,
    }


def bench_gpu_results(record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None:
        return {"figures": None}
    rows = [record["reference"], *record["settings"]] if record.get("reference") else []
    training = {
        row["name"]: {
            "images_per_s": row["value"],
            "mfu": row.get("mfu"),
            "warmup_s": row.get("warmup_s"),
            "max_memory_gib": row.get("max_memory_gib"),
        }
        for row in rows
    }
    return {
        "figures": {
            "device": record.get("device"),
            "arch": record.get("arch"),
            "size": record.get("size"),
            "batch": record.get("batch"),
            "peak_tflops": record.get("peak_tflops"),
            "training": training,
            "inference": {str(row["batch"]): row["value"] for row in record.get("inference", [])},
            "ddp": record.get("ddp"),
            "skipped": record.get("skipped", []),
            "failed": record.get("failed", []),
        }
    }


def summary(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """End to end (fer-train, loader included) beside network only (bench_gpu)."""
    speed = parts.get("fer_train", {}).get("figures") or {}
    bench = (parts.get("bench_gpu", {}).get("figures") or {}).get("training", {})
    network = bench.get(NETWORK_SETTING) or {}
    end_to_end = speed.get("images_per_s")
    network_value = network.get("images_per_s")
    bench_run = parts.get("bench_gpu", {}).get("figures") or {}
    # Comparable only at the same input size and batch (the dry run's differ).
    same_run = (bench_run.get("size"), bench_run.get("batch")) == (
        speed.get("input_size"),
        speed.get("batch_size"),
    )
    return {
        "end_to_end_images_per_s": end_to_end,
        "end_to_end_mfu": speed.get("mfu"),
        "network_setting": NETWORK_SETTING,
        "network_images_per_s": network_value,
        "network_mfu": network.get("mfu"),
        "end_to_end_over_network": (
            end_to_end / network_value if end_to_end and network_value and same_run else None
        ),
        "batch_wait_share": speed.get("batch_wait_share"),
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as error:  # the report is written whatever is broken
        info["torch_error"] = f"{type(error).__name__}: {error}"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--seconds", type=float, help="the whole check's seconds so far")
    args = parser.parse_args(argv)
    work: Path = args.work
    parts = read_parts(work)
    for name, part in parts.items():
        if name == "gpu_tier":
            part.update(gpu_tier_results(work))
            if part["status"] == "passed" and not (part["tests"] or {}).get("passed"):
                part.update(status="failed", error="no test of the tier ran (no CUDA GPU seen?)")
        elif name == "bench_gpu":
            part.update(bench_gpu_results(read_json(work / "bench_gpu.json")))
        elif name == "fer_train":
            part["figures"] = read_json(work / "train_speed.json")
            if part["figures"] is None and part["status"] == "passed":
                part.update(status="failed", error="fer-train wrote no train_speed.json")
        if part["status"] not in PASSING:
            part["log_tail"] = log_tail(work, name)
    ok = bool(parts) and all(part["status"] in PASSING for part in parts.values())
    record = {
        "check": "device_check",
        "dry_run": args.dry_run,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": args.seconds,
        "ok": ok,
        "machine": machine(),
        "parts": parts,
        "summary": summary(parts),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"ok": ok, "summary": record["summary"]}, indent=2))
    for name, part in parts.items():
        print(f"{name:<10} {part['status']:<8} exit {part['exit_status']} {part['seconds']:.0f} s")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
