"""Published weights downloaded on first use: sources, cache, verification, broken transfers,
local trouble, messages.

A real HTTP server on 127.0.0.1 stands in for the sources (``FER_RELEASE_URL``, ``HF_ENDPOINT``
or a table entry's own sources); nothing here reaches the internet. The download mechanics use
a ResNet-18 in the published format (45 MB) registered as a temporary table entry; one slow
test uses the real ``resmasking_dropout1`` entry end to end.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from fer_lightning.models import create_model, hub
from fer_lightning.models.checkpoints import CheckpointError, load_model
from fer_lightning.models.hub import (
    PretrainedDownloadError,
    cache_dir,
    fetch,
    resolve_checkpoint,
)
from fer_lightning.models.presets import PublishedFile
from tests.helpers.http import FileServer, closed_port_url

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
    """Cache in tmp_path, no proxy for 127.0.0.1, no retry pauses, no HF_HUB_OFFLINE, and no
    source on the internet (HF_ENDPOINT and the entry's sources are closed local ports)."""
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FER_RELEASE_URL", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FER_VERIFY_CHECKSUMS", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setattr(hub, "RETRY_DELAYS_S", (0.0, 0.0))
    monkeypatch.setitem(
        hub.PRETRAINED_FILES,
        TINY,
        PublishedFile(TINY_FILE, arch="resnet18", sources=("huggingface", closed_port_url())),
    )


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
    placed = tmp_path / "cache" / TINY_FILE
    placed.parent.mkdir()
    placed.write_bytes(b"weights")
    assert fetch(TINY) == placed


def test_a_pinned_file_of_the_wrong_size_in_the_cache_is_named_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    placed = tmp_path / "cache" / "face_detection_yunet_2023mar.onnx"
    placed.parent.mkdir()
    placed.write_bytes(b"<html>a proxy's error page</html>")
    with pytest.raises(PretrainedDownloadError, match="not the published 232589") as info:
        fetch("yunet")
    assert str(placed) in str(info.value) and "delete it" in str(info.value)


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
    with pytest.raises(PretrainedDownloadError, match="was not kept") as info:
        fetch(TINY)
    assert "not a published resnet18 checkpoint" in str(info.value)
    assert ".part" not in str(info.value)
    assert server.requests == [TINY_FILE]  # the content is wrong: asking again would not help
    assert cache_listing() == []


def _tiny_onnx(path: Path) -> Path:
    """A one-node ONNX model (Identity) that OpenCV loads."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in "xy"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g", tensor[:1], tensor[1:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_a_pinned_file_with_other_bytes_is_refused_unless_checksums_are_off(
    server, tmp_path, monkeypatch
):
    served = _tiny_onnx(tmp_path / "face_detection_yunet_2023mar.onnx")
    server.files[served.name] = served
    with pytest.raises(PretrainedDownloadError, match="not the published 232589") as info:
        fetch("yunet")
    assert "was not kept" in str(info.value)
    assert cache_listing() == []
    # A private mirror (or this test) serving other bytes on purpose: they still must load.
    monkeypatch.setenv("FER_VERIFY_CHECKSUMS", "0")
    assert fetch("yunet").read_bytes() == served.read_bytes()


def test_a_pinned_file_is_checked_by_its_sha256(server, tmp_path, monkeypatch):
    served = _tiny_onnx(tmp_path / "detector.onnx")
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    size = served.stat().st_size
    monkeypatch.setitem(
        hub.PRETRAINED_FILES, "det", PublishedFile(served.name, sha256=digest, size=size)
    )
    server.files[served.name] = served
    assert fetch("det").read_bytes() == served.read_bytes()
    (cache_dir() / served.name).unlink()
    other = tmp_path / "other.onnx"
    other.write_bytes(served.read_bytes()[:-1] + b"\0")  # same size, one byte changed
    server.files[served.name] = other
    with pytest.raises(
        PretrainedDownloadError, match=f"SHA-256 [0-9a-f]+ is not the published {digest}"
    ):
        fetch("det")
    assert cache_listing() == []


def test_an_html_page_is_not_kept_as_the_onnx_detector(server, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_VERIFY_CHECKSUMS", "0")  # so that the load check is what refuses
    served = tmp_path / "face_detection_yunet_2023mar.onnx"
    served.write_bytes(b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>")
    server.files[served.name] = served
    with pytest.raises(PretrainedDownloadError, match="OpenCV cannot load the downloaded file"):
        fetch("yunet")
    assert cache_listing() == []


def test_an_endless_body_stops_at_the_known_size(server, monkeypatch):
    monkeypatch.setitem(
        hub.PRETRAINED_FILES, TINY, PublishedFile(TINY_FILE, arch="resnet18", max_size=1 << 20)
    )
    server.endless.add(TINY_FILE)
    with pytest.raises(PretrainedDownloadError, match="more than the 1048576 bytes the file has"):
        fetch(TINY)
    assert server.requests == [TINY_FILE]  # not retried: the content is wrong
    assert cache_listing() == []


def test_an_announced_size_beyond_the_files_is_refused_before_reading(
    server, tiny_checkpoint, monkeypatch
):
    monkeypatch.setitem(
        hub.PRETRAINED_FILES, TINY, PublishedFile(TINY_FILE, arch="resnet18", max_size=1000)
    )
    server.files[TINY_FILE] = tiny_checkpoint
    with pytest.raises(
        PretrainedDownloadError, match=r"announces [0-9]+ bytes, more than the 1000"
    ):
        fetch(TINY)
    assert cache_listing() == []


def test_no_network_is_said_once_per_source_within_seconds(monkeypatch, caplog):
    """Both sources unreachable (closed ports on 127.0.0.1): one line naming each once, no
    retries, no log noise, in well under the seconds a retrying client takes."""
    unreachable = closed_port_url()
    monkeypatch.setitem(
        hub.PRETRAINED_FILES,
        TINY,
        PublishedFile(TINY_FILE, arch="resnet18", sources=("huggingface", unreachable)),
    )
    monkeypatch.setattr(hub, "RETRY_DELAYS_S", (1.0, 3.0))  # would show as seconds if retried
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(PretrainedDownloadError) as info:
        fetch(TINY)
    assert time.monotonic() - started < 2.0
    message = str(info.value)
    assert "\n" not in message
    hf_url = hub.huggingface_url(TINY_FILE)
    assert message.count(hf_url) == 2  # once as the failure, once in where to get it by hand
    assert message.count(f"{unreachable}/{TINY_FILE}") == 2
    assert message.count("no network?") == 2
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert cache_listing() == []


def test_a_missing_pretrained_file_name_given_as_a_path_says_how_to_fetch_it(tmp_path):
    name = hub.PRETRAINED_FILES["resmasking_dropout1"].filename
    with pytest.raises(CheckpointError, match="pretrained:resmasking_dropout1") as info:
        load_model(tmp_path / name)
    assert "does not exist" in str(info.value)


def test_a_full_disk_stops_at_once_naming_the_file_and_the_cause(
    server, tiny_checkpoint, monkeypatch
):
    server.files[TINY_FILE] = tiny_checkpoint

    def disk_full(out, chunk, part):
        raise hub._LocalError(part, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    monkeypatch.setattr(hub, "_write", disk_full)
    with pytest.raises(PretrainedDownloadError) as info:
        fetch(TINY)
    message = str(info.value)
    assert "No space left on device (ENOSPC)" in message and str(cache_dir()) in message
    assert "internet" not in message
    assert server.requests == [TINY_FILE]  # no retries, no other source
    assert cache_listing() == []


def test_a_folder_in_the_way_or_a_file_as_the_cache_stops_before_downloading(
    server, tiny_checkpoint, tmp_path, monkeypatch
):
    server.files[TINY_FILE] = tiny_checkpoint
    (cache_dir() / TINY_FILE).mkdir(parents=True)
    with pytest.raises(PretrainedDownloadError, match="is in the way") as info:
        fetch(TINY)
    assert str(cache_dir() / TINY_FILE) in str(info.value)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("FER_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(PretrainedDownloadError, match="Not a directory") as info:
        fetch(TINY)
    assert str(blocker / "cache") in str(info.value) and "internet" not in str(info.value)
    assert server.requests == []


def test_abandoned_part_files_are_removed_and_live_ones_kept(server, tiny_checkpoint):
    import fcntl

    server.files[TINY_FILE] = tiny_checkpoint
    folder = cache_dir()
    folder.mkdir(parents=True)
    old = time.time() - 2 * hub.ABANDONED_AFTER_S
    abandoned = folder / f".{TINY_FILE}.99999.deadbeef.part"
    abandoned.write_bytes(b"x" * 1000)
    live = folder / f".{TINY_FILE}.{os.getpid()}.cafe0000.part"
    fresh = folder / f".{TINY_FILE}.99998.0badf00d.part"
    fresh.write_bytes(b"y")
    with live.open("wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for part in (abandoned, live):
            os.utime(part, (old, old))
        fetch(TINY)
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [TINY_FILE, live.name, fresh.name]
        )


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
    monkeypatch.delenv("HF_ENDPOINT")  # the real addresses, in the message only
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


def test_hugging_face_is_tried_first(monkeypatch, tiny_checkpoint):
    with FileServer() as hf:
        hf.files[f"phamquiluan/ResidualMaskingNetwork/resolve/main/{TINY_FILE}"] = tiny_checkpoint
        monkeypatch.setenv("HF_ENDPOINT", hf.url)
        path = fetch(TINY)
    assert hf.requests == [f"phamquiluan/ResidualMaskingNetwork/resolve/main/{TINY_FILE}"]
    assert path.read_bytes() == tiny_checkpoint.read_bytes()
    assert cache_listing() == [TINY_FILE]


@pytest.mark.parametrize("hf_content", [None, b"<html>not found</html>"])
def test_the_release_is_the_fallback_when_hugging_face_fails(
    monkeypatch, tiny_checkpoint, hf_content, tmp_path
):
    with FileServer() as hf, FileServer() as release:
        if hf_content is not None:
            page = tmp_path / "page.html"
            page.write_bytes(hf_content)
            hf.files[f"phamquiluan/ResidualMaskingNetwork/resolve/main/{TINY_FILE}"] = page
        monkeypatch.setenv("HF_ENDPOINT", hf.url)
        entry = PublishedFile(TINY_FILE, arch="resnet18", sources=("huggingface", release.url))
        monkeypatch.setitem(hub.PRETRAINED_FILES, TINY, entry)
        release.files[TINY_FILE] = tiny_checkpoint
        path = fetch(TINY)
    assert len(hf.requests) == 1
    assert release.requests == [TINY_FILE]
    assert path.read_bytes() == tiny_checkpoint.read_bytes()
    assert cache_listing() == [TINY_FILE]


def test_a_cached_checkpoint_that_does_not_load_is_named_with_advice_to_delete_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    placed = cache_dir() / TINY_FILE
    placed.parent.mkdir(parents=True)
    torch.save({"net": create_model("resnet34").state_dict()}, placed)  # another network
    with pytest.raises(CheckpointError, match="does not fit architecture 'resnet18'") as info:
        load_model(f"pretrained:{TINY}")
    assert f"{placed} is a file of the download cache" in str(info.value)
    assert "delete it" in str(info.value)


def test_load_model_reads_a_pretrained_name(server, tiny_checkpoint, tiny_model, monkeypatch):
    server.files[TINY_FILE] = tiny_checkpoint
    loaded = load_model(f"pretrained:{TINY}")
    assert loaded.arch == "resnet18"
    torch.testing.assert_close(_logits(loaded), _logits(tiny_model))
    # The table's arch is the one requested: a wrong entry is reported, not guessed around.
    (cache_dir() / TINY_FILE).unlink()
    monkeypatch.setitem(hub.PRETRAINED_FILES, TINY, PublishedFile(TINY_FILE, arch="resnet34"))
    with pytest.raises(CheckpointError, match="not a published resnet34 checkpoint"):
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
