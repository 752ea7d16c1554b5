"""Hostile command lines: one message and the right exit status, nothing half-written, paths
kept as typed."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fer_lightning.cli import eval as eval_cli
from fer_lightning.cli import export, predict
from fer_lightning.inference import EmotionRecognizer
from fer_lightning.inference.samples import ASTRONAUT_PATH
from fer_lightning.models import create_model
from tests.helpers.hydra import SMALL_DATA, run_app
from tests.helpers.inference import SMALL_INPUT, save_published_checkpoint


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return save_published_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


def test_export_refuses_bad_options_and_leaves_no_file(published, tmp_path, capsys):
    pytest.importorskip("onnx")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    cases = [
        ([f"output={folder}"], "is a folder"),
        ([f"output={tmp_path / 'm.onnx'}", "input_size=50"], "multiple of 32"),
        ([f"output={tmp_path / 'm.onnx'}", "opset=5"], "opset=5 is too old"),
        ([f"output={tmp_path / 'm.onnx'}", "format=tflite"], "format='tflite' is not supported"),
        ([f"output={tmp_path / 'm.onnx'}", f"ckpt_path={tmp_path / 'none.pt'}"], "does not exist"),
    ]
    for args, message in cases:
        status = run_app(export.main, [f"ckpt_path={published}", *args])
        err = capsys.readouterr().err
        assert status == 2 and message in err, (args, err)
        assert "Traceback" not in err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*partial"))
    assert not list(folder.iterdir())


def test_onnx_files_with_odd_metadata_are_refused(published, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    good = tmp_path / "good.onnx"
    assert (
        run_app(
            export.main, [f"ckpt_path={published}", f"output={good}", f"input_size={SMALL_INPUT}"]
        )
        == 0
    )
    capsys.readouterr()
    for name, key, value, message in [
        ("labels.onnx", "labels", json.dumps(["a", "b"]), "2 labels in its metadata for 7"),
        ("names.onnx", "labels", "not json", "not a list of names"),
    ]:
        proto = onnx.load(str(good))
        for prop in proto.metadata_props:
            if prop.key == key:
                prop.value = value
        onnx.save(proto, str(tmp_path / name))
        with pytest.raises(ValueError, match=message):
            EmotionRecognizer.from_checkpoint(tmp_path / name, detector="none")
        status = run_app(
            predict.main,
            [
                f"ckpt_path={tmp_path / name}",
                f"source={ASTRONAUT_PATH}",
                "detector=none",
                f"output_dir={tmp_path / 'out'}",
            ],
        )
        err = capsys.readouterr().err
        assert status == 2 and message in err and "Traceback" not in err


def test_eval_refuses_a_checkpoint_with_other_classes_before_scoring(tmp_path, capsys):
    torch.manual_seed(0)
    eight = tmp_path / "eight_classes.pt"
    torch.save({"net": create_model("resnet18", num_classes=8).state_dict()}, eight)
    status = run_app(
        eval_cli.main,
        [
            f"ckpt_path={eight}",
            *SMALL_DATA,
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'outputs'}",
            "input_size=64",
        ],
    )
    err = capsys.readouterr().err
    assert status == 2 and "has 8 outputs" in err and "7 classes" in err
    assert "Traceback" not in err


def test_predict_keeps_paths_as_typed(published, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "007").mkdir()
    (tmp_path / "007" / "face.jpg").write_bytes(ASTRONAUT_PATH.read_bytes())
    common = [f"ckpt_path={published}", "detector=none", f"input_size={SMALL_INPUT}"]
    # A folder named 007 is a folder, not webcam 7; 1e3 is a folder name, not 1000.0.
    assert run_app(predict.main, [*common, "source=007", "output_dir=1e3"]) == 0, (
        capsys.readouterr().err
    )
    assert (tmp_path / "1e3" / "predictions.jsonl").is_file()
    assert not (tmp_path / "1000.0").exists()
    rows = [json.loads(line) for line in (tmp_path / "1e3" / "predictions.jsonl").open()]
    assert [row["source"] for row in rows] == ["face.jpg"]
    # Brackets are Hydra syntax: quoted, they stay part of the name.
    (tmp_path / "[a].jpg").write_bytes(ASTRONAUT_PATH.read_bytes())
    status = run_app(predict.main, [*common, "source='[a].jpg'", "output_dir=out"])
    err = capsys.readouterr().err
    assert status == 0 and "Traceback" not in err, err
    assert os.path.isfile(tmp_path / "out" / "predictions.jsonl")


def test_predict_refuses_an_output_folder_inside_the_source(published, tmp_path, capsys):
    source = tmp_path / "photos"
    source.mkdir()
    photo = source / "face.jpg"
    photo.write_bytes(ASTRONAUT_PATH.read_bytes())
    before = photo.read_bytes()
    common = [f"ckpt_path={published}", "detector=none", f"source={source}"]
    for output in (source, source / "annotated"):
        status = run_app(predict.main, [*common, f"output_dir={output}"])
        err = capsys.readouterr().err
        assert status == 2 and "is inside source" in err
    assert photo.read_bytes() == before and sorted(source.iterdir()) == [photo]


def test_predict_bounds_a_group_of_images_by_pixels(published, tmp_path, capsys, monkeypatch):
    source = tmp_path / "photos"
    source.mkdir()
    for i in range(3):
        (source / f"face{i}.jpg").write_bytes(ASTRONAUT_PATH.read_bytes())
    group_sizes: list[int] = []
    original = EmotionRecognizer.recognize

    def recording(self, images, *args, **kwargs):
        group_sizes.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(EmotionRecognizer, "recognize", recording)
    common = [f"ckpt_path={published}", "detector=none", f"input_size={SMALL_INPUT}"]
    args = [*common, f"source={source}", "image_batch=16"]
    assert run_app(predict.main, [*args, f"output_dir={tmp_path / 'a'}"]) == 0
    assert group_sizes == [3]  # three 320x320 photos fit in one group
    group_sizes.clear()
    monkeypatch.setattr(predict, "GROUP_MAX_PIXELS", 320 * 320)  # one photo's worth
    assert run_app(predict.main, [*args, f"output_dir={tmp_path / 'b'}"]) == 0
    assert group_sizes == [1, 1, 1]
    capsys.readouterr()
