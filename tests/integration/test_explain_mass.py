"""Honest maps: on synthetic faces, whose drawing code knows where it put the features that
decide the class, a briefly trained ResNet-18 puts at least twice as much of its class map's
mass there as those regions' share of the face, and the same network with fresh weights does
not; the same maps made uniform or shifted fail.

The map is HiResCAM at the second stage (8x8 cells at the demo's 64 px). Grad-CAM at the last
stage, the default, cannot pass at 64 px whatever the network learned: that stage is a 2x2
grid (tests/unit/test_explain.py shows that the best possible 2x2 map stays under 1.5x).

Flipped and transposed maps are not failures this measure can see: the faces are nearly
symmetric about the crop's centre, up-down as well as left-right (brows at -0.46, mouth at
+0.47 of the head's half height), so a map turned upside down lands on the features again
(measured 2.94 against 2.89 for the map itself). The test prints those figures and does not
assert on them; alignment errors of that kind are caught by the geometry tests
(tests/unit/test_explain.py: a moved face moves its map, points land where crop_face puts them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer_lightning.data.synthetic import draw_face_with_regions, make_split
from fer_lightning.faces.transforms import to_model_input
from fer_lightning.inference.explain import HIRESCAM, explain_crops
from fer_lightning.labels import EMOTIONS
from fer_lightning.models import create_model

pytestmark = pytest.mark.slow

INPUT, STEPS, BATCH = 64, 200, 32


def concentration(maps: np.ndarray, regions: np.ndarray) -> float:
    """Mean over faces of (share of the map's mass inside the regions) / (their share of the
    face crop's area). 1: no better than uniform."""
    share = (maps * regions).sum((1, 2)) / np.maximum(maps.sum((1, 2)), 1e-12)
    return float((share / regions.mean((1, 2))).mean())


def train_demo(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    faces, labels = make_split(60, np.random.default_rng(seed))
    x_all, y_all = torch.from_numpy(faces), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(STEPS):
        index = torch.randint(0, len(x_all), (BATCH,), generator=generator)
        loss = F.cross_entropy(model(to_model_input(x_all[index], INPUT)), y_all[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def test_trained_maps_fall_on_the_class_deciding_features_and_fresh_ones_do_not():
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    drawn = [draw_face_with_regions(i % len(EMOTIONS), rng) for i in range(140)]
    faces = np.stack([face for face, _ in drawn])
    regions = np.stack([region for _, region in drawn]).astype(np.float32)
    labels = np.arange(len(faces)) % len(EMOTIONS)

    fresh = create_model("resnet18").eval()
    trained = train_demo(create_model("resnet18"))

    probs, maps = explain_crops(trained, faces, INPUT, layer="layer2", method=HIRESCAM)
    accuracy = float((probs.argmax(1) == labels).mean())
    assert accuracy > 0.8, f"the demo did not learn ({accuracy:.0%}): the test means nothing"
    looked = maps[HIRESCAM]
    trained_score = concentration(looked, regions)
    _, fresh_maps = explain_crops(fresh, faces, INPUT, layer="layer2", method=HIRESCAM)
    fresh_score = concentration(fresh_maps[HIRESCAM], regions)
    print(f"concentration: trained {trained_score:.2f}, fresh {fresh_score:.2f}")
    assert trained_score >= 2.0, (trained_score, fresh_score)
    assert fresh_score < 2.0, (trained_score, fresh_score)

    wrong = {
        "uniform": np.ones_like(looked),
        "shifted down a quarter": np.roll(looked, 12, axis=1),
        "shifted right a quarter": np.roll(looked, 12, axis=2),
    }
    for name, maps_wrong in wrong.items():
        score = concentration(maps_wrong, regions)
        print(f"concentration, {name}: {score:.2f}")
        assert score < 2.0, (name, score)
    # Reported, not asserted (see the module's docstring).
    for name, maps_symmetric in {
        "upside down": looked[:, ::-1, :],
        "mirrored": looked[:, :, ::-1],
        "transposed": looked.transpose(0, 2, 1),
    }.items():
        print(f"concentration, {name}: {concentration(maps_symmetric, regions):.2f}")
