"""Published weights downloaded on first use: sources, cache, broken transfers, messages.

A real HTTP server on 127.0.0.1 stands in for the release URL (``FER_RELEASE_URL``); nothing
here reaches the internet. The download mechanics use a ResNet-18 in the published format
(45 MB) registered as a temporary table entry; one slow test uses the real
``resmasking_dropout1`` entry end to end.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import types
import urllib.request
from pathlib import Path

import pytest
import torch

from fer_lightning.models import create_model, hub
from fer_lightning.models.checkpoints import CheckpointError, load_model
from fer_lightning.models.hub import (
    PretrainedDownloadError,
    PretrainedFile,
    cache_dir,
    fetch,
    resolve_checkpoint,
)
from tests.helpers.http import FileServer

TINY = "tiny_resnet18"
TINY_FILE = "Z_tiny_resnet18_published"


@pytest.fixture
def server(monkeypatch):
    """A running :class:`FileServer` as the release URL, stopped after the test."""
    files = FileServer()
    monkeypatch.setenv("FER_RELEASE_URL", files.url)
    yield files
    files.stop()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Cache in tmp_path, no proxy for 127.0.0.1, no retry pauses, no HF_HUB_OFFLINE."""
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FER_RELEASE_URL", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setattr(hub, "RETRY_DELAYS_S", (0.0, 0.0))
    monkeypatch.setitem(hub.PRETRAINED_FILES, TINY, PretrainedFile(TINY_FILE, arch="resnet18"))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(3)
    return create_model("resnet18").eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """A ResNet-18 saved in the published format ({"net": state_dict, ...})."""
    path = tmp_path_factory.mktemp("published") / TINY_FILE
    torch.save({"net": tiny_model.state_dict(), "best_val_acc": 0.5}, path)
    return path


def cache_listing() -> list[str]:
    """Everything in the cache folder, hidden and temporary files included."""
    folder = cache_dir()
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def _logits(model):
    torch.manual_seed(0)
    with torch.no_grad():
        return model.eval()(torch.rand(2, 3, 64, 64))


def test_downloads_from_the_release_url_into_the_cache(server, tiny_checkpoint, tmp_path):
    server.files[TINY_FILE] = tiny_checkpoint
    path = fetch(TINY)
    assert path == tmp_path / "cache" / TINY_FILE
    assert path.read_bytes() == tiny_checkpoint.read_bytes()
    assert server.requests == [TINY_FILE]
    assert cache_listing() == [TINY_FILE]  # no temporary file left behind


def test_cached_file_is_used_without_network(server, tiny_checkpoint):
    server.files[TINY_FILE] = tiny_checkpoint
    first = fetch(TINY)
    server.stop()
    assert fetch(TINY) == first
    assert server.requests == [TINY_FILE]


def test_a_file_put_in_the_cache_by_hand_needs_no_source(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    placed = tmp_path / "cache" / "face_detection_yunet_2023mar.onnx"
    placed.parent.mkdir()
    placed.write_bytes(b"onnx")
    assert fetch("yunet") == placed


def test_truncated_transfer_is_rejected_and_nothing_is_kept(server, tiny_checkpoint):
    server.files[TINY_FILE] = tiny_checkpoint
    server.truncate[TINY_FILE] = 100
    with pytest.raises(PretrainedDownloadError, match="incomplete download") as info:
        fetch(TINY)
    assert "broke off after" in str(info.value)
    assert server.requests == [TINY_FILE] * (1 + len(hub.RETRY_DELAYS_S))  # retried
    assert cache_listing() == []


def test_truncated_transfer_is_retried(server, tiny_checkpoint):
    server.files[TINY_FILE] = tiny_checkpoint
    server.truncate[TINY_FILE] = 1
    path = fetch(TINY)
    assert server.requests == [TINY_FILE, TINY_FILE]
    assert path.read_bytes() == tiny_checkpoint.read_bytes()
    assert cache_listing() == [TINY_FILE]


@pytest.mark.parametrize("content", ["html", "state_dict_without_net"])
def test_a_file_that_is_not_a_checkpoint_is_refused_and_not_kept(
    server, tmp_path, tiny_model, content
):
    served = tmp_path / "served"
    if content == "html":
        served.write_bytes(b"<html><body>Rate limit exceeded</body></html>")
    else:
        torch.save(tiny_model.state_dict(), served)  # loadable, but not the published format
    server.files[TINY_FILE] = served
    with pytest.raises(PretrainedDownloadError, match="it was not kept") as info:
        fetch(TINY)
    assert "not a PyTorch checkpoint" in str(info.value) or "dict with 'net'" in str(info.value)
    assert server.requests == [TINY_FILE]  # the content is wrong: asking again would not help
    assert cache_listing() == []


def test_files_that_are_not_checkpoints_are_not_read_as_checkpoints(server, tmp_path):
    served = tmp_path / "face_detection_yunet_2023mar.onnx"
    served.write_bytes(b"\x08\x07onnx bytes")
    server.files[served.name] = served
    assert fetch("yunet").read_bytes() == served.read_bytes()


def test_missing_file_on_the_server_is_not_retried(server):
    with pytest.raises(PretrainedDownloadError, match="404"):
        fetch(TINY)
    assert server.requests == [TINY_FILE]


def test_offline_message_names_the_file_both_urls_and_the_cache_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    attempts = []

    def no_network(*args, **kwargs):
        # Recorded as well as raised: fetch() turns a failing source into part of its message.
        attempts.append(args)
        raise AssertionError("HF_HUB_OFFLINE=1 must not reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    fake = types.ModuleType("huggingface_hub")
    fake.hf_hub_download = no_network
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    filename = "Z_resmasking_dropout1_rot30_2019Nov30_13.32"
    with pytest.raises(PretrainedDownloadError) as info:
        load_model("pretrained:resmasking_dropout1")
    message = str(info.value)
    assert isinstance(info.value, CheckpointError)  # the commands print it as one line
    assert "\n" not in message
    assert filename in message
    assert (
        "https://huggingface.co/phamquiluan/ResidualMaskingNetwork/resolve/main/"
        f"{filename}" in message
    )
    assert (
        "https://github.com/phamquiluan/ResidualMaskingNetwork/releases/download/v0.0.1/"
        f"{filename}" in message
    )
    assert str(cache_dir() / filename) in message
    assert attempts == []
    assert cache_listing() == []


def _fake_huggingface_hub(monkeypatch, content: bytes | None, calls: list[dict]) -> None:
    """A stand-in ``huggingface_hub`` whose download writes ``content`` the way the real one
    lays out its cache (a snapshot symlink to a blob); ``None``: it fails as offline."""

    def hf_hub_download(repo_id, filename, *, cache_dir, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, "cache_dir": cache_dir})
        if content is None:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        blob = Path(cache_dir) / "blobs" / "0123abcd"
        blob.parent.mkdir(parents=True)
        blob.write_bytes(content)
        snapshot = Path(cache_dir) / "snapshots" / "main" / filename
        snapshot.parent.mkdir(parents=True)
        snapshot.symlink_to(blob)
        return str(snapshot)

    fake = types.ModuleType("huggingface_hub")
    fake.hf_hub_download = hf_hub_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)


def test_hugging_face_is_tried_first_and_its_copy_moved_into_the_cache(
    monkeypatch, tiny_checkpoint
):
    calls: list[dict] = []
    _fake_huggingface_hub(monkeypatch, tiny_checkpoint.read_bytes(), calls)
    path = fetch(TINY)
    assert [(c["repo_id"], c["filename"]) for c in calls] == [
        ("phamquiluan/ResidualMaskingNetwork", TINY_FILE)
    ]
    assert path.read_bytes() == tiny_checkpoint.read_bytes()
    assert not path.is_symlink()
    assert cache_listing() == [TINY_FILE]  # huggingface_hub's private cache is gone


@pytest.mark.parametrize("hf_content", [None, b"<html>not found</html>"])
def test_release_url_is_the_fallback_when_hugging_face_fails(
    monkeypatch, tiny_checkpoint, hf_content
):
    files = FileServer()
    try:
        files.files[TINY_FILE] = tiny_checkpoint
        # The default release URL (FER_RELEASE_URL unset, so Hugging Face is asked first).
        monkeypatch.setattr(hub, "DEFAULT_RELEASE_URL", files.url)
        calls: list[dict] = []
        _fake_huggingface_hub(monkeypatch, hf_content, calls)
        path = fetch(TINY)
    finally:
        files.stop()
    assert len(calls) == 1
    assert files.requests == [TINY_FILE]
    assert path.read_bytes() == tiny_checkpoint.read_bytes()
    assert cache_listing() == [TINY_FILE]


def test_load_model_reads_a_pretrained_name(server, tiny_checkpoint, tiny_model, monkeypatch):
    server.files[TINY_FILE] = tiny_checkpoint
    loaded = load_model(f"pretrained:{TINY}")
    assert loaded.arch == "resnet18"
    torch.testing.assert_close(_logits(loaded), _logits(tiny_model))
    # The table's arch is the one requested: a wrong entry is reported, not guessed around.
    monkeypatch.setitem(hub.PRETRAINED_FILES, TINY, PretrainedFile(TINY_FILE, arch="resnet34"))
    with pytest.raises(CheckpointError, match="does not fit architecture 'resnet34'"):
        load_model(f"pretrained:{TINY}")


def test_recognizer_from_pretrained_name(server, tiny_checkpoint):
    from fer_lightning.inference import EmotionRecognizer
    from fer_lightning.inference.samples import astronaut

    server.files[TINY_FILE] = tiny_checkpoint
    # input_size also checks that keyword arguments reach from_checkpoint.
    pretrained = EmotionRecognizer.from_pretrained(
        TINY, device="cpu", detector="none", input_size=64
    )
    local = EmotionRecognizer.from_checkpoint(
        tiny_checkpoint, device="cpu", detector="none", input_size=64
    )
    assert pretrained.classifier.input_size == 64
    image = astronaut()
    assert pretrained.predict(image)[0].probs == local.predict(image)[0].probs


def test_unknown_names_are_refused_with_the_known_ones(server):
    with pytest.raises(CheckpointError, match=r"Unknown pretrained file 'nope'.*yunet"):
        fetch("nope")
    with pytest.raises(CheckpointError, match=r"'nope' is unknown.*pretrained:resmasking_dropout1"):
        load_model("pretrained:nope")
    with pytest.raises(CheckpointError, match="'yunet' is not a checkpoint"):
        resolve_checkpoint("pretrained:yunet")
    assert server.requests == []


def test_other_paths_are_returned_unchanged():
    assert resolve_checkpoint("runs/best.ckpt") == Path("runs/best.ckpt")
    assert resolve_checkpoint(Path("~/x.pt")) == Path("~/x.pt")


@pytest.mark.slow
def test_from_pretrained_matches_the_local_checkpoint_and_then_uses_the_cache(server, tmp_path):
    from fer_lightning.inference import EmotionRecognizer
    from fer_lightning.inference.samples import astronaut

    filename = hub.PRETRAINED_FILES["resmasking_dropout1"].filename
    local = tmp_path / "served" / filename
    local.parent.mkdir()
    torch.manual_seed(7)
    torch.save({"net": create_model("resmasking_dropout1").state_dict()}, local)
    server.files[filename] = local

    image = astronaut()
    downloaded = EmotionRecognizer.from_pretrained("resmasking_dropout1", detector="none")
    reference = EmotionRecognizer.from_checkpoint(local, detector="none")
    probs = downloaded.predict(image)[0].probs
    assert probs == reference.predict(image)[0].probs
    assert server.requests == [filename]
    assert filecmp.cmp(cache_dir() / filename, local, shallow=False)

    server.stop()
    shutil.rmtree(local.parent)  # the second call can only read the cache
    again = EmotionRecognizer.from_pretrained("resmasking_dropout1", detector="none")
    assert again.predict(image)[0].probs == probs
    assert server.requests == [filename]
