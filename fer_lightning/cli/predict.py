"""``fer-predict ckpt_path=PATH source=...`` (``python -m fer_lightning.predict``): emotions in
images, folders, videos and webcams. Options and their defaults: ``conf/predict.yaml``
(``fer-predict --help``).

The output folder gets an annotated copy of each input under its own name
(:mod:`fer_lightning.inference.outputs`: same relative path, ``d.gif`` -> ``d.gif.png``,
``clip.avi`` -> ``clip.avi.mp4``, never two inputs on one name), per video an emotions-over-time
plot (``<video>.emotions.png``, one row per person when tracking), and the predictions twice:
``predictions.jsonl`` (one JSON line per face) and ``predictions.csv`` (one row per face:
source, output, frame, time_s, box, score, label, one column per emotion, then track_id and the
smoothed label and probabilities for tracked videos; :mod:`fer_lightning.inference.tables`);
with videos and ``track=true`` also ``tracks.csv``, one row per person. Every file is written
whole or not at all. Bad inputs are reported one line each and skipped; the exit status is 1 if
any failed (also a video that ends early, or outputs that could not be written, e.g. on a
full disk), 2 for a bad command or checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cv2
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from fer_lightning.cli.config import hydra_entry, raw_override, typed_override
from fer_lightning.cli.errors import UserError, config_number
from fer_lightning.cli.recognizer import RecognizerOptions, build_recognizer, required_text
from fer_lightning.faces.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, ImageError, read_image
from fer_lightning.inference.backends import TorchClassifier
from fer_lightning.inference.outputs import (
    TIMELINE_SUFFIX,
    OutputFolderError,
    OutputNames,
    OutputWriteError,
    StagedRun,
    check_output_folder,
    partial_path,
    plan_output_names,
    write_bytes,
    write_image,
)
from fer_lightning.inference.people import TrackingOptions
from fer_lightning.inference.recognizer import EmotionRecognizer
from fer_lightning.inference.smoothing import check_smoothing
from fer_lightning.inference.tables import (
    BASE_COLUMNS,
    TRACK_COLUMNS,
    CsvTableWriter,
    emotion_shares,
    face_rows,
    frame_table,
    shares_line,
    tracks_table,
)
from fer_lightning.inference.timeline import emotion_timeline_figure, figure_png
from fer_lightning.inference.video import VideoError, frame_count, open_capture, predict_video

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
# Decoded pixels held at once by a group of images (100 MP: about 300 MB as BGR).
GROUP_MAX_PIXELS = 100_000_000
PREDICTIONS_JSONL, PREDICTIONS_CSV = "predictions.jsonl", "predictions.csv"
TRACKS_CSV = "tracks.csv"
# explain=true: an image's overlay of where the network looked is <annotated copy>.explain.png,
# named in predictions.jsonl under this key (not a predictions.csv column).
EXPLAIN_SUFFIX, EXPLAIN_KEY = ".explain.png", "explain"
EXPLAIN_NEEDS_TORCH = (
    "explain=true needs a PyTorch model (a checkpoint or model.pt), not an ONNX file: it "
    "takes gradients and the masks from inside the network."
)
# Up to this many images, each face's label is also printed on the console.
PRINT_FACES_UP_TO = 10
EXAMPLE = "fer-predict ckpt_path=best.ckpt source=photo.jpg (an image, folder, video or webcam 0)"


@dataclass(frozen=True)
class PredictConfig(RecognizerOptions):
    """The options of ``conf/predict.yaml`` as plain values (paths as the user typed them):
    the recogniser's (:class:`RecognizerOptions`) and what to run it on."""

    source: str
    output_dir: str
    # The output_dir is the default, dated name: a taken one becomes <name>_2, <name>_3...
    output_dir_is_default: bool
    save_faces: str | None
    batch_size: int
    image_batch: int
    draw: bool
    explain: bool
    max_frames: int | None
    every_n_frames: int
    recycle_every: int
    # How faces are followed in videos; None with track=false.
    tracking: TrackingOptions | None

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> PredictConfig:
        """Read and check ``cfg``; path-like keys keep the text typed (``source=007`` is a
        folder name)."""

        def number(key: str, optional: bool = False) -> Any:
            return config_number(cfg, key, int, optional, minimum=1)

        fields = cls.recognizer_fields(cfg, EXAMPLE)
        source = required_text(cfg, "source", EXAMPLE)
        typed_output = typed_override("output_dir")
        save_faces = cfg.save_faces
        return cls(
            **fields,
            source=source,
            output_dir=typed_output if typed_output is not None else str(cfg.output_dir),
            output_dir_is_default=typed_output is None,
            save_faces=None if save_faces is None else raw_override("save_faces", save_faces),
            batch_size=number("batch_size"),
            image_batch=number("image_batch"),
            draw=bool(cfg.draw),
            explain=bool(cfg.get("explain", False)),
            max_frames=number("max_frames", optional=True),
            every_n_frames=number("every_n_frames"),
            recycle_every=number("recycle_every"),
            tracking=tracking_options(cfg),
        )


def tracking_options(cfg: DictConfig) -> TrackingOptions | None:
    """``track``, ``track_max_missed``, ``track_min_iou`` and ``smoothing`` checked; None
    with ``track=false``. A :class:`UserError` naming the key and value otherwise."""
    track = cfg.track
    if not isinstance(track, bool):
        raise UserError(f"track={track!r}: expected true or false.")
    max_missed = config_number(cfg, "track_max_missed", int, minimum=0)
    min_iou = config_number(cfg, "track_min_iou", float, maximum=1)
    if min_iou <= 0:
        raise UserError(f"track_min_iou={cfg.track_min_iou!r}: must be above 0 (and at most 1).")
    try:
        smoothing = check_smoothing(cfg.smoothing)
    except ValueError as error:
        raise UserError(str(error)) from None
    return TrackingOptions(max_missed, min_iou, smoothing) if track else None


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
        parts = [_count(self.images, "image"), _count(self.videos, "video")]
        if self.videos:
            parts.append(_count(self.frames, "frame"))
        parts += [_count(self.faces, "face")]
        parts += [f"{_count(self.without_faces, 'image')} without a face"]
        parts += [f"{len(self.failed)} failed", f"{len(self.skipped)} skipped"]
        return ", ".join(parts)


def _count(number: int, noun: str) -> str:
    """``1 image``, ``2 images``, ``0 images``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


@dataclass(frozen=True)
class Input:
    """One input and the names of what is written for it (relative to the output folders)."""

    path: Path | int
    name: str  # as shown in predictions: the path relative to the source folder
    output: str  # annotated copy, relative to output_dir
    crops: str  # stem (images) or folder (videos) of its crops, relative to save_faces


def run_task(cfg: DictConfig) -> None:
    """The Hydra task: exits with 0 (all inputs done), 1 (some failed) or 2 (bad command, and
    then nothing is written)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        config = PredictConfig.from_hydra(cfg)
        summary = RunSummary()
        images, videos = collect_inputs(config, summary)
        check_output_dir(config)
        check_no_input_replaced(images + videos, Path(config.output_dir))
        for key, folder in (("output_dir", config.output_dir), ("save_faces", config.save_faces)):
            if folder is not None:
                check_output_folder(Path(folder), key)
        if config.explain and config.ckpt_path.lower().endswith(".onnx"):
            raise UserError(EXPLAIN_NEEDS_TORCH)
        recognizer, _ = build_recognizer(config, config.batch_size)
        if config.explain and not isinstance(recognizer.classifier, TorchClassifier):
            raise UserError(EXPLAIN_NEEDS_TORCH)
        if config.explain and videos:
            print("note: explain=true writes overlays for images only, not videos", file=sys.stderr)
        warning = recognizer.provenance.warning if recognizer.provenance else None
        if warning:
            print(printable(f"warning: {warning}"), file=sys.stderr)
        status = run(config, recognizer, images, videos, summary)
    except (UserError, OutputFolderError) as error:
        print(printable(f"error: {error}"), file=sys.stderr)
        status = EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = EXIT_SOME_FAILED
    sys.exit(status)


def check_output_dir(config: PredictConfig) -> None:
    """Refuse an output or crops folder that is the source folder or inside it: outputs would
    replace inputs, and a later run would read them as inputs."""
    source = Path(config.source)
    if not source.is_dir():
        return
    root = source.resolve()
    for key, folder in (("output_dir", config.output_dir), ("save_faces", config.save_faces)):
        if folder is None:
            continue
        resolved = Path(folder).resolve()
        if resolved == root or root in resolved.parents:
            raise UserError(
                f"{key}={folder} is inside source={config.source}: what is written there would "
                "replace the inputs or be read as inputs next time. Choose a folder outside it."
            )


def check_no_input_replaced(inputs: list[Input], output_dir: Path) -> None:
    """Refuse a run whose outputs would land on one of its inputs (a single photo with
    output_dir its own folder; a source folder inside output_dir)."""
    sources = {
        str(item.path.resolve()): item.path for item in inputs if isinstance(item.path, Path)
    }
    for item in inputs:
        target = str((output_dir / item.output).resolve())
        if target in sources:
            raise UserError(
                f"output_dir={output_dir}: the annotated copy of {item.path} would replace the "
                f"input {sources[target]}. Choose an output folder that holds no inputs."
            )
    resolved = output_dir.resolve()
    for path in sources.values():
        if resolved in path.resolve().parents:
            raise UserError(
                f"output_dir={output_dir} holds the input {path}: a finished run replaces its "
                "output folder whole. Choose an output folder that holds no inputs."
            )


class PredictionFiles:
    """predictions.jsonl and predictions.csv, written under temporary names and renamed into
    place at the end (also after Ctrl-C); after a write error the earlier files stay."""

    def __init__(
        self, output_dir: Path, labels: tuple[str, ...], temperature: float | None = None
    ) -> None:
        # Every line says whether the run's probabilities are softmax(logits / temperature)
        # (the fitted temperature applied) or the raw softmax (null).
        self.temperature = temperature
        self.targets = (output_dir / PREDICTIONS_JSONL, output_dir / PREDICTIONS_CSV)
        self.partials = tuple(partial_path(path) for path in self.targets)
        self._current = self.targets[0]
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            # Closed by __exit__ (this class is the context manager). A file name that is not
            # valid UTF-8 becomes an escape (\udce9 in both files), never a crash.
            self.jsonl: IO[str] = open(self.partials[0], "w", encoding="utf-8")  # noqa: SIM115
            self._current = self.targets[1]
            self.csv: IO[str] = open(  # noqa: SIM115
                self.partials[1], "w", encoding="utf-8", errors="backslashreplace", newline=""
            )
            self.table = CsvTableWriter(self.csv, labels)
        except OSError as error:
            self._discard()
            raise OutputWriteError(self._current, error) from None

    def write(self, rows: list[dict[str, Any]]) -> None:
        """One predictions-table row per face, to both files."""
        try:
            self._current = self.targets[0]
            for row in rows:
                line = {**_json_line(row), "temperature": self.temperature}
                self.jsonl.write(json.dumps(line) + "\n")
            self._current = self.targets[1]
            self.table.write([{k: v for k, v in row.items() if k != EXPLAIN_KEY} for row in rows])
        except OSError as error:
            raise OutputWriteError(self._current, error) from None

    def __enter__(self) -> PredictionFiles:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None or issubclass(kind, KeyboardInterrupt):
            try:
                for stream, partial, target in zip(
                    (self.jsonl, self.csv), self.partials, self.targets, strict=True
                ):
                    self._current = target
                    stream.close()
                    os.replace(partial, target)
            except OSError as write_error:
                self._discard()
                raise OutputWriteError(self._current, write_error) from None
        else:
            self._discard()

    def _discard(self) -> None:
        for name in ("jsonl", "csv"):
            stream = getattr(self, name, None)
            if stream is not None:
                with contextlib.suppress(OSError):  # the file is removed below anyway
                    stream.close()
        for partial in self.partials:
            partial.unlink(missing_ok=True)


def no_face_row(source: str, output: str | None) -> dict[str, Any]:
    """The table row of an image without a face: its source and output, every face column
    empty (so that every image read has a row)."""
    return {**dict.fromkeys(BASE_COLUMNS), "source": source, "output": output or ""}


def _json_line(row: dict[str, Any]) -> dict[str, Any]:
    """A predictions.jsonl line from a table row: source, output, frame and time_s (videos),
    face, box, score, label and probs (face, box, score, label and probs null for an image
    without a face)."""
    line: dict[str, Any] = {"source": row["source"], "output": row["output"] or None}
    if row["frame"] is not None:
        line["frame"], line["time_s"] = row["frame"], row["time_s"]
    line["face"] = row["face"]
    has_face = row["face"] is not None
    line["box"] = [row["x0"], row["y0"], row["x1"], row["y1"]] if has_face else None
    line["score"], line["label"] = row["score"], row["label"]
    probs = {
        k: v
        for k, v in row.items()
        if k not in BASE_COLUMNS
        and k not in TRACK_COLUMNS
        and k != EXPLAIN_KEY
        and not k.startswith("smoothed_")
    }
    line["probs"] = probs if has_face else None
    if row.get(EXPLAIN_KEY):
        line[EXPLAIN_KEY] = row[EXPLAIN_KEY]
    if row.get("track_id") is not None:
        line["track_id"] = row["track_id"]
        line["smoothed_label"] = row["smoothed_label"]
        line["smoothed_probs"] = {k: row[f"smoothed_{k}"] for k in probs}
    return line


def collect_inputs(config: PredictConfig, summary: RunSummary) -> tuple[list[Input], list[Input]]:
    """The images and videos of ``config.source``, each with its output names (a webcam is
    one video); a :class:`UserError` for a source that is not there."""
    source = config.source.strip()
    path = Path(source)
    if source.isdigit() and not path.exists():
        try:
            open_capture(int(source)).release()
        except VideoError as error:
            raise UserError(f"source={source}: {error}") from None
        name = f"webcam{source}"
        return [], [Input(int(source), name, f"{name}.mp4", name)]
    if not path.exists():
        raise UserError(
            f"source={config.source}: no such file or folder (nor a webcam index); give an "
            "image, a folder, a video file or a webcam index such as 0."
        )
    found: list[tuple[Path, str, bool]] = []  # path, name, is_video
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in item.relative_to(path).parts):
                continue
            suffix = item.suffix.lower()
            if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
                found.append((item, item.relative_to(path).as_posix(), suffix in VIDEO_SUFFIXES))
            else:
                summary.skipped.append(str(item))
                report(f"{item}: skipped, not an image or video file (suffix {suffix!r}).")
    else:
        found.append((path, path.name, path.suffix.lower() in VIDEO_SUFFIXES))
    names = OutputNames(reserved=(PREDICTIONS_JSONL, PREDICTIONS_CSV, TRACKS_CSV))
    outputs = plan_output_names([(name, is_video) for _, name, is_video in found], names)
    crop_names = OutputNames()
    images, videos = [], []
    for item, name, is_video in found:
        entry = Input(item, name, outputs[name], crop_names.claim(name))
        (videos if is_video else images).append(entry)
    return images, videos


@dataclass(frozen=True)
class Destination:
    """Where one run writes: staging folders for the results (and the crops), moved into
    place when the run ends."""

    results: StagedRun
    crops: StagedRun | None

    @property
    def output_dir(self) -> Path:
        return self.results.path

    @property
    def save_faces(self) -> Path | None:
        return None if self.crops is None else self.crops.path

    def shown(self, text: str) -> str:
        """``text`` with the staging folders named as the folders they become."""
        for staged in (self.results, self.crops):
            if staged is not None:
                text = text.replace(str(staged.path), str(staged.target))
        return text

    def discard(self) -> None:
        for staged in (self.results, self.crops):
            if staged is not None:
                staged.discard()


def run(
    config: PredictConfig,
    recognizer: EmotionRecognizer,
    images: list[Input],
    videos: list[Input],
    summary: RunSummary,
) -> int:
    """Run ``recognizer`` on the inputs into staging folders, then move them into place;
    prints a summary, returns the status.

    A write error (a full disk) ends the run and keeps nothing of it; Ctrl-C keeps what was
    done where the output folder was free, marked ``INCOMPLETE.txt`` (a webcam's run ends with
    Ctrl-C: that is its normal end)."""
    results = StagedRun(Path(config.output_dir), unique=config.output_dir_is_default)
    crops = None if config.save_faces is None else StagedRun(Path(config.save_faces))
    where = Destination(results, crops)
    # Timeline plots share the output folder's names with the annotated copies.
    names = OutputNames(
        [PREDICTIONS_JSONL, PREDICTIONS_CSV, TRACKS_CSV, *(i.output for i in images + videos)]
    )
    interrupted = False
    people: list[pd.DataFrame] = []  # tracks.csv's rows, per video
    try:
        temperature = recognizer.classifier.temperature  # None: not applied
        with PredictionFiles(where.output_dir, recognizer.labels, temperature) as files:
            run_images(config, recognizer, images, where, files, summary)
            for video in videos:
                timeline = names.claim(video.name + TIMELINE_SUFFIX)
                run_video(config, recognizer, video, timeline, where, files, summary, people)
    except OutputWriteError as error:
        where.discard()
        summary.failed.append(where.shown(str(error.path)))
        report(f"error: {where.shown(str(error))}")
        report(f"{summary.line()}. Nothing of this run was kept.")
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:
        interrupted = not (videos and isinstance(videos[0].path, int))
    try:
        if config.tracking is not None and videos:
            write_tracks(where.output_dir / TRACKS_CSV, people, recognizer.labels)
    except OutputWriteError as error:
        where.discard()
        report(f"error: {where.shown(str(error))}")
        return EXIT_SOME_FAILED
    complete = not interrupted
    note = (
        f"This fer-predict run was interrupted: {summary.line()}. The files here are only "
        "what it finished before that; run it again for every input."
    )
    try:
        placed = results.finish(complete, note)
        if crops is not None:
            crops.finish(complete, note)
    except OutputWriteError as error:
        where.discard()
        report(f"error: {error}")
        return EXIT_SOME_FAILED
    if placed is None:
        report(f"interrupted: {summary.line()}. {config.output_dir} keeps its earlier run.")
        return EXIT_SOME_FAILED
    if interrupted:
        report(f"interrupted: {summary.line()}. Results so far in {placed} (INCOMPLETE.txt).")
        return EXIT_SOME_FAILED
    report(f"{summary.line()}. Results in {placed}")
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def write_tracks(path: Path, people: list[pd.DataFrame], labels: tuple[str, ...]) -> None:
    """tracks.csv: the videos' people tables one after the other (a header only when no face
    was tracked)."""
    empty = tracks_table(frame_table([], labels), labels)
    table = pd.concat([empty, *people], ignore_index=True) if people else empty
    write_bytes(
        path, table.to_csv(index=False, lineterminator="\n").encode("utf-8", "backslashreplace")
    )


def report(message: str) -> None:
    """One line per problem, above any progress bar."""
    tqdm.write(printable(message), file=sys.stderr)


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of odd file names as escapes (``caf\\udce9.jpg``), so
    that any console or log can take it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def face_lines(name: str, faces: list) -> list[str]:
    """What a person reads for one image: ``face.jpg: happiness 86% at (10, 20, 90, 110)``
    per face, or ``blank.png: no face``."""
    if not faces:
        return [f"{name}: no face"]
    lines = []
    for index, face in enumerate(faces):
        which = f" face {index + 1}" if len(faces) > 1 else ""
        box = ", ".join(str(int(v)) for v in face.box)
        lines.append(f"{name}{which}: {face.label} {100 * face.confidence:.0f}% at ({box})")
    return lines


def run_images(
    config: PredictConfig,
    recognizer: EmotionRecognizer,
    inputs: list[Input],
    where: Destination,
    files: PredictionFiles,
    summary: RunSummary,
) -> None:
    """Images in groups of ``config.image_batch`` (or fewer, when their pixels add up to
    ``GROUP_MAX_PIXELS``): read and detect each (reporting failures), then all faces of the
    group through the network together. Up to ``PRINT_FACES_UP_TO`` images, each face's label
    is printed too."""
    progress = tqdm(total=len(inputs), unit="img", disable=len(inputs) < 2, file=sys.stderr)
    good: list[tuple[Input, np.ndarray, list]] = []
    print_faces = len(inputs) <= PRINT_FACES_UP_TO

    def flush() -> None:
        if not good:
            return
        items, images, detections = zip(*good, strict=True)
        crop_names = [item.crops for item in items]
        faces = recognizer.recognize(images, detections, where.save_faces, crop_names)
        explained = (
            recognizer.explain_detected(images, detections)
            if config.explain
            else [None] * len(images)
        )
        for item, image, image_faces, why in zip(items, images, faces, explained, strict=True):
            summary.images += 1
            summary.faces += len(image_faces)
            summary.without_faces += not image_faces
            output = item.output if config.draw else None
            rows = face_rows(image_faces, item.name, output) or [no_face_row(item.name, output)]
            if why:
                overlay = item.output + EXPLAIN_SUFFIX
                write_image(where.output_dir / overlay, recognizer.draw_explanations(image, why))
                for row in rows:
                    row[EXPLAIN_KEY] = overlay
            files.write(rows)
            if config.draw:
                write_image(where.output_dir / item.output, recognizer.draw(image, image_faces))
            if print_faces:
                for line in face_lines(item.name, image_faces):
                    tqdm.write(printable(line))
        good.clear()

    # A group holds at most image_batch images and GROUP_MAX_PIXELS decoded pixels, so that
    # memory is bounded by pixels, not by a count of possibly huge photos.
    pixels = 0
    for item in inputs:
        try:
            image = read_image(item.path)
            good.append((item, image, recognizer.detector.detect(image)))
            pixels += image.shape[0] * image.shape[1]
        except ImageError as error:
            summary.failed.append(str(item.path))
            report(f"error: {error}")
        except Exception as error:  # a detector crashing on one image must not end the run
            summary.failed.append(str(item.path))
            report(f"error: {item.path}: {type(error).__name__}: {error}")
        if len(good) >= config.image_batch or pixels >= GROUP_MAX_PIXELS:
            flush()
            pixels = 0
        progress.update(1)
    flush()
    progress.close()


def run_video(
    config: PredictConfig,
    recognizer: EmotionRecognizer,
    video: Input,
    timeline: str,
    where: Destination,
    files: PredictionFiles,
    summary: RunSummary,
    people: list[pd.DataFrame] | None = None,
) -> None:
    """One video file or webcam: the annotated video, one row per face of each analysed
    frame, the emotions-over-time plot and a line with the share of each emotion. With
    tracking, its people (:func:`tracks_table`) are added to ``people``. A webcam stopped with
    Ctrl-C (its normal end) gets its plot and people too, then the interrupt goes on."""
    try:
        capture = open_capture(video.path)
    except VideoError as error:
        summary.failed.append(str(video.path))
        report(f"error: {error}")
        return
    total = frame_count(capture)
    capture.release()
    if config.max_frames is not None and total is not None:
        total = min(total, config.max_frames)
    output = video.output if config.draw else None
    save_faces = None if where.save_faces is None else where.save_faces / video.crops
    frames = predict_video(
        recognizer,
        video.path,
        where.output_dir / video.output if config.draw else None,
        max_frames=config.max_frames,
        every_n_frames=config.every_n_frames,
        recycle_every=config.recycle_every,
        save_faces=save_faces,
        tracking=config.tracking,
    )
    progress = tqdm(total=total, unit="frame", desc=printable(video.name), file=sys.stderr)
    rows: list[dict[str, Any]] = []
    analysed = 0
    stopped: KeyboardInterrupt | None = None
    try:
        for result in _guarded(frames, video.path, summary):
            analysed += 1
            summary.faces += len(result.faces)
            frame_rows = face_rows(result.faces, video.name, output, result.index, result.time_s)
            files.write(frame_rows)
            rows += frame_rows
            progress.update(result.index + 1 - progress.n)
        summary.videos += 1
    except KeyboardInterrupt as interrupt:
        if not isinstance(video.path, int):
            raise
        stopped = interrupt
        summary.videos += 1
    finally:
        progress.close()
        summary.frames += analysed
    table = frame_table(rows, recognizer.labels)
    if analysed:
        title = f"{video.name}: emotions over time ({analysed} frames analysed)"
        figure = emotion_timeline_figure(table, recognizer.labels, title)
        write_bytes(where.output_dir / timeline, figure_png(figure))
        shares = shares_line(emotion_shares(table, recognizer.labels))
        with_faces = table["frame"].nunique()
        line = f"{video.name}: {analysed} frames analysed, faces in {with_faces}; {shares}"
        if config.tracking is not None:
            count = int(table["track_id"].nunique())
            line += f"; {count} {'person' if count == 1 else 'people'} (tracks)"
        report(line)
    if config.tracking is not None and people is not None:
        people.append(tracks_table(table, recognizer.labels))
    if stopped is not None:
        raise stopped


def _guarded(frames: Iterator, source: Path | int, summary: RunSummary) -> Iterator:
    """The frames, with a failure mid-video (or a video that ends early) reported instead of
    raised; output write errors go on up (they end the run)."""
    try:
        yield from frames
    except OutputWriteError:
        raise
    except (VideoError, OSError, RuntimeError) as error:
        summary.failed.append(str(source))
        report(f"error: {error}" if str(source) in str(error) else f"error: {source}: {error}")


main = hydra_entry("predict", run_task)

if __name__ == "__main__":
    main()
