"""Export a network to ONNX, and check it against PyTorch under ONNX Runtime.

The ONNX model takes ``faces``: (N, 3, S, S) float32 in [0, 1], exactly what
:func:`fer_lightning.faces.transforms.to_model_input` makes from 48x48 crops, with a dynamic
batch N, and returns ``logits`` (N, num_classes). Its metadata records ``arch``, ``input_size``
and the ``labels``, which :class:`fer_lightning.inference.OnnxClassifier` reads back.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_lightning.inference.backends import model_labels
from fer_lightning.models import num_classes_of

# The lowest opset with the operators these networks need and a dynamic batch axis.
MIN_OPSET = 13
PARITY_TOLERANCE = 1e-4


def export_onnx(model: nn.Module, path: str | Path, input_size: int, opset: int) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX with a dynamic batch; returns the path.

    The file is written under a temporary name and renamed into place once complete, so a
    failed export leaves nothing at ``path``."""
    import onnx  # noqa: F401  (torch.onnx needs it; fail early with a clear message)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        _export(model.eval().cpu(), partial, input_size, opset)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _export(model: nn.Module, path: Path, input_size: int, opset: int) -> None:
    example = torch.rand(2, 3, input_size, input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about constant shapes
        # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript and, with
        # torch 2.13 here, gave no advantage for these plain convolutional networks.
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["faces"],
            output_names=["logits"],
            dynamic_axes={"faces": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    _write_metadata(path, model, input_size)


def _write_metadata(path: Path, model: nn.Module, input_size: int) -> None:
    import onnx

    proto = onnx.load(str(path))
    labels = list(model_labels(model, num_classes_of(model)))
    entries = {
        "arch": str(getattr(model, "arch", type(model).__name__)),
        "input_size": str(input_size),
        "labels": json.dumps(labels),
        "preprocessing": "48x48 grayscale face -> bilinear resize -> 3 equal channels, [0, 1]",
    }
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
    (actual,) = session.run(None, {"faces": x.numpy()})
    return float(np.abs(actual - expected).max())
