"""Loading networks from checkpoints and ImageNet-style trunk weights, safely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fer_lightning.checkpoints import CheckpointError, load_model
from fer_lightning.models import PretrainedWeightsError, create_model
from fer_lightning.models.backbone import imagenet_weights_path


@pytest.fixture(scope="module")
def trained_resmasking():
    torch.manual_seed(1)
    model = create_model("resmasking_dropout1").eval()
    # Non-default BatchNorm statistics so that a load that skipped them would show.
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
    return model


def _logits(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.rand(2, 3, 64, 64))


def test_published_format_round_trips(tmp_path, trained_resmasking):
    path = tmp_path / "Z_resmasking_dropout1_rot30.pt"
    torch.save(
        {
            "net": trained_resmasking.state_dict(),
            "best_val_acc": 0.7414,
            "train_acc_list": [0.5, 0.6],
            "arch": "resmasking_dropout1",
            "lr": 1e-4,
        },
        path,
    )
    loaded = load_model(path)
    assert loaded.arch == "resmasking_dropout1"
    assert not loaded.training
    torch.testing.assert_close(_logits(loaded), _logits(trained_resmasking))


def test_bare_state_dict_and_wrapper_prefixes(tmp_path):
    model = create_model("resnet18", num_classes=5)
    path = tmp_path / "bare.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_model(path)
    assert loaded.arch == "resnet18"
    assert loaded.fc.out_features == 5
    torch.testing.assert_close(_logits(loaded), _logits(model))


def test_key_twins_load_as_dropout1_and_say_so(tmp_path, trained_resmasking, caplog):
    path = tmp_path / "naive_or_not.pt"
    torch.save({"net": trained_resmasking.state_dict()}, path)
    assert load_model(path).arch == "resmasking_dropout1"
    assert "resmasking_naive_dropout1" in caplog.text
    naive = load_model(path, arch="resmasking_naive_dropout1")
    assert naive.apply_masks is False


def test_wrong_architecture_names_keys_and_the_fitting_variant(tmp_path):
    path = tmp_path / "resnet34.pt"
    torch.save({"net": create_model("resnet34").state_dict()}, path)
    with pytest.raises(CheckpointError) as error:
        load_model(path, arch="resmasking_dropout1")
    message = str(error.value)
    assert str(path) in message
    assert "Missing keys" in message and "mask1." in message
    assert "Unexpected keys (2): fc.weight, fc.bias" in message
    assert "fit 'resnet34'" in message


def test_unknown_keys_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="fit no registered model"):
        load_model(path)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(
        {"net": create_model("resnet18").state_dict(), "x": _RunsCodeWhenUnpickled(marker)}, path
    )
    with pytest.raises(CheckpointError, match="Refused to load"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "does not exist"), (b"not a checkpoint", "Could not read"), ([1, 2], "not a model")],
)
def test_unreadable_files_get_one_clear_message(tmp_path, content, match):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "half.pt"
    torch.save({"net": create_model("resnet18").state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="Is the file complete"):
        load_model(path)


def test_pretrained_backbone_loads_the_trunk_only(tmp_path):
    torch.manual_seed(3)
    donor = create_model("resnet34", num_classes=1000)  # torchvision's layout and key names
    path = tmp_path / "resnet34-imagenet.pth"
    torch.save(donor.state_dict(), path)
    model = create_model("resmasking_dropout1", pretrained_backbone=str(path))
    report = model.backbone_report
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    assert all(not k.startswith(("mask", "fc")) for k in report.loaded)
    torch.testing.assert_close(model.layer3[2].conv2.weight, donor.layer3[2].conv2.weight)
    torch.testing.assert_close(model.bn1.running_var, donor.bn1.running_var)
    fresh = create_model("resmasking_dropout1")
    assert model.mask1.conv1.conv1.weight.shape == fresh.mask1.conv1.conv1.weight.shape
    assert model.fc[1].weight.shape == (7, 512)


def test_pretrained_backbone_of_another_depth_is_refused(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(create_model("resnet18").state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match=r"lacks .* trunk tensors"):
        create_model("resmasking_dropout1", pretrained_backbone=str(path))


def test_imagenet_offline_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError) as error:
        create_model("resnet50", pretrained_backbone="imagenet")
    message = str(error.value)
    assert "resnet50-0676ba61.pth" in message
    assert str(imagenet_weights_path("resnet50").parent) in message
    assert "model.pretrained_backbone=null" in message  # and how to train from scratch


def test_imagenet_uses_the_hub_cache_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = imagenet_weights_path("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(create_model("resnet18", num_classes=1000).state_dict(), cached)
    model = create_model("resnet18", pretrained_backbone="imagenet")
    assert model.backbone_report.source == str(cached)


def test_interrupted_checkpoint_save_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    from fer_lightning.training.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, file):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is stopped mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
