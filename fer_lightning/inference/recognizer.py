"""Faces in, emotions out: detection, training-identical crops, batched network, results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fer_lightning.faces.crop import DEFAULT_MARGIN, crop_faces, crop_matrix
from fer_lightning.faces.detector_worker import RecycledDetector
from fer_lightning.faces.detectors import Detection, FaceDetector, create_detector
from fer_lightning.faces.images import load_image
from fer_lightning.inference.backends import (
    EmotionClassifier,
    OnnxClassifier,
    TorchClassifier,
)
from fer_lightning.inference.drawing import draw_explanations, draw_faces
from fer_lightning.inference.explain import FaceExplanation, explain_crops
from fer_lightning.inference.outputs import write_image
from fer_lightning.inference.predictions import FacePrediction
from fer_lightning.inference.tables import face_rows, frame_table
from fer_lightning.inference.video import video_table
from fer_lightning.models.checkpoints import load_model
from fer_lightning.models.provenance import ModelProvenance

__all__ = [
    "EmotionRecognizer",
    "FaceExplanation",
    "FacePrediction",
    "detector_for_recognizer",
    "save_face_crops",
]


def detector_for_recognizer(detector: FaceDetector | str, **options: object) -> FaceDetector:
    """The detector named ``detector`` with ``options`` (an instance is kept as it is);
    ``yunet`` runs in a recycled worker process (:class:`RecycledDetector`).

    yuface runs about 10x slower in a process that has imported torch (two OpenMP runtimes in
    one process) and leaks memory on every call; a worker process that is replaced now and
    then avoids both (figures: benchmarks/README.md).
    """
    if not isinstance(detector, str):
        return detector
    created = create_detector(detector, **options)
    if created.name == "yunet":
        return RecycledDetector("yunet", min_score=created.min_score, max_side=created.max_side)
    return created


class EmotionRecognizer:
    """Detects faces and recognises their emotion.

    >>> recognizer = EmotionRecognizer.from_checkpoint("best.ckpt")
    >>> faces = recognizer.predict("photo.jpg")      # [FacePrediction(box=..., label=...)]
    >>> annotated = recognizer.draw("photo.jpg", faces)

    ``margin`` widens the square crop around each box (0.1: 1.2 times the box's longer side,
    as the dataset converter crops); ``align_faces`` rotates faces so that the eyes are level
    when the detector gives landmarks.
    """

    def __init__(
        self,
        classifier: EmotionClassifier,
        detector: FaceDetector | str = "auto",
        margin: float = DEFAULT_MARGIN,
        align_faces: bool = True,
    ) -> None:
        self.classifier = classifier
        self.detector = detector_for_recognizer(detector)
        self.margin = float(margin)
        self.align_faces = bool(align_faces)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        detector: FaceDetector | str = "auto",
        *,
        arch: str | None = None,
        precision: str = "auto",
        input_size: int | None = None,
        batch_size: int = 32,
        calibrate: bool = True,
        **options: object,
    ) -> EmotionRecognizer:
        """A recogniser from a checkpoint: this project's Lightning ``.ckpt``, the published
        RMN format (a dict with ``"net"``), a bare state dict, or an exported ``.onnx`` file
        (run with onnxruntime on the CPU). ``precision``: ``auto`` (bf16 where the hardware
        runs it fast, else fp32), ``fp32`` or ``bf16``. ``options`` go to the constructor
        (``margin``, ``align_faces``). ``pretrained:<name>`` loads a published checkpoint
        (see :meth:`from_pretrained`). A temperature fitted after training (recorded in the
        checkpoint, ``model.pt`` or the ONNX metadata) calibrates the probabilities unless
        ``calibrate`` is false (:attr:`calibration` says which)."""
        # A pretrained: name goes to load_model as it is (as a Path it would be a file name).
        if not str(path).startswith("pretrained:"):
            path = Path(path).expanduser()
        if isinstance(path, Path) and path.suffix.lower() == ".onnx":
            if not path.is_file():
                raise FileNotFoundError(f"ONNX model {path} does not exist.")
            classifier: EmotionClassifier = OnnxClassifier(
                path, batch_size=batch_size, calibrate=calibrate
            )
        else:
            model = load_model(path, arch=arch)
            classifier = TorchClassifier(
                model, device, precision, input_size, batch_size, calibrate=calibrate
            )
        return cls(classifier, detector, **options)

    @classmethod
    def from_pretrained(
        cls,
        name: str = "resmasking_dropout1",
        device: str | torch.device = "auto",
        detector: FaceDetector | str = "auto",
        **kwargs: object,
    ) -> EmotionRecognizer:
        """A recogniser with the published weights ``name``, downloaded on first use into
        ``~/.cache/fer_lightning`` (``$FER_CACHE_DIR``); ``kwargs`` as for
        :meth:`from_checkpoint`."""
        return cls.from_checkpoint(f"pretrained:{name}", device, detector, **kwargs)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    @property
    def provenance(self) -> ModelProvenance | None:
        """What the model is (architecture, origin, training data); ``None`` when its file
        does not record it (an ONNX file exported before provenance was recorded)."""
        return getattr(self.classifier, "provenance", None)

    @property
    def calibration(self) -> dict[str, object]:
        """Whether the probabilities are calibrated by a fitted temperature (``applied``), and
        the temperature the model records (``temperature``, ``fitted_on``, ``split``; ``None``
        without one)."""
        return self.classifier.calibration_info()

    def detect(self, image: object) -> list[Detection]:
        """Faces in ``image`` (path, BGR/grayscale array or PIL image), without emotions."""
        return self.detector.detect(load_image(image))

    def predict(
        self, image: object, save_faces: str | Path | None = None, name: str | None = None
    ) -> list[FacePrediction]:
        """Faces and emotions in one image (a path, a BGR or grayscale numpy array, a PIL
        image); an empty list when there is no face. ``save_faces`` writes the 48x48 crops the
        network saw there as ``<name>_face<i>.png``."""
        return self.predict_batch([image], save_faces, None if name is None else [name])[0]

    def predict_batch(
        self,
        images: Iterable[object],
        save_faces: str | Path | None = None,
        names: Sequence[str] | None = None,
    ) -> list[list[FacePrediction]]:
        """:meth:`predict` for many images: every face of every image goes through the network
        in batches of ``classifier.batch_size``. One list of faces per image, in order."""
        images = list(images)
        bgr_images = [load_image(image) for image in images]
        detections = [self.detector.detect(image) for image in bgr_images]
        if save_faces is not None and names is None:
            names = [_default_name(image, i) for i, image in enumerate(images)]
        return self.recognize(bgr_images, detections, save_faces, names)

    def recognize(
        self,
        bgr_images: Sequence[np.ndarray],
        detections: Sequence[list[Detection]],
        save_faces: str | Path | None = None,
        names: Sequence[str] | None = None,
    ) -> list[list[FacePrediction]]:
        """Emotions of faces already found: ``detections[i]`` in ``bgr_images[i]`` (H, W, 3)
        BGR uint8. Used by the video path, which detects in a worker process."""
        crops = [
            crop_faces(image, found, self.margin, self.align_faces)
            for image, found in zip(bgr_images, detections, strict=True)
        ]
        if save_faces is not None:
            save_face_crops(crops, save_faces, names or [f"image{i}" for i in range(len(crops))])
        probs = self.classifier(np.concatenate(crops)) if crops else np.zeros((0, 0))
        results: list[list[FacePrediction]] = []
        start = 0
        for found in detections:
            image_probs = probs[start : start + len(found)]
            start += len(found)
            results.append(
                [self._prediction(d, p) for d, p in zip(found, image_probs, strict=True)]
            )
        return results

    def _prediction(self, detection: Detection, probs: np.ndarray) -> FacePrediction:
        labels = self.classifier.labels
        return FacePrediction(
            box=detection.box,
            score=detection.score,
            label=labels[int(np.argmax(probs))],
            probs={label: float(p) for label, p in zip(labels, probs, strict=True)},
            landmarks=detection.landmarks,
        )

    def explain(
        self,
        image: object,
        target: str | int | None = None,
        *,
        layer: str | None = None,
        method: str = "gradcam",
    ) -> list[FaceExplanation]:
        """Faces in one image (path, BGR or grayscale array, PIL image) with where the network
        looked: per face the box, the probabilities and the maps (Grad-CAM of ``target``, a
        label or class index, by default each face's predicted class; for the Residual Masking
        Networks also the four masks and their mean), float32 in [0, 1] over the 48x48 crop
        (``crop_maps``) and aligned with the image (``image_map(name)``, ``maps``). ``layer``
        and ``method`` choose the class map (see ``explain_crops`` in
        :mod:`fer_lightning.inference.explain`; by default Grad-CAM at the last stage). Needs
        a PyTorch model (not ONNX); runs in fp32."""
        return self.explain_batch([image], target, layer=layer, method=method)[0]

    def explain_batch(
        self,
        images: Iterable[object],
        target: str | int | None = None,
        *,
        layer: str | None = None,
        method: str = "gradcam",
    ) -> list[list[FaceExplanation]]:
        """:meth:`explain` for many images, the faces in batches of ``classifier.batch_size``."""
        bgr_images = [load_image(image) for image in images]
        detections = [self.detector.detect(image) for image in bgr_images]
        return self.explain_detected(bgr_images, detections, target, layer=layer, method=method)

    def explain_detected(
        self,
        bgr_images: Sequence[np.ndarray],
        detections: Sequence[list[Detection]],
        target: str | int | None = None,
        *,
        layer: str | None = None,
        method: str = "gradcam",
    ) -> list[list[FaceExplanation]]:
        """:meth:`explain` of faces already found: ``detections[i]`` in ``bgr_images[i]``
        (H, W, 3) BGR uint8."""
        classifier = self.classifier
        if not isinstance(classifier, TorchClassifier):
            raise ValueError(
                "explain needs a PyTorch model (a checkpoint or model.pt); "
                f"{type(classifier).__name__} cannot give gradients or masks."
            )
        target_index = self.class_index(target)
        # Every face of every image through the network in batches, as recognize does.
        crops = [
            crop_faces(image, found, self.margin, self.align_faces)
            for image, found in zip(bgr_images, detections, strict=True)
        ]
        all_crops = np.concatenate(crops) if crops else np.zeros((0, 48, 48), np.uint8)
        probs: list[np.ndarray] = []
        maps: list[dict[str, np.ndarray]] = []
        for start in range(0, len(all_crops), classifier.batch_size):
            batch_probs, batch_maps = explain_crops(
                classifier.model,
                all_crops[start : start + classifier.batch_size],
                classifier.input_size,
                target_index,
                classifier.temperature,
                layer,
                method,
            )
            probs += list(batch_probs)
            maps += [{k: v[i] for k, v in batch_maps.items()} for i in range(len(batch_probs))]
        results: list[list[FaceExplanation]] = []
        face = 0
        for image, found in zip(bgr_images, detections, strict=True):
            faces = []
            for detection in found:
                faces.append(
                    self._explanation(detection, probs[face], maps[face], image, target_index)
                )
                face += 1
            results.append(faces)
        return results

    def class_index(self, target: str | int | None) -> int | None:
        """The class index of ``target`` (a label, or an index as a number or digits);
        ``None`` stays ``None``. ``ValueError`` for an unknown label or an index out of range."""
        if target is None:
            return None
        labels = self.classifier.labels
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            if target not in labels:
                raise ValueError(f"Unknown target {target!r}; the labels are {', '.join(labels)}.")
            return labels.index(target)
        index = int(target)
        if not 0 <= index < len(labels):
            raise ValueError(f"Target class {index} is out of range 0-{len(labels) - 1}.")
        return index

    def _explanation(
        self,
        detection: Detection,
        probs: np.ndarray,
        crop_maps: dict[str, np.ndarray],
        image: np.ndarray,
        target: int | None,
    ) -> FaceExplanation:
        face = self._prediction(detection, probs)
        labels = self.classifier.labels
        return FaceExplanation(
            box=face.box,
            score=face.score,
            label=face.label,
            probs=face.probs,
            target=face.label if target is None else labels[target],
            crop_maps=crop_maps,
            matrix=crop_matrix(detection, self.margin, self.align_faces),
            image_shape=(int(image.shape[0]), int(image.shape[1])),
        )

    def predict_frame_table(
        self, images: object, names: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """:meth:`predict_batch` as a pandas DataFrame, one row per face: ``source`` (the path,
        or ``names[i]``, or ``image<i>`` for arrays), the box, ``score``, ``label`` and one
        column per emotion (the columns of predictions.csv; :mod:`.tables`). ``images``: one
        image (path, array, PIL image) or a list of them."""
        if isinstance(images, str | Path | np.ndarray) or not isinstance(images, Iterable):
            images = [images]
        images = list(images)
        if names is None:
            names = [
                str(image) if isinstance(image, str | Path) else f"image{i}"
                for i, image in enumerate(images)
            ]
        rows = []
        for name, faces in zip(names, self.predict_batch(images), strict=True):
            rows += face_rows(faces, name)
        return frame_table(rows, self.labels)

    def predict_video(
        self, source: str | Path | int, output_path: str | Path | None = None, **options: object
    ) -> pd.DataFrame:
        """Every analysed frame of a video file (or webcam index) as a DataFrame, one row per
        face with ``frame`` and ``time_s`` (the columns of predictions.csv), and each face's
        ``track_id`` and smoothed probabilities (``tracking=TrackingOptions(max_missed,
        min_iou, smoothing)``, on by default; ``tracking=None`` leaves those columns empty;
        ``tables.tracks_table`` makes tracks.csv's one row per person from it). ``output_path``
        writes the annotated video; ``options``: ``every_n_frames``, ``max_frames``,
        ``frame_batch``, ``save_faces``, ``tracking``
        (:func:`fer_lightning.inference.video.predict_video`). Raises ``TruncatedVideoError``
        for a file that ends before its announced length."""
        return video_table(self, source, output_path, **options)

    def draw(self, image: object, faces: Sequence[FacePrediction]) -> np.ndarray:
        """A BGR copy of ``image`` with each face's box, label and probability bars."""
        return draw_faces(load_image(image), faces)

    def draw_explanations(
        self, image: object, faces: Sequence[FaceExplanation], name: str = "gradcam"
    ) -> np.ndarray:
        """A BGR copy of ``image`` with each face's map ``name`` over it (JET colours), its
        box, label and score."""
        return draw_explanations(load_image(image), faces, name)

    def __repr__(self) -> str:
        return (
            f"EmotionRecognizer({self.classifier!r}, detector={self.detector!r}, "
            f"margin={self.margin}, align_faces={self.align_faces})"
        )


def save_face_crops(
    crops: Sequence[np.ndarray], directory: str | Path, names: Sequence[str]
) -> list[Path]:
    """Write ``crops[i]`` (N_i, 48, 48) uint8 as ``<directory>/<names[i]>_face<j>.png``
    (``names`` may hold sub-folders: ``a/x.jpg`` -> ``<directory>/a/x.jpg_face0.png``);
    ``OutputWriteError`` when a file cannot be written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for image_crops, name in zip(crops, names, strict=True):
        for j, crop in enumerate(image_crops):
            written.append(write_image(directory / f"{name}_face{j}.png", crop))
    return written


def _default_name(image: object, index: int) -> str:
    return Path(image).stem if isinstance(image, str | Path) else f"image{index}"
