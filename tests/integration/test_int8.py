"""int8 ONNX export (``fer-export quantize=int8``): on a ResNet-18 that has learned the synthetic
faces it follows the fp32 model (>= 99% top-1 agreement on the synthetic test split), is at least
3x smaller, keeps the model's names and metadata, and runs in the recogniser unchanged."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from fer_lightning.cli import export
from fer_lightning.cli.config import CONFIG_DIR
from fer_lightning.data import FERDataModule
from fer_lightning.faces.transforms import to_model_input
from fer_lightning.inference import EmotionRecognizer
from fer_lightning.inference.onnx_export import INT8_MIN_AGREEMENT, export_onnx, quantize_int8
from fer_lightning.inference.samples import ASTRONAUT_PATH
from fer_lightning.labels import EMOTIONS
from fer_lightning.models import create_model
from tests.helpers.data import csv_text, random_faces, usage_column, write
from tests.helpers.hydra import run_app
from tests.helpers.inference import save_lightning_checkpoint

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Small enough to train in a minute or two on two CPU cores, enough to learn the synthetic faces
# (about 90% test accuracy): a model whose predictions int8 can get wrong.
SIZE, STEPS, BATCH = 32, 100, 32


def train_resnet18(data_dir, path):
    """A ResNet-18 trained on the synthetic training faces (conf/data/synthetic.yaml's sizes,
    under ``data_dir``), saved as this project's checkpoints are."""
    sizes = OmegaConf.load(CONFIG_DIR / "data" / "synthetic.yaml").data.synthetic
    data = FERDataModule(
        "synthetic",
        root=str(data_dir),
        num_workers=0,
        input_size=SIZE,
        synthetic=OmegaConf.to_container(sizes),
    )
    data.prepare_data()
    data.setup()
    faces, labels = data.train_set.__getitems__(range(len(data.train_set)))
    torch.manual_seed(0)
    model = create_model("resnet18").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=STEPS)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        rows = torch.randint(0, len(faces), (BATCH,), generator=generator)
        x = to_model_input(faces[rows], SIZE)
        flip = torch.rand(BATCH, generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(model(x), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    hyper = {"arch": "resnet18", "num_classes": 7, "input_size": SIZE}
    torch.save({"state_dict": state, "hyper_parameters": hyper}, path)
    return path


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """(checkpoint, int8 file, fer-export's exit status and output)."""
    folder = tmp_path_factory.mktemp("int8")
    checkpoint = train_resnet18(folder / "data", folder / "trained.ckpt")
    output = folder / "trained.int8.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = run_app(
            export.main,
            [f"ckpt_path={checkpoint}", "quantize=int8", f"paths.data_dir={folder / 'data'}"],
        )
    return checkpoint, output, status, printed.getvalue()


@pytest.mark.slow
def test_int8_agrees_with_fp32_and_is_smaller(int8_export):
    _, output, status, printed = int8_export
    assert status == 0, printed
    assert output.is_file() and not list(output.parent.glob(".*partial"))
    agreement = float(re.search(r"top-1 agreement ([\d.]+)%", printed).group(1)) / 100
    ratio = float(re.search(r"\(([\d.]+)x smaller\)", printed).group(1))
    assert re.search(r"on 420 held-out faces", printed), printed
    assert "compared on the test split of synthetic" in printed
    assert agreement >= INT8_MIN_AGREEMENT, printed
    assert ratio >= 3.0, printed


@pytest.mark.slow
def test_int8_file_keeps_names_and_metadata(int8_export):
    import onnx

    _, output, _, _ = int8_export
    model = onnx.load(str(output))
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["quantization"] == "int8"
    assert metadata["arch"] == "resnet18" and metadata["input_size"] == str(SIZE)
    assert json.loads(metadata["labels"]) == list(EMOTIONS)
    assert json.loads(metadata["calibration"])["faces"] == 256
    assert [i.name for i in model.graph.input] == ["faces"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)


@pytest.mark.slow
def test_recognizer_runs_the_int8_model(int8_export):
    checkpoint, output, _, _ = int8_export
    by_int8 = EmotionRecognizer.from_checkpoint(output, detector="none")
    by_fp32 = EmotionRecognizer.from_checkpoint(
        checkpoint, device="cpu", detector="none", precision="fp32"
    )
    assert by_int8.labels == EMOTIONS and by_int8.classifier.input_size == SIZE
    (int8_face,) = by_int8.predict(ASTRONAUT_PATH)
    (fp32_face,) = by_fp32.predict(ASTRONAUT_PATH)
    int8 = np.array(list(int8_face.probs.values()))
    fp32 = np.array(list(fp32_face.probs.values()))
    assert int8.sum() == pytest.approx(1.0, abs=1e-4)
    assert np.abs(int8 - fp32).max() < 0.1


def test_unknown_quantization_is_refused(tmp_path, capsys):
    status = run_app(export.main, [f"ckpt_path={tmp_path / 'a.ckpt'}", "quantize=int4"])
    assert status == 2
    assert "quantize='int4' is not supported; use quantize=int8" in capsys.readouterr().err


def test_calibration_split_is_checked(tmp_path, capsys):
    checkpoint = save_lightning_checkpoint(tmp_path / "small.ckpt")
    status = run_app(
        export.main, [f"ckpt_path={checkpoint}", "quantize=int8", "calibration.split=dev"]
    )
    assert status == 2
    assert "calibration.split='dev': use one of train, val, test" in capsys.readouterr().err
    assert not (tmp_path / "small.int8.onnx").exists()


def test_comparison_faces_are_not_calibration_faces(tmp_path):
    """Calibrating on the val split compares on the test split; calibrating on the test split
    compares on the test faces calibration did not use."""
    faces, labels = random_faces(30)
    csv = write(tmp_path / "faces.csv", csv_text(faces, labels, usage_column(30)))
    settings = {"source": str(csv), "faces": 4, "compare_faces": None}
    calibration, compare, what = export.int8_faces(
        OmegaConf.create({**settings, "split": "val"}), tmp_path
    )
    assert len(calibration) == 4 and len(compare) == 10 and "test split" in what
    assert np.array_equal(compare, faces[2::3])
    calibration, compare, what = export.int8_faces(
        OmegaConf.create({**settings, "split": "test"}), tmp_path
    )
    assert len(calibration) == 4 and len(compare) == 6 and "did not use" in what
    together = np.concatenate([calibration, compare]).reshape(10, -1)
    assert len(np.unique(together, axis=0)) == 10  # every test face once, none in both


class TinyNet(torch.nn.Module):
    """Two convolutions and a 7-class head: an ONNX model that quantises in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(8, 7)

    def forward(self, x):
        return self.fc(self.features(x))


def test_a_failed_quantization_leaves_no_file(tmp_path, monkeypatch):
    import onnx

    fp32 = export_onnx(TinyNet(), tmp_path / "fp32" / "tiny.onnx", SIZE, opset=17)
    faces = random_faces(8)[0]
    output = tmp_path / "out" / "tiny.int8.onnx"

    save = onnx.save

    def disk_full_on_output(proto, path, *args, **kwargs):
        """The disk fills up as the int8 model's metadata is written into the output folder."""
        if Path(path).parent != output.parent:
            return save(proto, path, *args, **kwargs)
        assert Path(path).exists(), "quantize_static has written the file under its temporary name"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", disk_full_on_output)
    with pytest.raises(OSError, match="No space left"):
        quantize_int8(fp32, output, faces, SIZE)
    assert list(output.parent.iterdir()) == []
    monkeypatch.undo()
    quantize_int8(fp32, output, faces, SIZE)
    assert list(output.parent.iterdir()) == [output]
