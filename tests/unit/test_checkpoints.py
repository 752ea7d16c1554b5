"""Loading networks from checkpoints and ImageNet-style trunk weights, safely."""

from __future__ import annotations

import io
import os
import random
import zipfile
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
    with pytest.raises(CheckpointError, match="damaged, incomplete"):
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


# Any bytes given as a checkpoint: one CheckpointError naming the file (issue 21). torch's
# weights-only unpickler raises KeyError, IndexError, struct.error, RuntimeError, zip errors,
# EOFError, UnicodeDecodeError... on such bytes; the commands print a CheckpointError as one
# line and exit 2.

EXPECTED = "expected a checkpoint written by torch.save"


@pytest.fixture(scope="module")
def real_checkpoints() -> dict[str, bytes]:
    """A ResNet-18 as this project's model.pt, in torch's zip format and in its legacy one."""
    torch.manual_seed(0)
    content = {"net": create_model("resnet18").state_dict(), "arch": "resnet18"}
    saved = {}
    for name, zipped in (("zip", True), ("legacy", False)):
        buffer = io.BytesIO()
        torch.save(content, buffer, _use_new_zipfile_serialization=zipped)
        saved[name] = buffer.getvalue()
    return saved


def _refused(path: Path) -> str:
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_every_truncation_of_a_real_checkpoint_is_one_clear_error(
    tmp_path, real_checkpoints, layout
):
    data = real_checkpoints[layout]
    size = len(data)
    # The header and the pickle closely, the tensors' bytes coarsely, the end closely.
    offsets = sorted(
        {
            *range(0, 1500, 29),
            *(size * k // 25 for k in range(1, 25)),
            size - 1,
            size - 22,
            size - 600,
        }
    )
    path = tmp_path / "model.pt"
    for offset in offsets:
        path.write_bytes(data[:offset])
        message = _refused(path)
        # A legacy pickle cut inside a name names a global that is refused (and says so).
        assert EXPECTED in message or "damaged" in message, offset


def _rezipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zips_with_wrong_or_damaged_members_are_one_clear_error(tmp_path, real_checkpoints):
    archive = zipfile.ZipFile(io.BytesIO(real_checkpoints["zip"]))
    members = {name: archive.read(name) for name in archive.namelist()}
    tensors = [name for name in members if "/data/" in name]
    pickle_name = next(name for name in members if name.endswith("data.pkl"))
    rng = random.Random(0)
    cases = {
        "a tensor missing": {k: v for k, v in members.items() if k != tensors[0]},
        "a tensor cut short": {**members, tensors[0]: members[tensors[0]][:10]},
        "junk as the pickle": {"archive/data.pkl": b"junk"},
        "no pickle at all": {"readme.txt": b"hello"},
    }
    for i in range(40):
        damaged = bytearray(members[pickle_name])
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cases[f"pickle damaged ({i})"] = {**members, pickle_name: bytes(damaged)}
    path = tmp_path / "model.pt"
    for what, case in cases.items():
        path.write_bytes(_rezipped(case))
        try:
            load_model(path)  # a byte that does not matter (in a name's padding) may load
        except CheckpointError as error:
            assert str(path) in str(error) and "\n" not in str(error), what


def test_random_bytes_and_odd_files_are_one_clear_error(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "x.ckpt"
    for data in [b"hello", b"h", b"PK\x03\x04", b"\x80\x02}q\x00.", b"<html></html>"] + [
        rng.randbytes(rng.randint(1, 4000)) for _ in range(30)
    ]:
        path.write_bytes(data)
        assert EXPECTED in _refused(path), data[:20]
    path.write_bytes(b"")
    assert "is empty" in _refused(path)
    folder = tmp_path / "folder.ckpt"
    folder.mkdir()
    assert "is a folder" in _refused(folder)


def test_tensors_under_keys_that_are_not_names_are_refused(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"net": {1: torch.zeros(1)}}, path)
    assert "not names" in _refused(path)
    torch.save({"net": {"fc.weight": torch.zeros(())}}, path)
    _refused(path)
