"""``fer-export ckpt_path=PATH [output=model.onnx]`` (``python -m fer_lightning.export``): a
checkpoint as ONNX, checked against PyTorch under ONNX Runtime. Options and their defaults:
``conf/export.yaml`` (``fer-export --help``). Exit status: 0 ok, 1 the export or its check
failed, 2 a bad command or checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from fer_lightning.cli.config import fail, hydra_entry, raw_override
from fer_lightning.cli.errors import USER_ERRORS
from fer_lightning.models.presets import check_input_size, default_input_size


def run_task(cfg: DictConfig) -> None:
    """The Hydra task."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from fer_lightning.inference.onnx_export import (
        MIN_OPSET,
        PARITY_TOLERANCE,
        export_onnx,
        onnx_parity,
    )
    from fer_lightning.models.checkpoints import load_model

    if cfg.format != "onnx":
        fail(f"format={cfg.format!r} is not supported; use format=onnx.")
    if int(cfg.opset) < MIN_OPSET:
        fail(f"opset={cfg.opset} is too old for these networks; use {MIN_OPSET} or newer.")
    ckpt_path = raw_override("ckpt_path", cfg.ckpt_path)
    output = Path(raw_override("output", cfg.output) if cfg.output else default_output(ckpt_path))
    if output.is_dir():
        fail(f"output={output} is a folder; name the .onnx file to write, e.g. {output}/model.onnx")
    try:
        model = load_model(ckpt_path, arch=cfg.arch)
        size = cfg.input_size or getattr(model, "input_size", None)
        input_size = check_input_size(int(size or default_input_size(model.arch)))
    except (*USER_ERRORS, ValueError) as error:
        fail(str(error))
    try:
        export_onnx(model, output, input_size, int(cfg.opset))
    except ImportError:
        fail("exporting needs onnx: pip install 'fer-lightning[onnx]'", status=1)
    print(f"wrote {output} ({model.arch}, input {input_size}x{input_size})")
    if not cfg.check:
        return
    try:
        diff = onnx_parity(model, output, input_size)
    except ImportError:
        print("onnxruntime is not installed; skipped the parity check.")
        return
    verdict = "ok" if diff <= PARITY_TOLERANCE else "FAILED"
    print(
        f"parity with PyTorch: max abs logit difference {diff:.2e} ({verdict}, "
        f"tolerance {PARITY_TOLERANCE:g})"
    )
    if diff > PARITY_TOLERANCE:
        sys.exit(1)


def default_output(ckpt_path: str) -> Path:
    """The checkpoint's path with ``.onnx``; ``<name>.onnx`` here for ``pretrained:<name>``."""
    if ckpt_path.startswith("pretrained:"):
        return Path(ckpt_path.removeprefix("pretrained:") + ".onnx")
    return Path(ckpt_path).with_suffix(".onnx")


main = hydra_entry("export", run_task)

if __name__ == "__main__":
    main()
