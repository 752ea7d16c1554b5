"""Export a trained network to ONNX, and check it against PyTorch under ONNX Runtime.

    python -m fer_lightning.export ckpt_path=best.ckpt format=onnx [output=model.onnx]

The ONNX model takes ``faces``: (N, 3, S, S) float32 in [0, 1], exactly what
:func:`fer_lightning.data.to_model_input` makes from 48x48 crops, with a dynamic batch N, and
returns ``logits`` (N, num_classes). Its metadata records ``arch``, ``input_size`` and the
``labels``, which :class:`fer_lightning.inference.EmotionRecognizer` reads back.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from fer_lightning.labels import EMOTIONS

ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export or its check failed; the message says why."""


@dataclass
class ExportConfig:
    """Options of ``python -m fer_lightning.export``."""

    ckpt_path: str = MISSING
    format: str = "onnx"  # only onnx for now
    output: str | None = None  # default: the checkpoint's path with .onnx
    arch: str | None = None
    input_size: int | None = None  # default: the checkpoint's, else 224
    opset: int = ONNX_OPSET
    check: bool = True  # compare with PyTorch under onnxruntime (if installed)


def export_onnx(
    model: nn.Module, path: str | Path, input_size: int, opset: int = ONNX_OPSET
) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX with a dynamic batch; returns the path."""
    import onnx  # noqa: F401  (torch.onnx needs it; fail early with a clear message)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
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
    return path


def _write_metadata(path: Path, model: nn.Module, input_size: int) -> None:
    import onnx

    proto = onnx.load(str(path))
    num_classes = int(model(torch.zeros(1, 3, input_size, input_size)).shape[1])
    labels = (
        list(EMOTIONS)
        if num_classes == len(EMOTIONS)
        else [f"class_{i}" for i in range(num_classes)]
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fer_lightning.export``; returns the exit status (0 ok, 1 failed, 2 usage)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExportConfig), OmegaConf.from_dotlist(argv))
        config: ExportConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        print("usage: python -m fer_lightning.export ckpt_path=PATH [format=onnx] [output=PATH]")
        return 2
    if config.format != "onnx":
        print(f"error: unsupported format {config.format!r}; only 'onnx'.", file=sys.stderr)
        return 2
    from fer_lightning.checkpoints import CheckpointError, load_model

    try:
        model = load_model(config.ckpt_path, arch=config.arch)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    input_size = int(config.input_size or getattr(model, "input_size", 224))
    output = Path(config.output or Path(config.ckpt_path).with_suffix(".onnx"))
    try:
        export_onnx(model, output, input_size, config.opset)
    except ImportError:
        print("error: exporting needs onnx: pip install 'fer-lightning[onnx]'", file=sys.stderr)
        return 1
    print(f"wrote {output} ({getattr(model, 'arch', '?')}, input {input_size}x{input_size})")
    if config.check:
        try:
            diff = onnx_parity(model, output, input_size)
        except ImportError:
            print("onnxruntime is not installed; skipped the parity check.")
            return 0
        verdict = "ok" if diff <= PARITY_TOLERANCE else "FAILED"
        print(
            f"parity with PyTorch: max abs logit difference {diff:.2e} ({verdict}, "
            f"tolerance {PARITY_TOLERANCE:g})"
        )
        if diff > PARITY_TOLERANCE:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
