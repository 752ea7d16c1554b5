"""People in a video: how well faces are tracked, how much smoothing steadies labels, and what
tracking costs fer-predict.

    python benchmarks/bench_tracking.py [--repeats 3] [--ckpt PATH] [--detector yunet]
        [--json PATH] [--peak-size N]

All on the synthetic people clip (``fer_lightning.inference.samples.people_clip``: 150 frames
of 640x360 at 25 fps; three astronaut copies; 1 and 2 cross, 1 hidden behind 2 for 18
frames; 3 leaves for 15 frames and comes back, then for 40 and comes back elsewhere), through
the real face detector:

- ``tracks``: the detector's boxes of every analysed frame, with a share of them dropped at
  random on purpose (detector misses), go through the tracker (defaults: ``max_missed=30``,
  ``min_iou=0.3``); motmetrics scores the ids against the clip's truth (a return after more
  than ``max_missed`` frames is a new person): IDF1 and ID switches, over the faces the
  detector reported (identity only) and over every visible face (misses count against it).
- ``flicker``: label changes per second of each of persons 1 and 2, whose true label is
  constant (the same photo in every frame), raw labels against smoothed ones (smoothing 0.7
  and 5), with the network of ``--ckpt`` on the clip with camera-like noise (``--noise``,
  Gaussian, grey levels). A freshly initialised network (the default, ResNet-18 at 64 px, seed
  0) gives one label throughout and no flicker: give a trained checkpoint.
- ``speed``: fer-predict's run (``fer_lightning.cli.predict.run``: detection, network, the
  annotated video, predictions.csv/.jsonl, the plot, tracks.csv) on the clip with
  ``track=false`` (the reference) and ``track=true``, interleaved ``--repeats`` times, median
  frames/s of each and the ratio; and the share of each ``track=true`` run's time spent in the
  tracker and smoother (timed inside the run, so the machine's load hits both sides alike), and
  their time per frame alone. Each setting's network FLOPs per second (faces per frame x the
  network's forward FLOPs per face x frames/s) are printed as a share of the CPU's dense matmul
  peak of the recogniser's precision, measured at the start: the share of the whole run's time
  that is the network at that peak (the detector's FLOPs, decoding and writing are not counted).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
from run_info import Run, add_options, model_flops_per_image

from fer_lightning.inference.people import TrackingOptions
from fer_lightning.inference.samples import PeopleClip, people_clip
from fer_lightning.inference.tracking import IouTracker, iou_matrix

MATCH_IOU = 0.5


def small_checkpoint(path: Path) -> Path:
    """A fresh ResNet-18 at 64 px (seed 0) in this project's Lightning checkpoint layout."""
    from fer_lightning.models import create_model

    torch.manual_seed(0)
    state = {f"net.{k}": v for k, v in create_model("resnet18").state_dict().items()}
    hyper = {"arch": "resnet18", "num_classes": 7, "input_size": 64}
    torch.save({"state_dict": state, "hyper_parameters": hyper}, path)
    return path


def person_of(clip: PeopleClip, index: int, box) -> int | None:
    """The visible person whose true box overlaps ``box`` by ``MATCH_IOU`` or more."""
    people = list(clip.truth[index])
    if not people:
        return None
    overlap = iou_matrix([box], [clip.truth[index][p] for p in people])[0]
    best = int(np.argmax(overlap))
    return people[best] if overlap[best] >= MATCH_IOU else None


def score_tracks(clip, boxes_per_frame, every_n: int, drop: float, seed: int = 0) -> dict:
    """IDF1 and ID switches of the tracker on the detector's boxes, ``drop`` of them removed."""
    import motmetrics

    rng = np.random.default_rng(seed)
    tracker = IouTracker(max_missed=30, min_iou=0.3)
    detected, visible = (motmetrics.MOTAccumulator(auto_id=True) for _ in range(2))
    for index in range(0, len(clip.frames), every_n):
        boxes = [b for b in boxes_per_frame[index] if rng.random() >= drop]
        ids = tracker.update(boxes)
        hyp = np.array(boxes, dtype=float).reshape(-1, 4)
        found = {person_of(clip, index, b) for b in boxes} - {None}
        for accumulator, people in ((detected, found), (visible, set(clip.truth[index]))):
            people = sorted(people)
            truth = np.array([clip.truth[index][p] for p in people], dtype=float).reshape(-1, 4)
            distance = 1 - iou_matrix(truth, hyp)
            distance[distance > 1 - MATCH_IOU] = np.nan
            accumulator.update([clip.person_ids[index][p] for p in people], ids, distance)
    metrics = motmetrics.metrics.create()
    result = {}
    for name, accumulator in (("detected", detected), ("visible", visible)):
        summary = metrics.compute(accumulator, metrics=["idf1", "num_switches"], name=name)
        result[f"idf1_{name}"] = round(float(summary["idf1"].iloc[0]), 4)
        result[f"id_switches_{name}"] = int(summary["num_switches"].iloc[0])
    return result


def flicker(clip: PeopleClip, video: Path, recognizer, smoothing: float) -> dict:
    """Label changes per second of persons 1 and 2 (constant true label), raw and smoothed."""
    from fer_lightning.inference.video import video_table

    tracking = TrackingOptions(smoothing=smoothing)
    table = video_table(recognizer, video, tracking=tracking)
    rates: dict[str, list[float]] = {"raw": [], "smoothed": []}
    for _, rows in table.groupby("track_id"):
        rows = rows.sort_values("frame")
        first = rows.iloc[0]
        person = person_of(clip, int(first.frame), (first.x0, first.y0, first.x1, first.y1))
        seconds = (rows["frame"].max() - rows["frame"].min()) / clip.fps
        if person not in (1, 2) or seconds <= 0:
            continue
        for kind, column in (("raw", "label"), ("smoothed", "smoothed_label")):
            labels = rows[column].tolist()
            changes = sum(a != b for a, b in itertools.pairwise(labels))
            rates[kind].append(changes / seconds)
        print(
            f"  smoothing={smoothing} person {person}: {len(rows)} frames, raw changes "
            f"{rates['raw'][-1] * seconds:.0f}, smoothed {rates['smoothed'][-1] * seconds:.0f}"
        )
    return {kind: round(float(statistics.mean(values)), 2) for kind, values in rates.items()}


def tracker_microseconds(boxes_per_frame, labels, repeats: int = 20) -> float:
    """Time of FaceTracks.update (tracker and smoother) per frame of the clip, in us."""
    from fer_lightning.inference.predictions import FacePrediction

    probs = {name: 1 / len(labels) for name in labels}
    frames = [
        [FacePrediction(tuple(b), 0.9, labels[0], probs) for b in boxes]
        for boxes in boxes_per_frame
    ]
    started = time.perf_counter()
    for _ in range(repeats):
        people = TrackingOptions().tracker()
        for faces in frames:
            people.update(faces)
    return 1e6 * (time.perf_counter() - started) / (repeats * len(frames))


class TrackerTimer:
    """Adds up the time spent in FaceTracks.update (tracker and smoother) while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> TrackerTimer:
        from fer_lightning.inference.people import FaceTracks

        self.original = original = FaceTracks.update
        timer = self

        def timed(tracks, faces):
            started = time.perf_counter()
            try:
                return original(tracks, faces)
            finally:
                timer.seconds += time.perf_counter() - started

        FaceTracks.update = timed
        return self

    def __exit__(self, *exc) -> None:
        from fer_lightning.inference.people import FaceTracks

        FaceTracks.update = self.original


def predict_seconds(folder: Path, overrides: list[str]) -> tuple[float, Any, Any]:
    """Wall time of fer-predict's run on the clip (recogniser built beforehand), its summary
    (frames, faces) and the recogniser's classifier."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fer_lightning.cli import predict
    from fer_lightning.cli.config import CONFIG_DIR
    from fer_lightning.cli.recognizer import build_recognizer

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=overrides)
    config = predict.PredictConfig.from_hydra(cfg)
    summary = predict.RunSummary()
    images, videos = predict.collect_inputs(config, summary)
    recognizer, _ = build_recognizer(config, config.batch_size)
    started = time.perf_counter()
    status = predict.run(config, recognizer, images, videos, summary)
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"fer-predict run failed ({status}): {summary.line()}")
    return seconds, summary, recognizer.classifier


def network_flops(classifier: Any) -> tuple[float | None, str | None, str]:
    """(forward FLOPs per face, precision, what they are) of a PyTorch classifier; (None, None,
    why) for one whose FLOPs are not counted (an ONNX model)."""
    arch = getattr(getattr(classifier, "model", None), "arch", None)
    precision = getattr(classifier, "precision", None)
    if arch is None or precision is None:
        return None, None, f"{type(classifier).__name__}: network FLOPs not counted"
    size = classifier.input_size
    flops = model_flops_per_image(arch, size)
    return flops, precision, f"{arch} at {size} px, {precision}, {flops / 1e9:.3f} GFLOPs/face"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ckpt", type=Path, help="a checkpoint (default: fresh ResNet-18)")
    parser.add_argument("--detector", default="yunet")
    parser.add_argument("--noise", type=float, default=6.0, help="for the flicker clip")
    add_options(parser, bf16=False)
    args = parser.parse_args()
    run = Run("bench_tracking", "frames/s", peak_size=args.peak_size)

    from fer_lightning.inference.recognizer import EmotionRecognizer, detector_for_recognizer

    clip = people_clip()
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        folder = Path(tmp)
        video = clip.write(folder / "people.avi")
        ckpt = args.ckpt or small_checkpoint(folder / "small.ckpt")

        detector = detector_for_recognizer(args.detector)
        boxes = [[d.box for d in detector.detect(frame)] for frame in clip.frames]
        tracks = {}
        for every_n in (1, 3):
            for drop in (0.0, 0.1, 0.3):
                tracks[f"every_n_frames={every_n} drop={drop}"] = score_tracks(
                    clip, boxes, every_n, drop
                )
        recall = sum(
            len({person_of(clip, i, b) for b in found} - {None}) for i, found in enumerate(boxes)
        ) / sum(len(shown) for shown in clip.truth)
        print(f"detector {args.detector}: {100 * recall:.1f}% of the visible faces found")
        for name, figures in tracks.items():
            print(f"tracks, {name}: {figures}")

        recognizer = EmotionRecognizer.from_checkpoint(ckpt, "cpu", detector)
        noisy = people_clip(noise=args.noise)
        noisy_video = noisy.write(folder / "people-noisy.avi")
        flickers = {s: flicker(noisy, noisy_video, recognizer, s) for s in (0.7, 5)}
        for smoothing, figures in flickers.items():
            print(
                f"flicker (label changes/s per person), smoothing={smoothing}: "
                f"raw {figures['raw']}, smoothed {figures['smoothed']}"
            )

        common = [f"ckpt_path={ckpt}", f"source={video}", f"detector={args.detector}"]
        common += ["device=cpu"]
        rates: dict[str, list[float]] = {"track=false": [], "track=true": []}
        shares: list[float] = []  # of each track=true run's time, in the tracker and smoother
        warm_up = predict_seconds(folder, [*common, f"output_dir={folder / 'warm-up'}"])
        _, summary, classifier = warm_up  # the time is not counted
        flops_per_face, precision, network = network_flops(classifier)
        faces_per_frame = summary.faces / summary.frames
        print(f"network: {network}; {faces_per_frame:.2f} faces per frame", flush=True)
        for repeat in range(args.repeats):
            for number, setting in enumerate(rates):
                out = folder / f"out-{number}-{repeat}"
                with TrackerTimer() as timer:
                    seconds, summary, _ = predict_seconds(
                        folder, [*common, setting, f"output_dir={out}"]
                    )
                frames = summary.frames
                rates[setting].append(frames / seconds)
                if setting == "track=true":
                    shares.append(timer.seconds / seconds)
                print(f"  {setting}: {frames / seconds:.2f} frames/s", flush=True)
        median = {k: statistics.median(v) for k, v in rates.items()}
        flops = {}
        if flops_per_face is not None:  # the network's FLOPs of one frame's faces
            flops = {"flops_per_item": faces_per_frame * flops_per_face, "precision": precision}
        run.set_reference("fer-predict track=false", round(median["track=false"], 2), **flops)
        tracked = run.add("fer-predict track=true", round(median["track=true"], 2), **flops)
        ratio = median["track=true"] / median["track=false"]
        print(
            f"fer-predict on the clip (median of {args.repeats}): {median['track=false']:.2f} "
            f"frames/s without tracking, {median['track=true']:.2f} with (ratio {ratio:.3f})"
        )
        if flops:
            print(
                f"network FLOPs: track=false {run.share_text(run.reference)}; "
                f"track=true {run.share_text(tracked)}"
            )
        else:
            print(f"network FLOPs: not counted ({network})")
        cost = tracker_microseconds(boxes, recognizer.labels)
        share = statistics.median(shares)
        print(
            f"tracker and smoother: {cost:.0f} us per frame alone; {100 * share:.2f}% of the "
            f"track=true runs' time (median; {', '.join(f'{100 * x:.2f}' for x in shares)})"
        )
        run.write_json(
            args.json,
            tracks=tracks,
            detector_recall=recall,
            flicker=flickers,
            frames_per_second=rates,
            tracking_us_per_frame=cost,
            tracking_share_of_run=shares,
            network=network,
            faces_per_frame=faces_per_frame,
        )
    return None


if __name__ == "__main__":
    sys.exit(main())
