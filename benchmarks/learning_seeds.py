"""Does a faster setting learn worse? The same ``fer-train`` command over several seeds per setting.

    python benchmarks/learning_seeds.py [--seeds 0 1 2] [--settings fp32 fp32-no-cpu-convs bf16]
        [--epochs 6] [--size 32] [--arch resmasking_dropout1] [--json seeds.json] [--keep-runs]

Each run is the user's command (the demo data, the network from scratch, no test-time
augmentation), in its own process and run folder::

    python -m fer_lightning.train experiment=demo model=<arch> model.pretrained_backbone=null \\
        data.input_size=<size> trainer.max_epochs=<epochs> tta=false seed=<seed> <setting>

with the settings

- ``fp32``: ``trainer.precision=32-true`` and the CPU convolutions (``model.cpu_convs=true``,
  the default for every fp32 CPU run);
- ``fp32-no-cpu-convs``: ``trainer.precision=32-true model.cpu_convs=false`` (PyTorch's own);
- ``bf16``: ``trainer.precision=bf16-mixed`` (the default where the CPU runs bf16 natively;
  skipped where it is emulated unless named).

It prints and writes, per setting, the final and the best validation accuracy of every seed and
their mean and sample standard deviation, with the wall time of each run. Runs are interleaved
(seed 0 of every setting first), so a cut-short run still compares like with like. The run
folders (gigabytes of checkpoints for the Residual Masking Networks) are removed after their
``results.json`` is read, unless ``--keep-runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from run_info import cpu_model

from fer_lightning.runtime import cpu_has_native_bf16

SETTINGS = {
    "fp32": ["trainer.precision=32-true", "model.cpu_convs=true"],
    "fp32-no-cpu-convs": ["trainer.precision=32-true", "model.cpu_convs=false"],
    "bf16": ["trainer.precision=bf16-mixed"],
}


def train_once(args: argparse.Namespace, setting: str, seed: int, work: Path) -> dict:
    """One ``fer-train`` run; its validation history and wall time."""
    run_dir = work / f"{setting}_seed{seed}"
    command = [
        sys.executable,
        "-m",
        "fer_lightning.train",
        "experiment=demo",
        f"model={args.arch}",
        "model.pretrained_backbone=null",
        f"data.input_size={args.size}",
        f"trainer.max_epochs={args.epochs}",
        "tta=false",
        f"seed={seed}",
        f"paths.data_dir={work / 'data'}",
        f"hydra.run.dir={run_dir}",
        *SETTINGS[setting],
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{setting} seed {seed} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    results = json.loads((run_dir / "results.json").read_text())
    val = [row["val/acc"] for row in results["history"] if "val/acc" in row]
    if not args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "seed": seed,
        "val_acc_final": val[-1],
        "val_acc_best": max(val),
        "val_acc_history": val,
        "epochs_run": len(val),
        "test_acc": results.get("test/acc"),
        "wall_s": round(wall_s, 1),
    }


def summary(runs: list[dict], key: str) -> dict:
    values = [run[key] for run in runs]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--arch", default="resmasking_dropout1")
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--keep-runs", action="store_true", help="keep each run's folder")
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()

    native = cpu_has_native_bf16()
    settings = args.settings or [name for name in SETTINGS if name != "bf16" or native]
    work = args.work or Path(tempfile.mkdtemp(prefix="learning_seeds_"))
    work.mkdir(parents=True, exist_ok=True)
    info = {
        "benchmark": "learning_seeds",
        "command": " ".join(["python", *sys.argv]),
        "cpu": cpu_model(),
        "bf16_native": native,
        "load_average_start": list(os.getloadavg()),
        "arch": args.arch,
        "input_size": args.size,
        "epochs": args.epochs,
        "runs": {name: [] for name in settings},
    }
    print(f"CPU: {info['cpu']}; bf16 {'native' if native else 'emulated'}; work in {work}")
    for seed in args.seeds:
        for name in settings:
            run = train_once(args, name, seed, work)
            info["runs"][name].append(run)
            print(
                f"{name:<18} seed {seed}: val acc final {run['val_acc_final']:.1%}, best "
                f"{run['val_acc_best']:.1%} ({run['epochs_run']} epochs, {run['wall_s']:.0f} s)",
                flush=True,
            )
            if args.json:
                args.json.write_text(json.dumps(info, indent=2))
    info["summary"] = {
        name: {key: summary(runs, key) for key in ("val_acc_final", "val_acc_best")}
        for name, runs in info["runs"].items()
    }
    info["load_average_end"] = list(os.getloadavg())
    print(f"\n{'setting':<18} {'final val acc':>18} {'best val acc':>18}  seeds")
    for name, stats in info["summary"].items():
        final, best = stats["val_acc_final"], stats["val_acc_best"]
        print(
            f"{name:<18} {final['mean']:>10.1%} ± {final['std']:.1%} "
            f"{best['mean']:>10.1%} ± {best['std']:.1%}  {final['n']}"
        )
    if args.json:
        args.json.write_text(json.dumps(info, indent=2))
        print(f"wrote {args.json}")
    if not args.work and not args.keep_runs:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
