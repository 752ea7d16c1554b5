"""Data benchmark: parse, cache and loader throughput on a fake full-size FER2013 CSV.

    python benchmarks/bench_data.py [--rows 35887] [--loader-samples 1920]
        [--worker-samples 9600] [--batch-size 48] [--target 2400] [--json PATH]

Everything runs in one process on one core (``torch.set_num_threads(1)``, ``num_workers=0``), so
the figures are per core. The loader comparison runs both pipelines in the same run:

- original: per sample, parse the pixel string, resize to 224 with OpenCV, stack 3 channels,
  random flip and rotation at 224x224, convert to a float tensor (the original code's
  ``__getitem__``, with OpenCV in place of imgaug);
- this project: batched fetch at 48x48, the albumentations pipeline at 48x48, then
  ``to_model_input`` (one interpolation to 224 for the batch), here on the CPU.

Per loader worker: what one training DataLoader worker does for ``FERDataModule`` (a batch of
``--batch-size`` 48x48 faces fetched from the memory-mapped cache, the training augmentation
per face; the resize to the input size happens on the device afterwards), in images per
CPU-second of one process, with the augmentation on and off; and the workers a run needs to
feed ``--target`` images/s (default 2,400: an H200 training at 224 at 40% model FLOP
utilisation), ceil(target / the rate with augmentation on). A real DataLoader with one worker
process (the batches cross to the main process in shared memory) checks that figure in
wall-clock images/s, which the machine's load lowers.

No model runs here: the CPU's dense matmul peak (measured at the start, with this benchmark's
one thread) is recorded for the record only.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf
from run_info import PEAK_SIZE, Run, add_options
from torch.utils.data import DataLoader, Dataset

from fer_lightning.cli.config import CONFIG_DIR
from fer_lightning.data.augment import build_augment
from fer_lightning.data.cache import load_table
from fer_lightning.data.csv_reader import read_face_csv
from fer_lightning.data.csv_writer import write_face_csv
from fer_lightning.data.dataset import FaceDataset, collate_batch
from fer_lightning.faces.transforms import to_model_input
from fer_lightning.labels import NUM_CLASSES

FER2013_ROWS = 35887
SPLIT_ROWS = (28709, 3589, 3589)
TARGET_IMAGES_PER_S = 2400  # an H200 training at 224 at 40% model FLOP utilisation
HOST_CORES = 16  # the GPU host's cores


def paper_augment() -> dict:
    """The training augmentation the data configs use (conf/data/common.yaml)."""
    common = OmegaConf.load(CONFIG_DIR / "data" / "common.yaml")
    return OmegaConf.to_container(common.augment)


def make_fake_fer2013(path: Path, rows: int = FER2013_ROWS, seed: int = 0) -> Path:
    """A FER2013-format CSV of random pixels, labels and Usage values (Kaggle proportions)."""
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (rows, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, rows)
    usage = np.repeat(np.arange(3, dtype=np.int8), SPLIT_ROWS)[:rows]
    if usage.size < rows:
        usage = np.concatenate([usage, np.zeros(rows - usage.size, dtype=np.int8)])
    return write_face_csv(path, faces, labels, rng.permutation(usage))


class OriginalStyleDataset(Dataset):
    """The original code's per-sample pipeline on pixel strings: (3, 224, 224) float tensors."""

    def __init__(self, pixels: list[str], labels: np.ndarray, size: int = 224) -> None:
        self.pixels, self.labels, self.size = pixels, labels, size

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = np.asarray(list(map(int, self.pixels[i].split(" ")))).reshape(48, 48)
        image = cv2.resize(image.astype(np.uint8), (self.size, self.size))
        image = np.dstack([image] * 3)
        if np.random.rand() < 0.5:
            image = image[:, ::-1]
        centre = (self.size / 2, self.size / 2)
        matrix = cv2.getRotationMatrix2D(centre, np.random.uniform(-30, 30), 1.0)
        image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (self.size, self.size))
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)
        return tensor, int(self.labels[i])


def _throughput(loader: DataLoader, to_input=None) -> float:
    """Samples per CPU-second of this process over one pass of ``loader`` (after one warm-up
    batch): per core, and robust to other processes sharing the machine."""
    iterator = iter(loader)
    next(iterator)
    count, start = 0, time.process_time()
    for x, _ in iterator:
        if to_input is not None:
            x = to_input(x)
        count += x.shape[0]
    return count / (time.process_time() - start)


def _wall_throughput(loader: DataLoader) -> float:
    """Samples per wall-clock second of one pass of ``loader``, after its first batch (the
    workers' start-up)."""
    iterator = iter(loader)
    next(iterator)
    count, start = 0, time.perf_counter()
    for x, _ in iterator:
        count += x.shape[0]
    return count / (time.perf_counter() - start)


def worker_rates(
    faces: np.ndarray, labels: np.ndarray, samples: int, batch_size: int, target: float
) -> dict[str, float | int | bool]:
    """Images per CPU-second of one training loader worker's work (fetch, augmentation at
    48x48, batch), augmentation on and off; one worker process's wall-clock rate; the workers
    ``target`` images/s need."""
    rows = np.arange(min(samples, len(labels)))
    figures: dict[str, float | int | bool] = {"batch_size": batch_size, "samples": rows.size}
    for name, augment in (("on", build_augment(paper_augment())), ("off", None)):
        dataset = FaceDataset([(faces, rows)], labels[rows], augment)
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=0, collate_fn=collate_batch
        )
        figures[f"augment_{name}_images_per_cpu_s"] = _throughput(loader)
    augmented = FaceDataset([(faces, rows)], labels[rows], build_augment(paper_augment()))
    one_worker = DataLoader(
        augmented, batch_size=batch_size, shuffle=True, num_workers=1, collate_fn=collate_batch
    )
    figures["one_worker_loader_images_per_s_wall"] = _wall_throughput(one_worker)
    figures["target_images_per_s"] = target
    needed = math.ceil(target / figures["augment_on_images_per_cpu_s"])
    figures["workers_needed"] = needed
    figures["fits_a_16_core_host"] = needed <= HOST_CORES
    return figures


class _Timer:
    """Wall-clock and CPU seconds of a block (CPU time is what 'per core' means on a shared
    machine)."""

    def __enter__(self) -> _Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_benchmark(
    rows: int = FER2013_ROWS,
    loader_samples: int = 1920,
    input_size: int = 224,
    json_path: Path | None = None,
    worker_samples: int = 9600,
    batch_size: int = 48,
    target: float = TARGET_IMAGES_PER_S,
    peak_size: int = PEAK_SIZE,
) -> dict[str, float]:
    """Print the table and return the figures (seconds, MB, samples/s, workers needed);
    ``json_path`` also gets them, with the loaders as reference (the original) and settings,
    and the per-worker figures under ``loader_workers``."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    run = Run("bench_data", "samples/CPU-s", peak_size=peak_size)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fer-bench-") as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        csv = make_fake_fer2013(tmp_path / "fer2013.csv", rows)
        results["write fake CSV (s)"] = time.perf_counter() - start
        results["CSV size (MB)"] = csv.stat().st_size / 1e6

        with _Timer() as timer:
            table = read_face_csv(csv)
        results["parse, wall (s)"] = timer.wall
        results["parse, CPU (s)"] = timer.cpu
        nbytes = table.faces.nbytes + table.labels.nbytes + table.usage.nbytes
        results["dataset in memory (MB)"] = nbytes / 1e6

        tracemalloc.start()
        read_face_csv(csv)
        results["parse peak allocation (MB)"] = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()

        cache_dir = tmp_path / "cache"
        start = time.perf_counter()
        load_table(csv, cache_dir)
        results["parse + write cache (s)"] = time.perf_counter() - start
        with _Timer() as timer:
            cached = load_table(csv, cache_dir)
        results["load from cache, mmap, wall (s)"] = timer.wall
        with _Timer() as timer:
            cached = load_table(csv, cache_dir)
            int(np.asarray(cached.faces).sum(dtype=np.uint64))  # page every byte in
        results["load from cache + read all, wall (s)"] = timer.wall

        n = min(loader_samples, len(table))
        with csv.open() as handle:
            next(handle)
            pixels = [next(handle).split(",")[1] for _ in range(n)]
        original_loader = DataLoader(
            OriginalStyleDataset(pixels, table.labels[:n], input_size),
            batch_size=48,
            shuffle=True,
            num_workers=0,
        )
        augment = build_augment(paper_augment())
        ours = FaceDataset([(cached.faces, np.arange(n))], cached.labels[:n], augment)
        our_loader = DataLoader(
            ours, batch_size=48, shuffle=True, num_workers=0, collate_fn=collate_batch
        )
        original_rate = _throughput(original_loader)
        our_rate = _throughput(our_loader, lambda x: to_model_input(x, input_size))
        our_rate_48 = _throughput(our_loader)
        results[f"original loader, {input_size}px (samples/CPU-s)"] = original_rate
        results[f"this loader + to_model_input {input_size} (samples/CPU-s)"] = our_rate
        results["this loader, 48x48 batches only (samples/CPU-s)"] = our_rate_48
        results["ratio (this incl. resize / original)"] = our_rate / original_rate
        workers = worker_rates(cached.faces, cached.labels, worker_samples, batch_size, target)
        results[f"1 worker, batch {batch_size}, augmentation on (images/CPU-s)"] = workers[
            "augment_on_images_per_cpu_s"
        ]
        results[f"1 worker, batch {batch_size}, augmentation off (images/CPU-s)"] = workers[
            "augment_off_images_per_cpu_s"
        ]
        results["1-worker DataLoader, augmentation on, wall (images/s)"] = workers[
            "one_worker_loader_images_per_s_wall"
        ]
        results[f"workers needed for {target:g} images/s (augmentation on)"] = workers[
            "workers_needed"
        ]
        del cached, ours, our_loader
    results["peak RSS of the process (MB)"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    width = max(len(k) for k in results)
    load = os.getloadavg()[0]
    print(f"fer_lightning data benchmark: {rows} rows, 1 thread, load average {load:.1f}")
    for key, value in results.items():
        shown = f"{value:10d}" if isinstance(value, int) else f"{value:10.3f}"
        print(f"  {key:<{width}}  {shown}")
    run.set_reference(f"original loader, {input_size}px", original_rate)
    run.add(f"this loader + to_model_input {input_size}", our_rate)
    run.add("this loader, 48x48 batches only", our_rate_48)
    run.add(
        f"1 worker, batch {batch_size}, augmentation on", workers["augment_on_images_per_cpu_s"]
    )
    run.add(
        f"1 worker, batch {batch_size}, augmentation off", workers["augment_off_images_per_cpu_s"]
    )
    needed = workers["workers_needed"]
    verdict = "fits" if workers["fits_a_16_core_host"] else "does NOT fit"
    print(
        f"loader: {target:g} images/s need {needed} worker{'s' * (needed != 1)} at "
        f"{workers['augment_on_images_per_cpu_s']:.0f} images/CPU-s each "
        f"(augmentation on): {verdict} a {HOST_CORES}-core host"
    )
    print("no model FLOPs here: the dense matmul peak above is recorded only")
    run.write_json(json_path, rows=rows, loader_samples=n, figures=results, loader_workers=workers)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FER2013_ROWS)
    parser.add_argument("--loader-samples", type=int, default=1920)
    parser.add_argument(
        "--worker-samples", type=int, default=9600, help="faces per loader-worker measurement"
    )
    parser.add_argument("--batch-size", type=int, default=48, help="the training batch")
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET_IMAGES_PER_S,
        help=f"images/s the loader must feed (default {TARGET_IMAGES_PER_S}: an H200 at 224)",
    )
    add_options(parser, bf16=False)
    args = parser.parse_args()
    sizes = (args.rows, args.loader_samples, args.worker_samples, args.batch_size, args.target)
    if min(sizes) <= 0 or args.peak_size < 1:
        parser.error(
            "--rows, --loader-samples, --worker-samples, --batch-size, --target and "
            "--peak-size must be positive"
        )
    run_benchmark(
        rows=args.rows,
        loader_samples=args.loader_samples,
        json_path=args.json,
        worker_samples=args.worker_samples,
        batch_size=args.batch_size,
        target=args.target,
        peak_size=args.peak_size,
    )
