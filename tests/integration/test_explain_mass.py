"""Honest maps: on synthetic faces, whose drawing code knows where it put the features that
decide the class, a briefly trained ResNet-18 puts at least twice as much of its class map's
mass there as those regions' share of the face crop, and the same network with fresh weights
does not; the same maps made uniform, shifted, flipped up-down, mirrored or transposed fail,
and so does a map that is just the head.

The faces are framed off the crop's centre, larger, at one of two anti-diagonal corners
(tests/helpers/maps.py), and the network is trained on that framing: centred, the faces are
nearly symmetric about the crop's centre and a flipped map lands on the features again.

Asserted: HiResCAM at the second stage (8x8 cells at the demo's 64 px). NOT asserted, only
printed: the default map, Grad-CAM of the predicted class at the last stage, which at 64 px is
a 2x2 grid; no 2x2 map can pass (tests/unit/test_explain.py). At 128 px (4x4 cells, where the
best possible map reaches about 3 on these faces) a network trained at 64 px and fine-tuned at
128 px gave Grad-CAM 1.36-1.38 against HiResCAM 3.66-4.04 on the same network: Grad-CAM's one
weight per channel spreads the mass over the cells. So on small inputs the default map says
next to nothing (0.99-1.00 below, uniform is 1); HiResCAM at the second stage is the one to read.

Measured with seeds 0, 1, 2 (this test runs seed 0): accuracy 97%, 100%, 98%; HiResCAM trained
2.30, 2.17, 2.19; fresh 1.21, 1.20, 1.01; every wrong map at most 1.84 (the head alone), flipped
up-down 1.45-1.62, mirrored 0.78-0.87, transposed 0.91-1.08; Grad-CAM 0.99-1.00.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer_lightning.faces.transforms import to_model_input
from fer_lightning.inference.explain import GRADCAM, HIRESCAM, explain_crops
from fer_lightning.models import create_model
from tests.helpers.maps import concentration, framed_faces

pytestmark = pytest.mark.slow

# The demo's input, 64 px; 300 batches of 32.
INPUT, STEPS, BATCH = 64, 300, 32
TRAIN_FACES, TEST_FACES = 420, 140
QUARTER = 12  # a quarter of the 48 px crop
WRONG = (
    "uniform",
    "the head, uniformly",
    "shifted down a quarter",
    "shifted right a quarter",
    "upside down",
    "mirrored",
    "transposed",
)


def train_demo(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` trained on framed faces with AdamW: ``STEPS`` batches of ``BATCH`` at
    ``INPUT``."""
    faces, _, _, labels = framed_faces(TRAIN_FACES, np.random.default_rng(seed))
    x_all, y_all = torch.from_numpy(faces), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    # The demo's optimiser: AdamW at 1e-3, cosine decay to 0 (a constant 2e-3 left one seed in
    # three at 55% accuracy).
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, STEPS)
    model.train()
    for _ in range(STEPS):
        index = torch.randint(0, len(x_all), (BATCH,), generator=generator)
        loss = F.cross_entropy(model(to_model_input(x_all[index], INPUT)), y_all[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


def wrong_maps(maps: np.ndarray, heads: np.ndarray) -> dict[str, np.ndarray]:
    """The maps (N, 48, 48) as a misaligned or a lazy method would give them (:data:`WRONG`):
    uniform, the head's mask, shifted, flipped up-down, mirrored, transposed."""
    wrong = (
        np.ones_like(maps),
        heads,
        np.roll(maps, QUARTER, axis=1),
        np.roll(maps, QUARTER, axis=2),
        maps[:, ::-1, :],
        maps[:, :, ::-1],
        maps.transpose(0, 2, 1),
    )
    return dict(zip(WRONG, wrong, strict=True))


def measure(seed: int) -> dict[str, float]:
    """Accuracy and concentrations (1 = uniform) of a ResNet-18 trained with ``seed`` and of
    the same network with fresh weights, on new framed faces."""
    torch.manual_seed(seed)
    trained = train_demo(create_model("resnet18"), seed)
    fresh = create_model("resnet18").eval()
    faces, regions, heads, labels = framed_faces(TEST_FACES, np.random.default_rng(1000 + seed))
    probs, maps = explain_crops(trained, faces, INPUT)  # what users get: Grad-CAM, last stage
    figures = {"accuracy": float((probs.argmax(1) == labels).mean())}
    _, hires = explain_crops(trained, faces, INPUT, layer="layer2", method=HIRESCAM)
    _, fresh_maps = explain_crops(fresh, faces, INPUT)
    _, fresh_hires = explain_crops(fresh, faces, INPUT, layer="layer2", method=HIRESCAM)
    for method, looked, unlearned in (
        (GRADCAM, maps[GRADCAM], fresh_maps[GRADCAM]),
        (HIRESCAM, hires[HIRESCAM], fresh_hires[HIRESCAM]),
    ):
        figures[f"{method} trained"] = concentration(looked, regions)
        figures[f"{method} fresh"] = concentration(unlearned, regions)
        for name, wrong in wrong_maps(looked, heads).items():
            figures[f"{method} {name}"] = concentration(wrong, regions)
    return figures


def test_trained_maps_fall_on_the_class_deciding_features_and_wrong_ones_do_not():
    figures = measure(seed=0)
    print("\n".join(f"{name}: {value:.2f}" for name, value in figures.items()))
    accuracy = figures["accuracy"]
    assert accuracy > 0.9, f"the demo did not learn ({accuracy:.0%}): the test means nothing"
    # Asserted for HiResCAM at the second stage; the default Grad-CAM's figures are printed
    # only (see the module's docstring).
    assert figures[f"{HIRESCAM} trained"] >= 2.0, figures
    assert figures[f"{HIRESCAM} fresh"] < 2.0, figures
    for name in WRONG:
        assert figures[f"{HIRESCAM} {name}"] < 2.0, (name, figures)
