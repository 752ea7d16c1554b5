"""Export a network to ONNX, and check it against PyTorch under ONNX Runtime.

The ONNX model takes ``faces``: (N, 3, S, S) float32 in [0, 1], exactly what
:func:`fer_lightning.faces.transforms.to_model_input` makes from 48x48 crops, with a dynamic
batch N, and returns ``logits`` (N, num_classes). Its metadata records ``arch``, ``input_size``
and the ``labels``, which :class:`fer_lightning.inference.OnnxClassifier` reads back. A model
with a fitted temperature (``model.calibration``) also returns ``probabilities``:
``softmax(logits / T)``, computed in the graph, and records the temperature in the metadata
(``temperature_scaling``: the JSON of :class:`fer_lightning.models.calibration.Calibration`).

:func:`quantize_int8` makes an int8 copy of such a file (ONNX Runtime static quantisation, QDQ
format, same input, output and metadata, plus ``quantization: int8``), which the recogniser runs
unchanged; :func:`compare_int8` measures how closely it follows the fp32 PyTorch model.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_lightning.faces.transforms import to_model_input
from fer_lightning.inference.backends import TEMPERATURE_KEY, model_labels
from fer_lightning.models import num_classes_of
from fer_lightning.models.calibration import Calibration

# The lowest opset with the operators these networks need and a dynamic batch axis.
MIN_OPSET = 13
PARITY_TOLERANCE = 1e-4


class _WithProbabilities(nn.Module):
    """``model``'s logits and ``softmax(logits / temperature)``: the graph applies the fitted
    temperature itself, so any ONNX runtime gets calibrated probabilities."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def export_onnx(
    model: nn.Module, path: str | Path, input_size: int, opset: int, calibrate: bool = True
) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX with a dynamic batch; returns the path. With a
    temperature (``model.calibration``) and ``calibrate``, the graph also returns the calibrated
    ``probabilities``.

    The file is written under a temporary name and renamed into place once complete, so a
    failed export leaves nothing at ``path``."""
    import onnx  # noqa: F401  (torch.onnx needs it; fail early with a clear message)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        calibration = getattr(model, "calibration", None) if calibrate else None
        _export(model.eval().cpu(), partial, input_size, opset, calibration)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _export(
    model: nn.Module, path: Path, input_size: int, opset: int, calibration: Calibration | None
) -> None:
    example = torch.rand(2, 3, input_size, input_size)
    graph: nn.Module = model
    outputs = ["logits"]
    if calibration is not None:
        graph = _WithProbabilities(model, calibration.temperature)
        outputs.append("probabilities")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about constant shapes
        # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript and, with
        # torch 2.13 here, gave no advantage for these plain convolutional networks.
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=["faces"],
            output_names=outputs,
            dynamic_axes={"faces": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            opset_version=opset,
            dynamo=False,
        )
    _write_metadata(path, model, input_size, calibration)


def _write_metadata(
    path: Path, model: nn.Module, input_size: int, calibration: Calibration | None = None
) -> None:
    import onnx

    proto = onnx.load(str(path))
    labels = list(model_labels(model, num_classes_of(model)))
    entries = {
        "arch": str(getattr(model, "arch", type(model).__name__)),
        "input_size": str(input_size),
        "labels": json.dumps(labels),
        "preprocessing": "48x48 grayscale face -> bilinear resize -> 3 equal channels, [0, 1]",
    }
    provenance = getattr(model, "provenance", None)
    if provenance is not None:
        # What the exported network is and learned from (ModelProvenance.to_json).
        entries["provenance"] = provenance.to_json()
    if calibration is not None:
        entries[TEMPERATURE_KEY] = json.dumps(calibration.to_dict())
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def onnx_parity(model: nn.Module, path: str | Path, input_size: int, batch: int = 3) -> float:
    """Max |PyTorch logits - ONNX Runtime logits| on a random batch (a batch size other than
    the export's, to exercise the dynamic axis)."""
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, input_size, input_size, generator=generator)
    with torch.no_grad():
        expected = model.eval().cpu()(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {"faces": x.numpy()})
    return float(np.abs(actual - expected).max())


# ----------------------------------------------------------------- int8
# Where the int8 model is accepted as a stand-in for fp32: top-1 agreement on held-out faces.
INT8_MIN_AGREEMENT = 0.99


@dataclass
class Int8Comparison:
    """How closely an int8 model follows the fp32 PyTorch model on held-out faces."""

    faces: int
    agreement: float  # share of faces with the same top-1 class
    max_prob_difference: float  # largest |p_int8 - p_fp32| over faces and classes
    fp32_bytes: int
    int8_bytes: int

    @property
    def size_ratio(self) -> float:
        """How many times smaller the int8 file is."""
        return self.fp32_bytes / self.int8_bytes

    def summary(self) -> str:
        return (
            f"int8 vs fp32 PyTorch on {self.faces} held-out faces: top-1 agreement "
            f"{self.agreement:.2%}, max probability difference {self.max_prob_difference:.3f}; "
            f"size {self.fp32_bytes / 1e6:.1f} MB -> {self.int8_bytes / 1e6:.1f} MB "
            f"({self.size_ratio:.2f}x smaller)"
        )


def _calibration_reader(faces: np.ndarray, input_size: int, batch: int):
    """ONNX Runtime's CalibrationDataReader over ``faces`` (N, 48, 48) uint8: batches of
    ``to_model_input``, the exact input the recogniser feeds the model."""
    from onnxruntime.quantization import CalibrationDataReader

    class FaceBatches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(faces), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            if start is None:
                return None
            chunk = torch.from_numpy(np.ascontiguousarray(faces[start : start + batch]))
            return {"faces": to_model_input(chunk, input_size).numpy()}

    return FaceBatches()


def quantize_int8(
    fp32_path: str | Path,
    path: str | Path,
    calibration_faces: np.ndarray,
    input_size: int,
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = True,
    float_ends: bool = True,
    batch: int = 16,
) -> Path:
    """Write an int8 copy of the fp32 ONNX model ``fp32_path`` at ``path``: ONNX Runtime's
    static quantisation in QDQ format, activation ranges calibrated on ``calibration_faces``
    (N, 48, 48) uint8. Input and output names and the metadata stay; the metadata adds
    ``quantization: int8``. Written under a temporary name, so a failure leaves nothing.

    ``reduce_range`` keeps weights to 7 bits: x86 CPUs without VNNI (AVX2 only) multiply
    uint8 by int8 with 16-bit saturation, which full-range weights overflow. ``float_ends``
    keeps the first convolution (it sees the raw pixels) and the final classifier (its error
    goes straight into the logits) in fp32: little of the work, much of the int8 error."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, not {method!r}.")
    if len(calibration_faces) == 0:
        raise ValueError("quantize_int8 needs at least one calibration face.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with tempfile.TemporaryDirectory(prefix="fer-int8-") as work:
        model_input = _pre_processed(Path(fp32_path), Path(work) / "prepared.onnx")
        keep_float = (_end_nodes(model_input) if float_ends else []) + _probability_nodes(
            model_input
        )
        try:
            quantize_static(
                str(model_input),
                str(partial),
                _calibration_reader(calibration_faces, input_size, batch),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
                nodes_to_exclude=keep_float,
                calibrate_method=methods[method],
            )
            quantized = onnx.load(str(partial))
            metadata = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
            settings = {
                "faces": len(calibration_faces),
                "method": method,
                "per_channel": per_channel,
                "reduce_range": reduce_range,
                "float_nodes": keep_float,
            }
            metadata.update(quantization="int8", calibration=json.dumps(settings))
            del quantized.metadata_props[:]
            for key, value in metadata.items():
                quantized.metadata_props.add(key=key, value=value)
            onnx.save(quantized, str(partial))
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
    return path


def _pre_processed(fp32_path: Path, work_path: Path) -> Path:
    """ONNX Runtime's recommended preparation (shape inference, graph optimisation) where this
    onnxruntime has it; else the fp32 model as it is."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        return fp32_path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32_path), str(work_path))
    return work_path


def _probability_nodes(path: Path) -> list[str]:
    """Names of the nodes that make the ``probabilities`` output of a model with a temperature
    (the division and softmax after the classifier): kept fp32, so that the int8 model's
    probabilities are exactly ``softmax(logits / T)`` of its logits."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if "probabilities" not in [output.name for output in graph.output]:
        return []
    last = max((i for i, n in enumerate(graph.node) if n.op_type in ("Gemm", "MatMul")), default=-1)
    return [n.name for n in graph.node[last + 1 :] if n.op_type in ("Div", "Softmax") and n.name]


def _end_nodes(path: Path) -> list[str]:
    """Names of the graph's first convolution and last Gemm/MatMul (the classifier); the
    nodes of an ONNX graph are stored in topological order."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")), None)
    return [name for name in (first, last) if name]


def compare_int8(
    model: nn.Module,
    int8_path: str | Path,
    faces: np.ndarray,
    input_size: int,
    fp32_path: str | Path | None = None,
    batch: int = 64,
) -> Int8Comparison:
    """Probabilities of the int8 ONNX model under ONNX Runtime against the fp32 PyTorch
    ``model`` on ``faces`` (N, 48, 48) uint8, which should not be the calibration faces.
    ``fp32_path``: the fp32 ONNX file, for the size comparison (default: the model's
    parameters and buffers at 4 bytes each)."""
    import onnxruntime as ort

    if len(faces) == 0:
        raise ValueError("compare_int8 needs at least one face.")
    session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    model = model.eval().cpu()
    fp32_probs, int8_probs = [], []
    for start in range(0, len(faces), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(faces[start : start + batch]))
        x = to_model_input(chunk, input_size)
        with torch.no_grad():
            fp32_probs.append(torch.softmax(model(x), dim=1).numpy())
        (logits,) = session.run(["logits"], {"faces": x.numpy()})
        int8_probs.append(torch.softmax(torch.from_numpy(logits).float(), dim=1).numpy())
    fp32, int8 = np.concatenate(fp32_probs), np.concatenate(int8_probs)
    if fp32_path is not None:
        fp32_bytes = Path(fp32_path).stat().st_size
    else:
        tensors = [*model.parameters(), *model.buffers()]
        fp32_bytes = 4 * sum(t.numel() for t in tensors if t.is_floating_point())
    return Int8Comparison(
        faces=len(faces),
        agreement=float((fp32.argmax(1) == int8.argmax(1)).mean()),
        max_prob_difference=float(np.abs(fp32 - int8).max()),
        fp32_bytes=int(fp32_bytes),
        int8_bytes=Path(int8_path).stat().st_size,
    )
