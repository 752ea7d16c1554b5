"""What every benchmark records beside its figures: the CPU model, whether it runs bf16 natively,
the load average and the command line; and the ``--json`` file that holds them with the figures
(the reference, each setting and its ratio to the reference), so that runs can be compared.

Imported by the scripts beside it (``python benchmarks/<script>.py`` puts this folder on the path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fer_lightning.runtime import cpu_has_native_bf16

EMULATED_BF16 = "bf16 is emulated on this CPU (no AMX or AVX512-BF16): slower than fp32"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def add_options(parser: argparse.ArgumentParser, bf16: bool = True) -> None:
    """``--json PATH`` and, for benchmarks with bf16 settings, ``--include-emulated-bf16``."""
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write the figures, the machine and the command line to this JSON file",
    )
    if bf16:
        parser.add_argument(
            "--include-emulated-bf16",
            action="store_true",
            help="run the bf16 settings even where bf16 is emulated (they are skipped there)",
        )


class Run:
    """One benchmark run: prints the machine at the start, gathers settings, writes JSON."""

    def __init__(self, benchmark: str, unit: str, include_emulated_bf16: bool = False) -> None:
        self.benchmark, self.unit = benchmark, unit
        self.bf16_native = cpu_has_native_bf16()
        self.run_bf16 = self.bf16_native or include_emulated_bf16
        self.reference: dict[str, Any] | None = None
        self.settings: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.info: dict[str, Any] = {
            "benchmark": benchmark,
            "command": shlex.join(["python", *sys.argv]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu": cpu_model(),
            "bf16_native": self.bf16_native,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average_start": list(os.getloadavg()),
        }
        bf16 = "native" if self.bf16_native else "emulated (no AMX or AVX512-BF16)"
        load = ", ".join(f"{x:.2f}" for x in self.info["load_average_start"])
        print(f"CPU: {self.info['cpu']}; bf16 {bf16}; load average {load}", flush=True)

    def bf16_label(self, name: str) -> str | None:
        """``name`` for a bf16 setting, marked where emulated; None (and noted) if skipped."""
        if self.bf16_native:
            return name
        if self.run_bf16:
            return f"{name} [emulated bf16, not recommended]"
        note = f"{name}: {EMULATED_BF16} (--include-emulated-bf16 runs it)"
        if note not in self.skipped:  # once, however many sizes a script runs
            self.skipped.append(note)
        return None

    def set_reference(self, name: str, value: float, **notes: Any) -> None:
        self.reference = {"name": name, "value": value, **notes}

    def add(self, name: str, value: float, **notes: Any) -> None:
        """A setting; its ratio is to the reference (set that first)."""
        ratio = value / self.reference["value"] if self.reference else None
        self.settings.append({"name": name, "value": value, "ratio": ratio, **notes})

    def write_json(self, path: Path | None, **extra: Any) -> None:
        """Write everything to ``path`` (if given), with the load average at the end."""
        if path is None:
            return
        record = {
            **self.info,
            "load_average_end": list(os.getloadavg()),
            "unit": self.unit,
            "reference": self.reference,
            "settings": self.settings,
            "skipped": self.skipped,
            **extra,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")
