"""Recognise facial emotions in images, folders, videos and webcams from the command line.

    python -m fer_lightning.predict ckpt_path=best.ckpt source=photos/ output_dir=out
    python -m fer_lightning.predict ckpt_path=model.onnx source=clip.mp4 detector=dlib
    python -m fer_lightning.predict ckpt_path=best.ckpt source=0 max_frames=300   # webcam 0

Arguments are ``key=value`` pairs in the Hydra style, checked against :class:`PredictConfig`
(OmegaConf), without Hydra's run folders. The output folder gets annotated images (same
relative paths as in the source folder) or annotated videos, and ``predictions.jsonl``: one
JSON line per face with its source file, frame (videos), box, label and probabilities.
Bad inputs are reported one line each and skipped; the exit status is 1 if any failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
# Image formats OpenCV writes; other sources get a .png annotated copy.
WRITABLE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass
class PredictConfig:
    """Options of ``python -m fer_lightning.predict``."""

    ckpt_path: str = MISSING  # .ckpt (this project), published RMN .pt/.pth, or exported .onnx
    source: str = MISSING  # image, folder (recursive), video file, or webcam index (0, 1, ...)
    output_dir: str | None = None  # default: outputs/predict/<date>_<time>
    save_faces: str | None = None  # folder for the 48x48 crops the network saw
    detector: str = "auto"  # auto, yunet, dlib, opencv_yunet, none
    detector_model: str | None = None  # ONNX file for detector=opencv_yunet
    min_score: float | None = None  # detector threshold (default: the detector's own)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    precision: str = "auto"  # auto (bf16 where fast), fp32, bf16
    arch: str | None = None  # only for checkpoints whose architecture is ambiguous
    input_size: int | None = None  # network input side (default: the checkpoint's, else 224)
    batch_size: int = 32  # faces per network batch
    image_batch: int = 16  # images read and detected before their faces go through together
    margin: float = 0.1  # square crop 1 + 2 * margin times the box's longer side
    align_faces: bool = True  # level the eyes when the detector gives landmarks
    draw: bool = True  # write annotated images / videos
    max_frames: int | None = None  # stop videos and webcams after this many frames
    recycle_every: int = 500  # frames per yunet worker process (bounds its memory leak)


class UsageError(ValueError):
    """A mistake in the command line: reported in one line, exit status 2."""


@dataclass
class RunSummary:
    images: int = 0
    videos: int = 0
    frames: int = 0
    faces: int = 0
    without_faces: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{self.images} images", f"{self.videos} videos"]
        if self.videos:
            parts.append(f"{self.frames} frames")
        parts += [f"{self.faces} faces", f"{self.without_faces} images without a face"]
        parts += [f"{len(self.failed)} failed", f"{len(self.skipped)} skipped"]
        return ", ".join(parts)


def parse_config(argv: Sequence[str]) -> PredictConfig:
    """``key=value`` arguments -> a validated :class:`PredictConfig`."""
    for argument in argv:
        if "=" not in argument:
            raise UsageError(f"Arguments are key=value pairs; got {argument!r}.\n{_usage()}")
    schema = OmegaConf.structured(PredictConfig)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(argv)))
        config: PredictConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        raise UsageError(f"{message}\n{_usage()}") from None
    return config


def _usage() -> str:
    keys = ", ".join(PredictConfig.__dataclass_fields__)
    return (
        "usage: python -m fer_lightning.predict ckpt_path=PATH source=IMAGE|FOLDER|VIDEO|INDEX "
        f"[key=value ...]\nkeys: {keys}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some inputs failed, 2 usage)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\n" + _usage(), file=sys.stderr if not argv else sys.stdout)
        return EXIT_USAGE if not argv else EXIT_OK
    try:
        config = parse_config(argv)
        recognizer = build_recognizer(config)
        return run(config, recognizer)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SOME_FAILED


def build_recognizer(config: PredictConfig):  # -> EmotionRecognizer
    """The recogniser the configuration describes; :class:`UsageError` for user mistakes."""
    from fer_lightning.checkpoints import CheckpointError
    from fer_lightning.inference import DetectorUnavailableError, EmotionRecognizer

    detector_options: dict[str, object] = {}
    if config.min_score is not None:
        detector_options["min_score"] = config.min_score
    if config.detector_model is not None:
        detector_options["model_path"] = config.detector_model
    try:
        from fer_lightning.inference.recognizer import detector_for_recognizer

        detector = detector_for_recognizer(config.detector, **detector_options)
        return EmotionRecognizer.from_checkpoint(
            config.ckpt_path,
            device=config.device,
            detector=detector,
            arch=config.arch,
            precision=config.precision,
            input_size=config.input_size,
            batch_size=config.batch_size,
            margin=config.margin,
            align_faces=config.align_faces,
        )
    except (CheckpointError, DetectorUnavailableError, FileNotFoundError, ImportError) as error:
        raise UsageError(str(error)) from None
    except (ValueError, RuntimeError) as error:
        # Unknown detector or device names, unreadable ONNX files, ...
        raise UsageError(str(error)) from None


def run(config: PredictConfig, recognizer) -> int:
    """Process ``config.source`` with ``recognizer``; prints a summary, returns the status."""
    from fer_lightning.inference.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    output_dir = Path(config.output_dir or default_output_dir())
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary()
    source = config.source.strip()
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as jsonl:
        if source.isdigit():
            run_video(
                config, recognizer, int(source), f"webcam{source}", output_dir, jsonl, summary
            )
        elif Path(source).is_dir():
            root = Path(source)
            images, videos = [], []
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in path.relative_to(root).parts):
                    continue
                suffix = path.suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    images.append(path)
                elif suffix in VIDEO_SUFFIXES:
                    videos.append(path)
                else:
                    summary.skipped.append(str(path))
                    report(f"{path}: skipped, not an image or video file (suffix {suffix!r}).")
            run_images(config, recognizer, images, root, output_dir, jsonl, summary)
            for video in videos:
                rel = video.relative_to(root).as_posix()
                run_video(config, recognizer, video, rel, output_dir, jsonl, summary)
        elif Path(source).suffix.lower() in VIDEO_SUFFIXES:
            run_video(
                config, recognizer, Path(source), Path(source).name, output_dir, jsonl, summary
            )
        elif Path(source).exists():
            path = Path(source)
            run_images(config, recognizer, [path], path.parent, output_dir, jsonl, summary)
        else:
            summary.failed.append(source)
            report(f"{source}: no such file or folder, and not a webcam index.")
    print(f"{summary.line()}. Results in {output_dir}", file=sys.stderr)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def default_output_dir() -> Path:
    return Path("outputs") / "predict" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def report(message: str) -> None:
    """One line per problem, above any progress bar."""
    tqdm.write(message, file=sys.stderr)


def run_images(
    config: PredictConfig,
    recognizer,
    paths: list[Path],
    root: Path,
    output_dir: Path,
    jsonl: IO[str],
    summary: RunSummary,
) -> None:
    """Images in groups of ``config.image_batch``: read and detect each (reporting failures),
    then all faces of the group through the network together."""
    from fer_lightning.inference import ImageError, read_image

    progress = tqdm(total=len(paths), unit="img", disable=len(paths) < 2, file=sys.stderr)
    for group in _chunks(paths, config.image_batch):
        good: list[tuple[str, np.ndarray, list]] = []
        for path in group:
            name = path.relative_to(root).as_posix() if path != root else path.name
            try:
                image = read_image(path)
                good.append((name, image, recognizer.detector.detect(image)))
            except ImageError as error:
                summary.failed.append(str(path))
                report(f"error: {error}")
            except Exception as error:  # a detector crashing on one image must not end the run
                summary.failed.append(str(path))
                report(f"error: {path}: {type(error).__name__}: {error}")
        if good:
            names, images, detections = zip(*good, strict=True)
            crop_names = [n.replace("/", "__").rsplit(".", 1)[0] for n in names]
            faces = recognizer.recognize(images, detections, config.save_faces, crop_names)
            for name, image, image_faces in zip(names, images, faces, strict=True):
                summary.images += 1
                summary.faces += len(image_faces)
                summary.without_faces += not image_faces
                for j, face in enumerate(image_faces):
                    jsonl.write(json.dumps({"source": name, "face": j, **face.to_dict()}) + "\n")
                if config.draw:
                    write_annotated(output_dir / name, recognizer.draw(image, image_faces))
        progress.update(len(group))
    progress.close()


def write_annotated(path: Path, image: np.ndarray) -> None:
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"Could not write {path}.")


def run_video(
    config: PredictConfig,
    recognizer,
    source: Path | int,
    name: str,
    output_dir: Path,
    jsonl: IO[str],
    summary: RunSummary,
) -> None:
    """One video file or webcam: annotated ``<name>.mp4`` and one JSON line per face."""
    from fer_lightning.inference.video import VideoError, open_capture, predict_video

    try:
        capture = open_capture(source)
    except VideoError as error:
        summary.failed.append(str(source))
        report(f"error: {error}")
        return
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    capture.release()
    if config.max_frames is not None and total is not None:
        total = min(total, config.max_frames)
    output = output_dir / Path(name).with_suffix(".mp4") if config.draw else None
    save_faces = None
    if config.save_faces is not None:
        save_faces = Path(config.save_faces) / Path(name).with_suffix("").as_posix().replace(
            "/", "__"
        )
    frames = predict_video(
        recognizer,
        source,
        output,
        max_frames=config.max_frames,
        recycle_every=config.recycle_every,
        save_faces=save_faces,
    )
    progress = tqdm(total=total, unit="frame", desc=str(name), file=sys.stderr)
    try:
        for result in _guarded(frames, source, summary):
            summary.frames += 1
            summary.faces += len(result.faces)
            for j, face in enumerate(result.faces):
                line = {"source": name, "frame": result.index, "face": j, **face.to_dict()}
                jsonl.write(json.dumps(line) + "\n")
            progress.update(1)
        summary.videos += 1
    finally:
        progress.close()


def _guarded(frames: Iterator, source: Path | int, summary: RunSummary) -> Iterator:
    """The frames, with a failure mid-video reported instead of raised."""
    from fer_lightning.inference.video import VideoError

    try:
        yield from frames
    except (VideoError, OSError, RuntimeError) as error:
        summary.failed.append(str(source))
        report(f"error: {source}: {error}")


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


if __name__ == "__main__":
    sys.exit(main())
