"""The options of the model a command loads (``conf/recognizer/``): one schema, checked once,
and the one builder that turns them into an :class:`EmotionRecognizer`.

``conf/recognizer/checkpoint.yaml`` (ckpt_path, arch, input_size) is what fer-export and
fer-eval read; ``conf/recognizer/default.yaml`` adds the face detector, device, precision and
crop that fer-predict and fer-serve share. Both are merged at the top level of the command's
config, so users type ``ckpt_path=``, ``margin=``, ``detector=dlib`` as before.

Every value is checked here, before anything is loaded or written, with a :class:`UserError`
naming the key and the value. Loading then turns only the errors a user can cause (a missing or
unreadable checkpoint, a detector or device this machine does not have) into one; anything
else (an out-of-memory error, a bug) keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fer_lightning.cli.config import raw_override
from fer_lightning.cli.errors import USER_ERRORS, UserError, config_number
from fer_lightning.faces.crop import DEFAULT_MARGIN
from fer_lightning.faces.detectors import DETECTORS, FaceDetector
from fer_lightning.inference.backends import EmotionClassifier, OnnxClassifier, TorchClassifier
from fer_lightning.inference.recognizer import EmotionRecognizer, detector_for_recognizer
from fer_lightning.models.checkpoints import load_model
from fer_lightning.models.presets import check_input_size
from fer_lightning.runtime import PRECISION_CHOICES

DETECTOR_CHOICES = ("auto", *DETECTORS)


def required_text(cfg: DictConfig, key: str, example: str) -> str:
    """The text typed for the mandatory ``key``; a :class:`UserError` with ``example`` (a whole
    command line) when it was not given."""
    if OmegaConf.is_missing(cfg, key):
        raise UserError(f"{key} is required: {example}")
    return raw_override(key, OmegaConf.select(cfg, key))


def checked_input_size(cfg: DictConfig) -> int | None:
    """``input_size``: null, or a multiple of 32."""
    size = config_number(cfg, "input_size", int, optional=True, minimum=1)
    if size is not None:
        try:
            check_input_size(size)
        except ValueError as error:
            raise UserError(f"input_size={size}: {error}") from None
    return size


@dataclass(frozen=True)
class CheckpointOptions:
    """``conf/recognizer/checkpoint.yaml`` as plain values (the path as typed)."""

    ckpt_path: str
    arch: str | None
    input_size: int | None

    @classmethod
    def checkpoint_fields(cls, cfg: DictConfig, example: str) -> dict[str, Any]:
        """The checked checkpoint keys; ``example`` is the command line shown when
        ``ckpt_path`` is missing."""
        arch = OmegaConf.select(cfg, "arch")
        return {
            "ckpt_path": required_text(cfg, "ckpt_path", example),
            "arch": None if arch is None else str(arch),
            "input_size": checked_input_size(cfg),
        }

    @classmethod
    def from_hydra(cls, cfg: DictConfig, example: str) -> CheckpointOptions:
        return cls(**cls.checkpoint_fields(cfg, example))


@dataclass(frozen=True)
class RecognizerOptions(CheckpointOptions):
    """``conf/recognizer/default.yaml``: the checkpoint, the face detector and how faces are
    cropped and run. fer-predict's and fer-serve's configs extend it."""

    detector: str
    detector_model: str | None
    min_score: float | None
    device: str
    precision: str
    margin: float
    align_faces: bool
    calibrate: bool

    @classmethod
    def recognizer_fields(cls, cfg: DictConfig, example: str) -> dict[str, Any]:
        """The checked values of every recogniser key of ``cfg``."""
        detector = str(cfg.detector.name).lower().replace("-", "_")
        if detector not in DETECTOR_CHOICES:
            raise UserError(f"detector={detector}: choose one of {', '.join(DETECTOR_CHOICES)}.")
        model_path = cfg.detector.model_path
        precision = str(cfg.precision)
        if precision not in PRECISION_CHOICES:
            raise UserError(f"precision={precision}: choose one of {', '.join(PRECISION_CHOICES)}.")
        margin = config_number(cfg, "margin", float, optional=True, minimum=0)
        return {
            **cls.checkpoint_fields(cfg, example),
            "detector": detector,
            "detector_model": None
            if model_path is None
            else raw_override("detector.model_path", model_path),
            "min_score": config_number(
                cfg, "detector.min_score", float, optional=True, minimum=0, maximum=1
            ),
            "device": checked_device(str(cfg.device)),
            "precision": precision,
            "margin": DEFAULT_MARGIN if margin is None else margin,
            "align_faces": bool(cfg.align_faces),
            "calibrate": bool(cfg.get("calibrate", True)),
        }

    @classmethod
    def from_hydra(cls, cfg: DictConfig, example: str) -> RecognizerOptions:
        return cls(**cls.recognizer_fields(cfg, example))


def checked_device(name: str) -> str:
    """``name`` if torch can read it as a device (``auto``, ``gpu``, ``cpu``, ``cuda:1``...).
    Whether this machine has it is checked when the model is loaded."""
    if name not in ("auto", "gpu"):
        try:
            torch.device(name)
        except (RuntimeError, ValueError):  # torch's two ways of refusing a device string
            raise UserError(
                f"device={name}: not a device name; use auto, cpu, cuda or cuda:N."
            ) from None
    return name


def load_classifier(options: RecognizerOptions, batch_size: int) -> EmotionClassifier:
    """The network of ``options.ckpt_path``: an ONNX Runtime session for ``.onnx`` files, else
    the checkpoint under PyTorch on ``options.device``."""
    path = options.ckpt_path
    if not path.startswith("pretrained:") and Path(path).suffix.lower() == ".onnx":
        onnx_path = Path(path).expanduser()
        if not onnx_path.is_file():
            raise UserError(f"ckpt_path={path}: the ONNX model does not exist.")
        try:
            return OnnxClassifier(onnx_path, batch_size=batch_size, calibrate=options.calibrate)
        except ImportError as error:
            raise UserError(str(error)) from None
        except ValueError as error:  # the reader's way of saying the file is not usable
            raise UserError(str(error)) from None
    model = load_model(
        path if path.startswith("pretrained:") else Path(path).expanduser(), arch=options.arch
    )
    return TorchClassifier(
        model,
        options.device,
        options.precision,
        options.input_size,
        batch_size,
        calibrate=options.calibrate,
    )


def build_recognizer(
    options: RecognizerOptions, batch_size: int, detectors: int = 1
) -> tuple[EmotionRecognizer, list[FaceDetector]]:
    """The recogniser ``options`` describe, running ``batch_size`` faces per network call, and
    ``detectors`` face detectors (the recogniser's own first). The user's mistakes (a missing
    or unreadable checkpoint, a detector or device that is not there) raise :class:`UserError`.
    """
    detector_options: dict[str, object] = {}
    if options.min_score is not None:
        detector_options["min_score"] = options.min_score
    if options.detector_model is not None:
        detector_options["model_path"] = options.detector_model
    try:
        found = [
            detector_for_recognizer(options.detector, **detector_options) for _ in range(detectors)
        ]
        classifier = load_classifier(options, batch_size)
    except USER_ERRORS as error:
        raise UserError(str(error)) from None
    recognizer = EmotionRecognizer(classifier, found[0], options.margin, options.align_faces)
    return recognizer, found
