"""Inference benchmarks: faces per second on a frame of 8 faces, and video-path memory.

    python benchmarks/bench_inference.py speed [--repeats 3] [--arch A --size S] [--ckpt PATH]
    python benchmarks/bench_inference.py video-memory [--frames 3000]
    python benchmarks/bench_inference.py detectors [--repeats 20]
    python benchmarks/bench_inference.py explain [--repeats 3] [--arch A --size S]

Each takes ``--json PATH`` (the figures, the machine and the command line as JSON).

``speed`` times, in one run and interleaved (so that machine load hits all alike), the end to end
work on one 1280x640 frame holding 8 faces (detection included), with the real network
(``resmasking_dropout1`` at 224, or ``--arch``/``--size``; fresh weights unless ``--ckpt``: speed
does not depend on their values):

- ``per-face fp32 loop``: as the original package does it: detect, then for each face crop,
  grayscale, ``cv2.resize`` to 224, three channels, one forward pass per face, in fp32;
- ``batched fp32`` and ``batched bf16``: :class:`EmotionRecognizer`, all 8 faces in one batch
  (bf16 only where the CPU runs it natively, unless ``--include-emulated-bf16``);
- ``fp32 ONNX, batched``: the recogniser over the fp32 ONNX export (ONNX Runtime);
- ``int8 ONNX, batched``: the recogniser over the model quantised as ``fer-export quantize=int8``
  does it (calibration settings from ``conf/export.yaml``, synthetic faces), with its top-1
  agreement with fp32 on the synthetic test split.

It prints faces/s and the ratios to the loop; only the ratios travel between machines.

``explain`` times, interleaved, ``EmotionRecognizer.predict`` against ``explain`` (Grad-CAM of
the predicted class, and for the masking networks the four masks) on the same frame, fp32,
detection included in both: the cost of an explanation per face.

``video-memory`` runs the video path (``predict_video``: yunet in a recycled worker, a small
network, annotated output written) over a generated video, and samples the resident memory of
the main process plus the detection worker; then the same number of yunet calls in-process,
without recycling, for comparison.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf
from run_info import Run, add_options, model_flops_per_image

from fer_lightning.cli.config import CONFIG_DIR
from fer_lightning.cli.export import int8_faces
from fer_lightning.faces.detector_worker import RecycledDetector
from fer_lightning.inference import (
    EmotionRecognizer,
    OnnxClassifier,
    TorchClassifier,
    create_detector,
)
from fer_lightning.inference.onnx_export import compare_int8, export_onnx, quantize_int8
from fer_lightning.inference.samples import astronaut, mosaic
from fer_lightning.models import create_model
from fer_lightning.models.checkpoints import load_model


def eight_face_frame() -> np.ndarray:
    """(640, 1280, 3): the astronaut tiled 2 x 4."""
    return mosaic(astronaut(), 2, 4)


def original_style_loop(
    model: torch.nn.Module, detector, frame: np.ndarray, size: int = 224
) -> list[np.ndarray]:
    """Per-face fp32 inference as the published ``rmn`` package does it."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    probs = []
    for face in detector.detect(frame):
        x0, y0, x1, y1 = face.box
        # rmn: a square 1.1 times the box's mean half side around the centre, clipped.
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        half = int(((x1 - x0) + (y1 - y0)) // 2 // 2 * 1.1)
        crop = gray[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
        crop = cv2.resize(crop, (size, size))
        crop = np.dstack([crop] * 3)
        x = torch.from_numpy(crop).permute(2, 0, 1).float().div(255).unsqueeze(0)
        with torch.no_grad():
            probs.append(torch.softmax(model(x), 1)[0].numpy())
    return probs


def int8_model(model: torch.nn.Module, size: int, folder: Path) -> tuple[Path, Path, dict]:
    """``model`` as fp32 and int8 ONNX in ``folder``, made as ``fer-export quantize=int8`` makes
    them, and the int8 model's comparison with fp32 on the synthetic test split."""
    calibration = OmegaConf.load(CONFIG_DIR / "export.yaml").calibration
    faces, compare_faces, compared_on = int8_faces(calibration, folder / "data")
    fp32_path = export_onnx(model, folder / "fp32.onnx", size, opset=17)
    int8_path = quantize_int8(
        fp32_path,
        folder / "int8.onnx",
        faces,
        size,
        method=calibration.method,
        per_channel=calibration.per_channel,
        reduce_range=calibration.reduce_range,
        float_ends=calibration.float_ends,
    )
    result = compare_int8(model, int8_path, compare_faces, size, fp32_path)
    print(f"{result.summary()}; compared on {compared_on}")
    comparison = {**vars(result), "size_ratio": result.size_ratio, "compared_on": compared_on}
    return fp32_path, int8_path, comparison


def speed(
    repeats: int, arch: str, size: int, ckpt: str | None, run: Run, json_path: Path | None
) -> None:
    torch.manual_seed(0)
    model = (load_model(ckpt, arch=arch) if ckpt else create_model(arch)).eval()
    # yunet as the recogniser runs it (a worker process: in-process beside torch it is ~10x
    # slower here), shared by all settings so that detection costs them the same.
    detector = RecycledDetector("yunet")
    frame = eight_face_frame()
    n_faces = len(detector.detect(frame))
    print(f"frame {frame.shape[1]}x{frame.shape[0]}, {n_faces} faces found by yunet")
    assert n_faces == 8, "the benchmark frame should hold 8 detectable faces"
    baseline_model = copy.deepcopy(model)
    with tempfile.TemporaryDirectory(prefix="fer-bench-int8-") as folder:
        fp32_path, int8_path, int8 = int8_model(model, size, Path(folder))
        # The sessions hold the models in memory.
        fp32_onnx, int8_classifier = OnnxClassifier(fp32_path), OnnxClassifier(int8_path)
    runners = {
        "per-face fp32 loop": lambda: original_style_loop(baseline_model, detector, frame, size),
        "batched fp32": _recognizer(model, detector, "fp32", size).predict,
    }
    bf16 = run.bf16_label("batched bf16")
    if bf16 is not None:
        runners[bf16] = _recognizer(model, detector, "bf16", size).predict
    runners["fp32 ONNX, batched"] = EmotionRecognizer(fp32_onnx, detector).predict
    runners["int8 ONNX, batched"] = EmotionRecognizer(int8_classifier, detector).predict
    for name, predict in runners.items():  # warm-up: oneDNN primitives, first allocations
        predict() if name == "per-face fp32 loop" else predict(frame)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, predict in runners.items():
            start = time.perf_counter()
            predict() if name == "per-face fp32 loop" else predict(frame)
            times[name].append(time.perf_counter() - start)
    print(
        f"{arch} at {size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{repeats} repeats (median)"
    )
    # Each face's network FLOPs (detection not counted), against the peak of its precision.
    flops = model_flops_per_image(arch, size)
    for name, values in times.items():
        t = float(np.median(values))
        precision = "int8" if "int8" in name else "bf16" if "bf16" in name else "fp32"
        figures = {"seconds_per_frame": t, "flops_per_item": flops, "precision": precision}
        if name == "per-face fp32 loop":
            run.set_reference(name, n_faces / t, **figures)
        else:
            run.add(name, n_faces / t, **figures)
    for row in [{**run.reference, "ratio": 1.0}, *run.settings]:
        print(
            f"{row['name']:>45}: {row['value']:6.2f} faces/s  "
            f"({row['seconds_per_frame']:.3f} s/frame)  x{row['ratio']:.2f}  "
            f"{run.share_text(row)}"
        )
    for note in run.skipped:
        print(f"skipped {note}")
    # How closely the others follow fp32 on the frame's 8 faces (fresh weights: a weak test).
    fp32 = _probabilities(runners["batched fp32"](frame))
    on_frame = {}
    for name in runners:
        if name not in ("per-face fp32 loop", "batched fp32"):
            other = _probabilities(runners[name](frame))
            on_frame[name] = {
                "max_prob_difference": float(np.abs(fp32 - other).max()),
                "top1_agreement": float((fp32.argmax(1) == other.argmax(1)).mean()),
            }
            print(
                f"{name} vs fp32 on the frame: max prob diff "
                f"{on_frame[name]['max_prob_difference']:.2e}, top-1 agreement "
                f"{on_frame[name]['top1_agreement']:.0%}"
            )
    run.write_json(
        json_path,
        arch=arch,
        size=size,
        repeats=repeats,
        weights=ckpt or "fresh (random) weights",
        int8=int8,
        vs_fp32_on_frame=on_frame,
    )


def explain_cost(repeats: int, arch: str, size: int, run: Run, json_path: Path | None) -> None:
    """Seconds per face of ``predict`` and ``explain`` on the 8-face frame (median of
    ``repeats``, interleaved), fp32, yunet detection included in both."""
    torch.manual_seed(0)
    model = create_model(arch).eval()
    detector = RecycledDetector("yunet")
    frame = eight_face_frame()
    n_faces = len(detector.detect(frame))
    assert n_faces == 8, "the benchmark frame should hold 8 detectable faces"
    recognizer = _recognizer(model, detector, "fp32", size)
    runners = {"predict": recognizer.predict, "explain": recognizer.explain}
    for call in runners.values():  # warm-up
        call(frame)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, call in runners.items():
            start = time.perf_counter()
            call(frame)
            times[name].append(time.perf_counter() - start)
    per_face = {name: float(np.median(values)) / n_faces for name, values in times.items()}
    frame_s = {name: n_faces * seconds for name, seconds in per_face.items()}
    # Both counted at the forward's FLOPs per face: the default Grad-CAM's backward runs only
    # from the logits to the last stage (the classifier), which is next to nothing.
    flops = model_flops_per_image(arch, size)
    for name in runners:
        figures = {
            "seconds_per_frame": frame_s[name],
            "flops_per_second": flops / per_face[name],
            "precision": "fp32",
        }
        if name == "predict":
            run.set_reference(name, per_face[name], **figures)
        else:
            run.add(name, per_face[name], **figures)
    print(
        f"{arch} at {size}, fp32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{repeats} repeats (median), {n_faces} faces, detection included"
    )
    for row in [run.reference, *run.settings]:
        print(
            f"{row['name']:>8}: {1000 * row['value']:8.1f} ms per face "
            f"({row['seconds_per_frame']:.3f} s/frame)  {run.share_text(row)}"
        )
    print(f"explain costs {per_face['explain'] / per_face['predict']:.2f}x predict per face")
    run.write_json(json_path, arch=arch, size=size, repeats=repeats, times_s=times)


def _probabilities(faces) -> np.ndarray:
    return np.array([list(f.probs.values()) for f in faces])


def detector_timings(repeats: int, run: Run, json_path: Path | None) -> None:
    """Median milliseconds per ``detect`` call of each installed detector on three images."""
    from fer_lightning.inference import available_detectors

    photo = astronaut()
    images = {
        "320x320 (1 face)": photo,
        "640x640 (4 faces)": mosaic(photo, 2, 2),
        "1280x640 (8 faces)": mosaic(photo, 2, 4),
    }
    detectors = {}
    if "yunet" in available_detectors():
        detectors["yunet in this process (torch loaded)"] = create_detector("yunet")
        detectors["yunet in its worker process"] = RecycledDetector("yunet")
    if "dlib" in available_detectors():
        detectors["dlib"] = create_detector("dlib")
    for name, detector in detectors.items():
        for label, image in images.items():
            detector.detect(image)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                found = detector.detect(image)
                times.append(time.perf_counter() - start)
            ms = 1000 * float(np.median(times))
            run.add(f"{name}, {label}", ms, faces=len(found))
            print(f"{name:>38} {label:>20}: {ms:7.1f} ms, {len(found)} faces")
    run.write_json(json_path, repeats=repeats)


def _recognizer(model, detector, precision: str, size: int) -> EmotionRecognizer:
    return EmotionRecognizer(TorchClassifier(model, "cpu", precision, size), detector)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def write_moving_face_video(path: Path, frames: int) -> None:
    face = astronaut()
    canvas = np.full((480, 640, 3), 70, np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for i in range(frames):
        frame = canvas.copy()
        x = int(160 + 150 * np.sin(i / 40))
        frame[80:400, x : x + 320] = face
        writer.write(frame)
    writer.release()


def video_memory(
    frames: int, recycle_every: int, sample_every: int, run: Run, json_path: Path | None
) -> None:
    from fer_lightning.inference.video import predict_video

    work = Path(tempfile.mkdtemp())
    video = work / "moving.avi"
    write_moving_face_video(video, frames)
    print(f"video: {video}")
    torch.manual_seed(0)
    classifier = TorchClassifier(create_model("resnet18"), "cpu", "fp32", 64)
    # The detector predict_video would make for yunet, made here to read its worker's pid.
    worker = RecycledDetector("yunet", recycle_every=recycle_every)
    recognizer = EmotionRecognizer(classifier, detector=worker)
    results = predict_video(recognizer, video, work / "annotated.mp4")
    print(f"video path: {frames} frames 640x480, yunet worker recycled every {recycle_every}")
    print(f"{'frame':>6} {'main MB':>8} {'worker MB':>9} {'total MB':>8}")
    start = time.perf_counter()
    with_faces = 0
    samples = []
    for result in results:
        with_faces += bool(result.faces)
        if result.index % sample_every == 0 or result.index == frames - 1:
            main, child = rss_mb(os.getpid()), rss_mb(worker.pid) if worker.pid else 0.0
            print(f"{result.index:>6} {main:8.1f} {child:9.1f} {main + child:8.1f}")
            samples.append({"frame": result.index, "main_mb": main, "worker_mb": child})
    elapsed = time.perf_counter() - start
    print(
        f"{with_faces}/{frames} frames with a face, {frames / elapsed:.1f} frames/s, "
        f"{worker.restarts} worker processes"
    )
    worker.close()

    # The same detections in a fresh process without recycling: this process has freed heap
    # (from the network) that a leak would first reuse without growing.
    print(f"\nfor comparison: {frames} yunet calls in one fresh process, no recycling")
    in_process = work / "detector-memory.json"
    subprocess.run(
        [
            sys.executable,
            __file__,
            "detector-memory",
            "--video",
            str(video),
            "--sample-every",
            str(sample_every),
            "--json",
            str(in_process),
        ],
        check=True,
    )
    run.write_json(
        json_path,
        frames=frames,
        recycle_every=recycle_every,
        frames_per_second=frames / elapsed,
        worker_processes=worker.restarts,
        samples=samples,
        yunet_in_one_process=json.loads(in_process.read_text())["samples"],
    )


def detector_memory(video: Path, sample_every: int, run: Run, json_path: Path | None) -> None:
    """Resident memory of this process while yunet runs in it over every frame of ``video``."""
    detector = create_detector("yunet")
    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    detector.detect(frame)  # first call: one-off allocations
    before = rss_mb(os.getpid())
    calls = 1
    samples = [{"calls": 1, "rss_mb": before}]
    while ok:
        ok, frame = capture.read()
        if not ok:
            break
        detector.detect(frame)
        calls += 1
        if calls % sample_every == 0:
            now = rss_mb(os.getpid())
            samples.append({"calls": calls, "rss_mb": now})
            print(f"{calls:>6} calls: {now:7.1f} MB (+{now - before:.1f} MB)", flush=True)
    now = rss_mb(os.getpid())
    print(
        f"{calls:>6} calls: {now:7.1f} MB (+{now - before:.1f} MB, "
        f"{1024 * (now - before) / max(1, calls - 1):.1f} KB per call)"
    )
    if calls % sample_every:
        samples.append({"calls": calls, "rss_mb": now})
    run.write_json(json_path, samples=samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed_parser = sub.add_parser("speed")
    speed_parser.add_argument("--repeats", type=int, default=3)
    speed_parser.add_argument("--arch", default="resmasking_dropout1")
    speed_parser.add_argument("--size", type=int, default=224, help="network input side")
    speed_parser.add_argument("--ckpt", help="trained weights (default: fresh ones)")
    add_options(speed_parser)
    detectors_parser = sub.add_parser("detectors")
    detectors_parser.add_argument("--repeats", type=int, default=20)
    add_options(detectors_parser, bf16=False)
    leak_parser = sub.add_parser("detector-memory")
    leak_parser.add_argument("--video", type=Path, required=True)
    leak_parser.add_argument("--sample-every", type=int, default=250)
    add_options(leak_parser, bf16=False)
    explain_parser = sub.add_parser("explain")
    explain_parser.add_argument("--repeats", type=int, default=3)
    explain_parser.add_argument("--arch", default="resmasking_dropout1")
    explain_parser.add_argument("--size", type=int, default=224, help="network input side")
    add_options(explain_parser, bf16=False)
    video_parser = sub.add_parser("video-memory")
    video_parser.add_argument("--frames", type=int, default=3000)
    video_parser.add_argument("--recycle-every", type=int, default=500)
    video_parser.add_argument("--sample-every", type=int, default=250)
    add_options(video_parser, bf16=False)
    args = parser.parse_args(argv)
    units = {"speed": "faces/s", "detectors": "ms per call", "explain": "s per face"}
    run = Run(
        f"bench_inference {args.command}",
        units.get(args.command, "MB"),
        getattr(args, "include_emulated_bf16", False),
        args.peak_size,
        # Memory and detector timings: no model FLOPs, and the product's memory would show.
        measure_peak=args.command in ("speed", "explain"),
    )
    if args.command == "speed":
        speed(args.repeats, args.arch, args.size, args.ckpt, run, args.json)
    elif args.command == "detector-memory":
        detector_memory(args.video, args.sample_every, run, args.json)
    elif args.command == "detectors":
        detector_timings(args.repeats, run, args.json)
    elif args.command == "explain":
        explain_cost(args.repeats, args.arch, args.size, run, args.json)
    else:
        video_memory(args.frames, args.recycle_every, args.sample_every, run, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
