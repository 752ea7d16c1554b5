"""``fer-export ckpt_path=PATH [output=model.onnx] [quantize=int8]`` (``python -m
fer_lightning.export``): a checkpoint as ONNX, checked against PyTorch under ONNX Runtime; with
``quantize=int8``, an int8 copy calibrated on faces of a dataset split and compared with the fp32
PyTorch model on held-out faces. Options and their defaults: ``conf/export.yaml`` (``fer-export
--help``). Exit status: 0 ok, 1 the export or its check failed, 2 a bad command or checkpoint.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fer_lightning.cli.config import CONFIG_DIR, fail, hydra_entry, raw_override
from fer_lightning.cli.errors import USER_ERRORS, UserError, config_number
from fer_lightning.cli.recognizer import CheckpointOptions
from fer_lightning.data import FERDataModule
from fer_lightning.data.errors import DatasetError
from fer_lightning.data.layouts import load_splits
from fer_lightning.inference.onnx_export import (
    INT8_MIN_AGREEMENT,
    MIN_OPSET,
    PARITY_TOLERANCE,
    compare_int8,
    export_onnx,
    onnx_parity,
    quantize_int8,
)
from fer_lightning.models.checkpoints import load_model
from fer_lightning.models.presets import check_input_size, default_input_size

QUANTIZE_CHOICES = (None, "int8")
SPLITS = ("train", "val", "test")
EXAMPLE = "fer-export ckpt_path=best.ckpt (a .ckpt, .pt or pretrained:<name>) [quantize=int8]."
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def run_task(cfg: DictConfig) -> None:
    """The Hydra task."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        options, quantize, output, opset = checked_options(cfg)
        model = load_model(options.ckpt_path, arch=options.arch)
        size = options.input_size or getattr(model, "input_size", None)
        input_size = check_input_size(int(size or default_input_size(model.arch)))
    except USER_ERRORS as error:
        fail(str(error))
    except ValueError as error:  # check_input_size on the size a checkpoint records
        fail(f"{options.ckpt_path}: {error}")
    if quantize == "int8":
        export_int8(cfg, model, output, input_size, opset)
        return
    try:
        export_onnx(model, output, input_size, opset)
    except ImportError:
        fail("exporting needs onnx: pip install 'fer-lightning[onnx]'", status=1)
    print(f"wrote {output} ({model.arch}, input {input_size}x{input_size})")
    temperature = getattr(model, "calibration", None)
    print(
        f"outputs: logits, and probabilities = softmax(logits / T) with the {temperature.summary()}"
        if temperature is not None
        else "outputs: logits (the checkpoint has no fitted temperature)"
    )
    if cfg.check and not check_parity(model, output, input_size):
        sys.exit(1)


def checked_options(cfg: DictConfig) -> tuple[CheckpointOptions, str | None, Path, int]:
    """The checkpoint options, ``quantize``, the output file and the opset, each checked
    before anything is loaded or written; :class:`UserError` naming the key otherwise."""
    if cfg.format != "onnx":
        raise UserError(f"format={cfg.format!r} is not supported; use format=onnx.")
    opset = config_number(cfg, "opset", int)
    if opset < MIN_OPSET:
        raise UserError(f"opset={opset} is too old for these networks; use {MIN_OPSET} or newer.")
    quantize = cfg.get("quantize")
    if quantize not in QUANTIZE_CHOICES:
        raise UserError(
            f"quantize={quantize!r} is not supported; use quantize=int8, or leave it out (fp32)."
        )
    options = CheckpointOptions.from_hydra(cfg, EXAMPLE)
    typed = raw_override("output", cfg.output) if cfg.output else None
    output = Path(typed) if typed else default_output(options.ckpt_path, quantize)
    if output.is_dir():
        raise UserError(
            f"output={output} is a folder; name the .onnx file to write, e.g. {output}/model.onnx"
        )
    if quantize == "int8":
        check_calibration(cfg)
    return options, quantize, output, opset


def check_calibration(cfg: DictConfig) -> None:
    """The calibration keys of ``quantize=int8``: a split, counts of at least 1, a method."""
    split, method = str(cfg.calibration.split), str(cfg.calibration.method)
    if split not in SPLITS:
        raise UserError(f"calibration.split={split!r}: use one of {', '.join(SPLITS)}.")
    if method not in CALIBRATION_METHODS:
        raise UserError(
            f"calibration.method={method!r}: use one of {', '.join(CALIBRATION_METHODS)}."
        )
    config_number(cfg, "calibration.faces", int, minimum=1)
    config_number(cfg, "calibration.compare_faces", int, optional=True, minimum=1)


def check_parity(model: nn.Module, path: Path, input_size: int) -> bool:
    """Print how closely the fp32 ONNX file follows PyTorch; False if beyond the tolerance."""
    try:
        diff = onnx_parity(model, path, input_size)
    except ImportError:
        print("onnxruntime is not installed; skipped the parity check.")
        return True
    verdict = "ok" if diff <= PARITY_TOLERANCE else "FAILED"
    print(
        f"parity with PyTorch: max abs logit difference {diff:.2e} ({verdict}, "
        f"tolerance {PARITY_TOLERANCE:g})"
    )
    return diff <= PARITY_TOLERANCE


def export_int8(
    cfg: DictConfig, model: nn.Module, output: Path, input_size: int, opset: int
) -> None:
    """fp32 ONNX in a temporary folder, its parity check, then the int8 file at ``output`` and
    its comparison with the fp32 PyTorch model."""
    calibration = cfg.calibration
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        fail("quantize=int8 needs onnx and onnxruntime: pip install 'fer-lightning[onnx]'", 1)
    try:
        faces, compare_faces, compared_on = int8_faces(calibration, Path(cfg.paths.data_dir))
    except USER_ERRORS as error:
        fail(str(error))
    with tempfile.TemporaryDirectory(prefix="fer-export-") as work:
        fp32_path = export_onnx(model, Path(work) / "fp32.onnx", input_size, opset)
        if cfg.check and not check_parity(model, fp32_path, input_size):
            sys.exit(1)
        quantize_int8(
            fp32_path,
            output,
            faces,
            input_size,
            method=str(calibration.method),
            per_channel=bool(calibration.per_channel),
            reduce_range=bool(calibration.reduce_range),
            float_ends=bool(calibration.float_ends),
        )
        print(
            f"wrote {output} ({model.arch}, input {input_size}x{input_size}, int8, calibrated on "
            f"{len(faces)} {calibration.split} faces of {calibration.source})"
        )
        if not cfg.check:
            return
        result = compare_int8(model, output, compare_faces, input_size, fp32_path)
    print(f"{result.summary()}; compared on {compared_on}")
    if result.agreement < INT8_MIN_AGREEMENT:
        print(
            f"int8 check FAILED: agreement below {INT8_MIN_AGREEMENT:.0%}. Try more calibration "
            "faces (calibration.faces=1024), calibration.method=percentile or entropy, or "
            "faces closer to what the model will see (calibration.source=PATH.csv)."
        )
        sys.exit(1)


def int8_faces(calibration: DictConfig, data_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(calibration faces, comparison faces, what the comparison faces are), (N, 48, 48) uint8.

    Calibration faces are ``calibration.faces`` drawn at random (seed 0) from
    ``calibration.split``; the comparison runs on the test split, or, when calibrating on the
    test split (or there is none), on the faces of the split that calibration did not use."""
    source, split = str(calibration.source), str(calibration.split)
    count, limit = int(calibration.faces), calibration.compare_faces
    try:
        splits = split_faces(source, data_dir)
    except DatasetError as error:
        raise UserError(f"calibration.source={source}: {error}") from None
    if split not in splits:
        raise UserError(
            f"calibration.source={source} has no {split} split (it has {', '.join(splits)}); "
            f"set calibration.split."
        )
    pool = splits[split]
    order = np.random.default_rng(0).permutation(len(pool))
    faces = pool[np.sort(order[:count])]
    if split != "test" and "test" in splits:
        compare, compared_on = splits["test"], f"the test split of {source}"
    else:
        compare = pool[np.sort(order[count:])]
        compared_on = f"the {split} faces of {source} that calibration did not use"
    if len(compare) == 0:
        raise UserError(
            f"calibration.faces={count} uses every {split} face of {source}, leaving none to "
            "compare on: calibrate on fewer faces or on another split."
        )
    if limit is not None and len(compare) > int(limit):
        compare = compare[: int(limit)]
        compared_on = f"the first {limit} faces of {compared_on.removeprefix('the ')}"
    return faces, compare, compared_on


def split_faces(source: str, data_dir: Path) -> dict[str, np.ndarray]:
    """The 48x48 faces of each split of ``source``: ``synthetic`` (the sizes of
    conf/data/synthetic.yaml, generated under ``data_dir`` on first use) or a FER-format CSV
    file or folder (its Usage column, or train/val/test.csv)."""
    if source == "synthetic":
        sizes = OmegaConf.load(CONFIG_DIR / "data" / "synthetic.yaml").data.synthetic
        data = FERDataModule(
            "synthetic",
            root=str(data_dir),
            num_workers=0,
            synthetic=OmegaConf.to_container(sizes),
        )
        data.prepare_data()
        data.setup()
        sets = {"train": data.train_set, "val": data.val_set, "test": data.test_set}
        # Whole splits in one batched fetch (no augmentation on these sets).
        return {
            name: faces.__getitems__(range(len(faces)))[0].numpy() for name, faces in sets.items()
        }
    splits = load_splits(Path(source).expanduser())
    return {name: np.asarray(ref.faces) for name, ref in splits.items()}


def default_output(ckpt_path: str, quantize: str | None = None) -> Path:
    """The checkpoint's path with ``.onnx`` (``.int8.onnx`` for int8); ``<name>.onnx`` here for
    ``pretrained:<name>``."""
    suffix = ".int8.onnx" if quantize == "int8" else ".onnx"
    if ckpt_path.startswith("pretrained:"):
        return Path(ckpt_path.removeprefix("pretrained:") + suffix)
    return Path(ckpt_path).with_suffix(suffix)


main = hydra_entry("export", run_task)

if __name__ == "__main__":
    main()
