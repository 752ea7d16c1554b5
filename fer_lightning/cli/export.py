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

from fer_lightning.cli.config import CONFIG_DIR, fail, hydra_entry, raw_override
from fer_lightning.cli.errors import USER_ERRORS
from fer_lightning.models.presets import check_input_size, default_input_size

QUANTIZE_CHOICES = (None, "int8")
SPLITS = ("train", "val", "test")


def run_task(cfg: DictConfig) -> None:
    """The Hydra task."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from fer_lightning.inference.onnx_export import MIN_OPSET, export_onnx
    from fer_lightning.models.checkpoints import load_model

    if cfg.format != "onnx":
        fail(f"format={cfg.format!r} is not supported; use format=onnx.")
    if int(cfg.opset) < MIN_OPSET:
        fail(f"opset={cfg.opset} is too old for these networks; use {MIN_OPSET} or newer.")
    quantize = cfg.get("quantize")
    if quantize not in QUANTIZE_CHOICES:
        fail(f"quantize={quantize!r} is not supported; use quantize=int8, or leave it out (fp32).")
    ckpt_path = raw_override("ckpt_path", cfg.ckpt_path)
    output = Path(
        raw_override("output", cfg.output) if cfg.output else default_output(ckpt_path, quantize)
    )
    if output.is_dir():
        fail(f"output={output} is a folder; name the .onnx file to write, e.g. {output}/model.onnx")
    try:
        model = load_model(ckpt_path, arch=cfg.arch)
        size = cfg.input_size or getattr(model, "input_size", None)
        input_size = check_input_size(int(size or default_input_size(model.arch)))
    except (*USER_ERRORS, ValueError) as error:
        fail(str(error))
    if quantize == "int8":
        export_int8(cfg, model, output, input_size)
        return
    try:
        export_onnx(model, output, input_size, int(cfg.opset))
    except ImportError:
        fail("exporting needs onnx: pip install 'fer-lightning[onnx]'", status=1)
    print(f"wrote {output} ({model.arch}, input {input_size}x{input_size})")
    if cfg.check and not check_parity(model, output, input_size):
        sys.exit(1)


def check_parity(model, path: Path, input_size: int) -> bool:
    """Print how closely the fp32 ONNX file follows PyTorch; False if beyond the tolerance."""
    from fer_lightning.inference.onnx_export import PARITY_TOLERANCE, onnx_parity

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


def export_int8(cfg: DictConfig, model, output: Path, input_size: int) -> None:
    """fp32 ONNX in a temporary folder, its parity check, then the int8 file at ``output`` and
    its comparison with the fp32 PyTorch model."""
    from fer_lightning.inference.onnx_export import (
        INT8_MIN_AGREEMENT,
        compare_int8,
        export_onnx,
        quantize_int8,
    )

    calibration = cfg.calibration
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        fail("quantize=int8 needs onnx and onnxruntime: pip install 'fer-lightning[onnx]'", 1)
    try:
        faces, compare_faces, compared_on = int8_faces(calibration, Path(cfg.paths.data_dir))
    except (*USER_ERRORS, ValueError) as error:
        fail(str(error))
    with tempfile.TemporaryDirectory(prefix="fer-export-") as work:
        fp32_path = export_onnx(model, Path(work) / "fp32.onnx", input_size, int(cfg.opset))
        if cfg.check and not check_parity(model, fp32_path, input_size):
            sys.exit(1)
        try:
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
        except ValueError as error:
            fail(f"calibration: {error}")
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
    if split not in SPLITS:
        raise ValueError(f"calibration.split={split!r}: use one of {', '.join(SPLITS)}.")
    if count < 1 or (limit is not None and int(limit) < 1):
        raise ValueError("calibration.faces and calibration.compare_faces must be at least 1.")
    from fer_lightning.data import DatasetError

    try:
        splits = split_faces(source, data_dir)
    except DatasetError as error:
        raise ValueError(f"calibration.source={source}: {error}") from None
    if split not in splits:
        raise ValueError(
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
        raise ValueError(
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
    from fer_lightning.data import FERDataModule
    from fer_lightning.data.sources import load_splits

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
