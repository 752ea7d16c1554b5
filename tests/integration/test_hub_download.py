"""The published checkpoint fetched from a local HTTP server at its real size, then from the
cache."""

from __future__ import annotations

import filecmp
import shutil

import pytest
import torch

from fer_lightning.models import create_model, hub
from fer_lightning.models.hub import cache_dir
from tests.unit.test_hub import isolated, server  # noqa: F401  (fixtures)


@pytest.mark.slow
def test_from_pretrained_matches_the_local_checkpoint_and_then_uses_the_cache(
    server,  # noqa: F811  (the fixture imported above)
    tmp_path,
):
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
