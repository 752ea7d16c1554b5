"""``fer-predict ckpt_path=PATH source=...`` (``python -m fer_lightning.predict``): emotions in
images, folders, videos and webcams. Options and their defaults: ``conf/predict.yaml``
(``fer-predict --help``).

The output folder gets annotated images (same relative paths as in the source folder) or
annotated videos, and ``predictions.jsonl``: one JSON line per face with its source file, frame
(videos), box, label and probabilities. Bad inputs are reported one line each and skipped; the
exit status is 1 if any failed, 2 for a bad command or checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from fer_lightning.cli.config import hydra_entry, raw_override
from fer_lightning.faces.crop import DEFAULT_MARGIN

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
# Image formats OpenCV writes; other sources get a .png annotated copy.
WRITABLE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass
class PredictConfig:
    """The options of ``conf/predict.yaml`` as plain values (paths as the user typed them)."""

    ckpt_path: str
    source: str
    output_dir: str
    save_faces: str | None
    detector: str
    detector_model: str | None
    min_score: float | None
    device: str
    precision: str
    arch: str | None
    input_size: int | None
    batch_size: int
    image_batch: int
    margin: float | None
    align_faces: bool
    draw: bool
    max_frames: int | None
    recycle_every: int

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> PredictConfig:
        """Read ``cfg``; path-like keys keep the text typed (``source=007`` is a folder name)."""

        def path(key: str, value: Any) -> str | None:
            return None if value is None else raw_override(key, value)

        def number(key: str, kind: type, optional: bool = False) -> Any:
            value = OmegaConf.select(cfg, key)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{key}={value!r}: expected a number.")
            if kind is int and value != int(value):
                raise UsageError(f"{key}={value!r}: expected a whole number.")
            return kind(value)

        return cls(
            ckpt_path=str(path("ckpt_path", cfg.ckpt_path)),
            source=str(path("source", cfg.source)),
            output_dir=str(path("output_dir", cfg.output_dir)),
            save_faces=path("save_faces", cfg.save_faces),
            detector=str(cfg.detector.name),
            detector_model=path("detector.model_path", cfg.detector.model_path),
            min_score=number("detector.min_score", float, optional=True),
            device=str(cfg.device),
            precision=str(cfg.precision),
            arch=cfg.arch,
            input_size=number("input_size", int, optional=True),
            batch_size=number("batch_size", int),
            image_batch=number("image_batch", int),
            margin=number("margin", float, optional=True),
            align_faces=bool(cfg.align_faces),
            draw=bool(cfg.draw),
            max_frames=number("max_frames", int, optional=True),
            recycle_every=number("recycle_every", int),
        )


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


def run_task(cfg: DictConfig) -> None:
    """The Hydra task: exits with 0 (all inputs done), 1 (some failed) or 2 (bad command)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        config = PredictConfig.from_hydra(cfg)
        if config.batch_size < 1 or config.image_batch < 1 or config.recycle_every < 1:
            raise UsageError("batch_size, image_batch and recycle_every must be at least 1.")
        check_output_dir(config)
        recognizer = build_recognizer(config)
        status = run(config, recognizer)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        status = EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = EXIT_SOME_FAILED
    sys.exit(status)


def check_output_dir(config: PredictConfig) -> None:
    """Refuse an output folder that is the source folder or inside it: outputs would replace
    inputs, and a later run would read them as inputs."""
    source = Path(config.source)
    if not source.is_dir():
        return
    output = Path(config.output_dir).resolve()
    root = source.resolve()
    if output == root or root in output.parents:
        raise UsageError(
            f"output_dir={config.output_dir} is inside source={config.source}: annotated copies "
            "would replace the inputs or be read as inputs next time. Choose a folder outside it."
        )


def build_recognizer(config: PredictConfig):  # -> EmotionRecognizer
    """The recogniser the configuration describes; :class:`UsageError` for user mistakes."""
    from fer_lightning.cli.errors import USER_ERRORS
    from fer_lightning.inference import EmotionRecognizer

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
            margin=DEFAULT_MARGIN if config.margin is None else config.margin,
            align_faces=config.align_faces,
        )
    except (*USER_ERRORS, FileNotFoundError, ImportError) as error:
        raise UsageError(str(error)) from None
    except (ValueError, RuntimeError) as error:
        # Unknown detector or device names, unreadable ONNX files, ...
        raise UsageError(str(error)) from None


def run(config: PredictConfig, recognizer) -> int:
    """Process ``config.source`` with ``recognizer``; prints a summary, returns the status."""
    from fer_lightning.faces.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary()
    source = config.source.strip()
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as jsonl:
        if source.isdigit() and not Path(source).exists():
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


main = hydra_entry("predict", run_task)

if __name__ == "__main__":
    main()
