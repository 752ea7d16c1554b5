"""What every benchmark records beside its figures: the CPU model, whether it runs bf16 natively,
the load average, the command line and this CPU's dense matrix-product peak measured in the same
run; and the ``--json`` file that holds them with the figures (the reference, each setting, its
ratio to the reference and, where the setting gives its model FLOPs, the TFLOP/s it achieved and
its share of the matching peak), so that runs can be compared.

The peak is the best of a few ``torch.mm`` products of two ``--peak-size`` squares (4096: large
enough that the product runs at the matrix kernel's full rate) with the benchmark's threads: fp32
always, bf16 where the CPU runs it natively (AMX or AVX512-BF16). A setting's share is its model
FLOPs per second (:func:`model_flops_per_image` x images/s) over the peak of its precision: bf16
settings against the bf16 peak, fp32 ones against the fp32 peak, int8 ones (no int8 peak is
measured) against the fp32 peak, said so beside the figure.

Imported by the scripts beside it (``python benchmarks/<script>.py`` puts this folder on the path).
"""

from __future__ import annotations

import argparse
import json
import math
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

PEAK_SIZE = 4096
PEAK_REPEATS = 3  # timed products per precision, the best counts
PEAK_BUDGET_S = 2.0  # per precision: no product starts after this (at least 1 is timed)
INT8_NOTE = "int8: no int8 peak measured, share of the fp32 peak"
# A setting's precision (the recogniser's or Lightning's name) -> the peak it is measured against.
PEAK_OF_PRECISION = {
    "fp32": "fp32",
    "32": "fp32",
    "32-true": "fp32",
    "int8": "fp32",
    "bf16": "bf16",
    "bf16-mixed": "bf16",
    "bf16-true": "bf16",
}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def matmul_tflops(
    dtype: torch.dtype,
    size: int = PEAK_SIZE,
    repeats: int = PEAK_REPEATS,
    budget_s: float = PEAK_BUDGET_S,
) -> tuple[float, int]:
    """(best TFLOP/s, products timed) of ``torch.mm`` of two (size, size) ``dtype`` matrices,
    2 x size^3 FLOPs each; up to ``repeats`` timed products, none started after ``budget_s``.
    The warm-up is a small product (oneDNN's kernels and threads) and the output's pages
    touched beforehand: a full-size untimed product would double the time on a slow CPU."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    out = torch.zeros(size, size, dtype=dtype)
    warm = min(size, 512)
    torch.mm(a[:warm, :warm], b[:warm, :warm])
    best, timed, started = math.inf, 0, time.perf_counter()
    while timed < repeats and (timed == 0 or time.perf_counter() - started < budget_s):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
        timed += 1
    return 2 * size**3 / best / 1e12, timed


def measure_peaks(size: int = PEAK_SIZE, bf16_native: bool | None = None) -> dict[str, Any]:
    """This CPU's dense matrix-product peak now: ``{"tflops": {"fp32": .., "bf16": .. or None},
    "size", "threads", "timed_products", "seconds", "note"}`` (bf16 only where native)."""
    bf16_native = cpu_has_native_bf16() if bf16_native is None else bf16_native
    started = time.perf_counter()
    tflops: dict[str, float | None] = {"fp32": None, "bf16": None}
    timed: dict[str, int] = {}
    with torch.inference_mode():
        tflops["fp32"], timed["fp32"] = matmul_tflops(torch.float32, size)
        if bf16_native:
            tflops["bf16"], timed["bf16"] = matmul_tflops(torch.bfloat16, size)
    return {
        "tflops": tflops,
        "size": size,
        "threads": torch.get_num_threads(),
        "timed_products": timed,
        "seconds": round(time.perf_counter() - started, 2),
        "note": None if bf16_native else f"bf16 peak not measured: {EMULATED_BF16}",
    }


def model_flops_per_image(arch: str, input_size: int, training: bool = False) -> float:
    """Model FLOPs of one image through ``arch`` at ``input_size`` (2 per multiply-add, counted
    by :func:`fer_lightning.models.zoo.describe`): the forward pass, or 3x it for a training step
    (the backward pass computes two products for each of the forward's)."""
    from fer_lightning.models.zoo import describe

    forward = float(describe(arch, input_size)["gflops"]) * 1e9
    return 3 * forward if training else forward


def add_options(parser: argparse.ArgumentParser, bf16: bool = True) -> None:
    """``--json PATH``, ``--peak-size N`` and, for benchmarks with bf16 settings,
    ``--include-emulated-bf16``."""
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write the figures, the machine and the command line to this JSON file",
    )
    parser.add_argument(
        "--peak-size",
        type=int,
        default=PEAK_SIZE,
        metavar="N",
        help=f"side of the squares whose torch.mm gives the CPU's peak (default {PEAK_SIZE})",
    )
    if bf16:
        parser.add_argument(
            "--include-emulated-bf16",
            action="store_true",
            help="run the bf16 settings even where bf16 is emulated (they are skipped there)",
        )


class Run:
    """One benchmark run: prints the machine at the start, gathers settings, writes JSON."""

    def __init__(
        self,
        benchmark: str,
        unit: str,
        include_emulated_bf16: bool = False,
        peak_size: int = PEAK_SIZE,
        measure_peak: bool = True,
    ) -> None:
        """``measure_peak=False``: a benchmark of memory or of detection, whose figures a
        matrix product's allocations would disturb and no model FLOPs share; the JSON says so."""
        if peak_size < 1:
            raise SystemExit(f"--peak-size must be a positive matrix side, got {peak_size}.")
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
        if measure_peak:
            self.peak = measure_peaks(peak_size, self.bf16_native)
            print(self.peak_line(), flush=True)
        else:
            self.peak = {
                "tflops": {"fp32": None, "bf16": None},
                "note": "peak not measured: this benchmark has no model FLOPs to share",
            }
        self.peak_tflops: dict[str, float | None] = self.peak["tflops"]

    def peak_line(self) -> str:
        """The measured peak, as printed at the start."""
        peak = self.peak
        figures = ", ".join(
            f"{name} {value:.3f} TFLOP/s" for name, value in peak["tflops"].items() if value
        )
        timed = max(peak["timed_products"].values())
        line = (
            f"dense matmul peak (torch.mm {peak['size']}x{peak['size']}, {peak['threads']} "
            f"thread{'s' * (peak['threads'] != 1)}, best of {timed}): {figures}"
        )
        return f"{line}; {peak['note']}" if peak["note"] else line

    def utilisation(
        self,
        value: float,
        flops_per_item: float | None = None,
        precision: str | None = None,
        flops_per_second: float | None = None,
    ) -> dict[str, Any]:
        """Model TFLOP/s (``value`` items/s x ``flops_per_item``, or ``flops_per_second``) and
        its share of the peak of ``precision``; {} when no FLOPs are given."""
        if flops_per_second is None:
            if flops_per_item is None:
                return {}
            flops_per_second = value * flops_per_item
        if precision not in PEAK_OF_PRECISION:
            raise ValueError(
                f"precision {precision!r}: give one of {', '.join(PEAK_OF_PRECISION)} with the "
                "FLOPs, so the share is of the matching peak."
            )
        peak_name = PEAK_OF_PRECISION[precision]
        peak = self.peak_tflops[peak_name]
        tflops = flops_per_second / 1e12
        figures: dict[str, Any] = {
            "precision": precision,
            "model_tflops": tflops,
            "peak": peak_name,
            "peak_share": tflops / peak if peak else None,
        }
        if flops_per_item is not None:
            figures["flops_per_item"] = flops_per_item
        if precision == "int8":
            figures["peak_note"] = INT8_NOTE
        elif peak is None:
            figures["peak_note"] = f"no {peak_name} peak measured: {EMULATED_BF16}"
        return figures

    @staticmethod
    def share_text(entry: dict[str, Any]) -> str:
        """``"0.091 TFLOP/s, 58.1% of the bf16 peak"`` for a setting with FLOPs, else ``""``."""
        if "model_tflops" not in entry:
            return ""
        text = f"{entry['model_tflops']:.3g} TFLOP/s"
        if entry["peak_share"] is not None:
            text += f", {100 * entry['peak_share']:.1f}% of the {entry['peak']} peak"
        note = entry.get("peak_note")
        return f"{text} ({note})" if note else text

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

    def set_reference(
        self,
        name: str,
        value: float,
        *,
        flops_per_item: float | None = None,
        precision: str | None = None,
        flops_per_second: float | None = None,
        **notes: Any,
    ) -> None:
        """The reference setting; FLOPs as for :meth:`add`."""
        shares = self.utilisation(value, flops_per_item, precision, flops_per_second)
        self.reference = {"name": name, "value": value, **notes, **shares}

    def add(
        self,
        name: str,
        value: float,
        *,
        flops_per_item: float | None = None,
        precision: str | None = None,
        flops_per_second: float | None = None,
        **notes: Any,
    ) -> dict[str, Any]:
        """A setting (returned as recorded); its ratio is to the reference (set that first).

        ``value`` items/s x ``flops_per_item`` model FLOPs (or ``flops_per_second`` where the
        value is not a rate) give the setting's TFLOP/s and its share of the ``precision``'s
        peak (``fp32``/``32-true``, ``bf16``/``bf16-mixed``, ``int8``: see PEAK_OF_PRECISION).
        """
        ratio = value / self.reference["value"] if self.reference else None
        shares = self.utilisation(value, flops_per_item, precision, flops_per_second)
        self.settings.append({"name": name, "value": value, "ratio": ratio, **notes, **shares})
        return self.settings[-1]

    def write_json(self, path: Path | None, **extra: Any) -> None:
        """Write everything to ``path`` (if given), with the load average at the end."""
        if path is None:
            return
        record = {
            **self.info,
            "load_average_end": list(os.getloadavg()),
            "unit": self.unit,
            "peak_tflops": self.peak_tflops,
            "peak_matmul": {k: v for k, v in self.peak.items() if k != "tflops"},
            "reference": self.reference,
            "settings": self.settings,
            "skipped": self.skipped,
            **extra,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")
