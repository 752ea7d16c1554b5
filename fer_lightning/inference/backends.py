"""Networks that turn 48x48 face crops into emotion probabilities: PyTorch or ONNX Runtime.

Both take (N, 48, 48) uint8 crops and return (N, num_classes) float32 probabilities; both make
the network input with :func:`fer_lightning.data.to_model_input`, the training preprocessing.
"""

from __future__ import annotations

import copy
import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fer_lightning.faces.transforms import to_model_input
from fer_lightning.labels import EMOTIONS
from fer_lightning.models import num_classes_of
from fer_lightning.models.calibration import Calibration, calibrated_probabilities
from fer_lightning.models.presets import check_input_size, default_input_size
from fer_lightning.models.provenance import ModelProvenance
from fer_lightning.runtime import autocast, resolve_device, resolve_precision

log = logging.getLogger(__name__)

#: The ONNX metadata key of the fitted temperature (fer-export writes it; ``calibration`` is
#: taken by the int8 quantisation settings).
TEMPERATURE_KEY = "temperature_scaling"

# Folding batch norms into convolutions changes logits only by float rounding.
FOLD_TOLERANCE = 1e-3


def fold_batchnorms(model: nn.Module, input_size: int) -> nn.Module:
    """An inference copy of ``model`` with each eval-mode BatchNorm2d that directly follows a
    Conv2d folded into it (one convolution instead of two passes over the activations).

    Pairs are found by structure: consecutive ``Conv2d``/``BatchNorm2d`` in a ``Sequential``,
    and sibling ``conv<k>``/``bn<k>`` attributes (torchvision's ResNet blocks). The latter
    assumes ``bn<k>`` is applied right after ``conv<k>``, so the folded copy is checked
    against the original on a random batch and ``model`` itself is returned if they differ.
    """
    folded = copy.deepcopy(model).eval()
    pairs = 0
    for parent in list(folded.modules()):
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            candidates = list(zip(children, list(children)[1:], strict=False))
        else:
            candidates = [(name, "bn" + name[4:]) for name in children if name.startswith("conv")]
        for conv_name, bn_name in candidates:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                pairs += 1
    if pairs == 0:
        return model
    device = next(model.parameters()).device
    x = torch.rand(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        original, fused = model.eval()(x.to(device)), folded(x.to(device))
    difference = float((original - fused).abs().max())
    if difference > FOLD_TOLERANCE * max(1.0, float(original.abs().max())):
        log.warning("Not folding batch norms: the folded network differs by %.2g.", difference)
        return model
    return folded


class EmotionClassifier(ABC):
    """(N, 48, 48) uint8 face crops -> (N, num_classes) float32 probabilities."""

    labels: tuple[str, ...] = EMOTIONS
    input_size: int = default_input_size()
    batch_size: int = 32
    #: What the model is (architecture, origin, training data); ``None`` when not recorded.
    provenance: ModelProvenance | None = None
    #: The temperature recorded with the model (``None``: it has none) and whether it is applied
    #: (probabilities ``softmax(logits / T)``); ``calibrate=False`` leaves it unapplied.
    calibration: Calibration | None = None
    calibrated: bool = False

    @property
    def temperature(self) -> float | None:
        """The temperature the probabilities are computed with; ``None`` when none is applied."""
        return self.calibration.temperature if self.calibrated and self.calibration else None

    def calibration_info(self) -> dict[str, object]:
        """Whether the probabilities are calibrated, and by what (JSON-ready): ``applied``,
        ``temperature`` (recorded with the model, ``None`` without one), ``fitted_on``,
        ``split``."""
        record = self.calibration
        return {
            "applied": self.temperature is not None,
            "temperature": None if record is None else record.temperature,
            "fitted_on": None if record is None else record.fitted_on,
            "split": None if record is None else record.split,
        }

    def calibration_note(self) -> str:
        """One line for the logs: which probabilities come out."""
        if self.calibration is None:
            return "probabilities not calibrated: the model has no fitted temperature"
        if not self.calibrated:
            return (
                f"probabilities not calibrated: calibrate=false leaves the model's "
                f"{self.calibration.summary()} unapplied"
            )
        return f"probabilities calibrated with {self.calibration.summary()}"

    def _set_calibration(self, calibration: Calibration | None, calibrate: bool) -> None:
        self.calibration = calibration
        self.calibrated = bool(calibrate) and calibration is not None
        log.info("%s", self.calibration_note())

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if crops.ndim != 3:
            raise ValueError(f"Expected (N, H, W) crops, got shape {crops.shape}.")
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        chunks = [
            self._probabilities(crops[i : i + self.batch_size])
            for i in range(0, len(crops), self.batch_size)
        ]
        return np.concatenate(chunks).astype(np.float32)

    @abstractmethod
    def _probabilities(self, crops: np.ndarray) -> np.ndarray: ...


class TorchClassifier(EmotionClassifier):
    """A PyTorch network on ``device``; ``bf16`` runs it under autocast (logits in fp32).

    ``fold_batchnorm`` runs a copy with batch norms folded into the convolutions (checked to
    give the same logits; the model passed in is left as it is). The temperature the model
    carries (``model.calibration``, set by ``load_model``) divides the logits unless
    ``calibrate`` is false.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        precision: str = "auto",
        input_size: int | None = None,
        batch_size: int = 32,
        fold_batchnorm: bool = True,
        calibrate: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.input_size = int(
            input_size
            or getattr(model, "input_size", None)
            or default_input_size(getattr(model, "arch", None))
        )
        self.batch_size = int(batch_size)
        self.model = model.eval().to(self.device)
        if fold_batchnorm:
            self.model = fold_batchnorms(self.model, self.input_size)
        if self.device.type == "cpu":
            # oneDNN's convolutions prefer NHWC on CPU.
            self.model = self.model.to(memory_format=torch.channels_last)
        self.labels = model_labels(model, num_classes_of(self.model))
        self.provenance = getattr(model, "provenance", None)
        self._set_calibration(getattr(model, "calibration", None), calibrate)

    @torch.inference_mode()
    def _probabilities(self, crops: np.ndarray) -> np.ndarray:
        faces = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        x = to_model_input(faces, self.input_size)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            logits = self.model(x)
        return calibrated_probabilities(logits, self.temperature).cpu().numpy()

    def __repr__(self) -> str:
        arch = getattr(self.model, "arch", type(self.model).__name__)
        return (
            f"TorchClassifier({arch}, device={self.device}, precision={self.precision}, "
            f"input_size={self.input_size}, temperature={self.temperature})"
        )


class OnnxClassifier(EmotionClassifier):
    """An exported ONNX model (``fer-export``) under ONNX Runtime on the CPU."""

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 32,
        threads: int | None = None,
        calibrate: bool = True,
    ):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ImportError(
                "Running an .onnx model needs onnxruntime: pip install 'fer-lightning[onnx]'"
            ) from error
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime's own exception types, by file problem
            raise ValueError(f"{self.path}: not a loadable ONNX model ({error}).") from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.input_size = self._input_size(model_input.shape, metadata)
        self.labels = self._labels(self.session.get_outputs()[0].shape, metadata)
        self.arch = metadata.get("arch", "unknown")
        self.provenance = self._provenance(metadata)
        self.batch_size = int(batch_size)
        self._outputs = [output.name for output in self.session.get_outputs()]
        self._set_calibration(self._calibration(metadata), calibrate)

    def _calibration(self, metadata: dict[str, str]) -> Calibration | None:
        """The ``temperature_scaling`` metadata (JSON) that fer-export writes for a model with a
        fitted temperature; ``None`` for files without one."""
        if TEMPERATURE_KEY not in metadata:
            return None
        try:
            return Calibration.from_dict(json.loads(metadata[TEMPERATURE_KEY]))
        except ValueError as error:
            raise ValueError(
                f"{self.path}: its {TEMPERATURE_KEY!r} metadata is not readable ({error}); "
                "export it again with fer-export."
            ) from None

    def _provenance(self, metadata: dict[str, str]) -> ModelProvenance | None:
        """The ``provenance`` metadata (JSON) that fer-export writes; ``None`` in files exported
        before it was recorded. ``path`` names this file, the ``.onnx`` that was loaded."""
        if "provenance" not in metadata:
            return None
        try:
            recorded = ModelProvenance.from_json(metadata["provenance"])
        except ValueError as error:
            raise ValueError(
                f"{self.path}: its 'provenance' metadata is not readable ({error}); export it "
                "again with fer-export."
            ) from None
        return ModelProvenance(
            recorded.arch, recorded.origin, recorded.training_data, str(self.path)
        )

    def _input_size(self, shape: list, metadata: dict[str, str]) -> int:
        """The square input side, from the graph or its metadata; a multiple of 32."""
        size = shape[-1] if len(shape) == 4 else None
        value: object = size if isinstance(size, int) else metadata.get("input_size")
        try:
            return check_input_size(int(str(value)), name="its input size")
        except ValueError as error:
            raise ValueError(
                f"{self.path}: {error} (got {value!r}); export it again with fer-export."
            ) from None

    def _labels(self, output_shape: list, metadata: dict[str, str]) -> tuple[str, ...]:
        """Class names from the metadata; they must match the number of outputs."""
        outputs = output_shape[-1] if output_shape and isinstance(output_shape[-1], int) else None
        if "labels" not in metadata:
            return EMOTIONS if outputs in (None, len(EMOTIONS)) else _generic_labels(outputs)
        try:
            labels = json.loads(metadata["labels"])
        except ValueError:
            labels = None
        if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise ValueError(f"{self.path}: its 'labels' metadata is not a list of names.")
        if outputs is not None and len(labels) != outputs:
            raise ValueError(
                f"{self.path}: {len(labels)} labels in its metadata for {outputs} outputs; "
                "export it again with fer-export."
            )
        return tuple(labels)

    def _probabilities(self, crops: np.ndarray) -> np.ndarray:
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(crops)), self.input_size)
        feed = {self.input_name: x.numpy()}
        if self.temperature is not None and "probabilities" in self._outputs:
            # The graph applies the temperature (fer-export writes this output with it).
            (probs,) = self.session.run(["probabilities"], feed)
            return np.asarray(probs, dtype=np.float32)
        (logits,) = self.session.run([self._outputs[0]], feed)
        return calibrated_probabilities(torch.from_numpy(logits), self.temperature).numpy()

    def __repr__(self) -> str:
        return (
            f"OnnxClassifier({self.path}, arch={self.arch}, input_size={self.input_size}, "
            f"temperature={self.temperature})"
        )


def _generic_labels(num_classes: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(num_classes))


def model_labels(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    """The class names of ``model``: its ``label_names`` (``load_model`` sets them from this
    project's checkpoints) when they fit its outputs, else FER2013's 7 emotions for 7 outputs,
    else ``class_<i>``."""
    names = getattr(model, "label_names", None)
    if isinstance(names, list | tuple) and len(names) == num_classes:
        return tuple(str(name) for name in names)
    return EMOTIONS if num_classes == len(EMOTIONS) else _generic_labels(num_classes)
