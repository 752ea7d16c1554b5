"""docs/images/explain.png: where a briefly trained ResNet-18 looked on synthetic faces.

    python docs/explain_figure.py [--steps 200] [--out docs/images/explain.png]

Trains a ResNet-18 at 64 px on 420 synthetic faces for ``--steps`` steps of 32 (the recipe of
tests/integration/test_explain_mass.py), then draws one new face per class: the face with its
class-deciding strokes outlined, the default Grad-CAM (last stage: 2x2 cells at 64 px) and
HiResCAM at the second stage (8x8 cells) over it, each titled with its concentration on the
strokes (1 = uniform).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from fer_lightning.data.synthetic import draw_face_with_regions, make_split
from fer_lightning.faces.transforms import to_model_input
from fer_lightning.inference.explain import GRADCAM, HIRESCAM, explain_crops
from fer_lightning.labels import EMOTIONS
from fer_lightning.models import create_model

INPUT = 64


def train(steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    faces, labels = make_split(60, np.random.default_rng(0))
    x_all, y_all = torch.from_numpy(faces), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(0)
    model = create_model("resnet18")
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x_all), (32,), generator=generator)
        loss = F.cross_entropy(model(to_model_input(x_all[index], INPUT)), y_all[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def concentration(values: np.ndarray, region: np.ndarray) -> float:
    return float((values * region).sum() / values.sum() / region.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("docs/images/explain.png"))
    args = parser.parse_args()
    model = train(args.steps)
    rng = np.random.default_rng(11)
    drawn = [draw_face_with_regions(label, rng) for label in range(len(EMOTIONS))]
    faces = np.stack([face for face, _ in drawn])
    probs, coarse = explain_crops(model, faces, INPUT)
    _, fine = explain_crops(model, faces, INPUT, layer="layer2", method=HIRESCAM)
    rows = [("face, class-deciding strokes", None), ("Grad-CAM, last stage", coarse[GRADCAM])]
    rows.append(("HiResCAM, second stage", fine[HIRESCAM]))
    fig, axes = plt.subplots(len(rows), len(EMOTIONS), figsize=(1.9 * len(EMOTIONS), 6.4))
    for column, (face, region) in enumerate(drawn):
        predicted = EMOTIONS[int(probs[column].argmax())]
        for row, (title, maps) in enumerate(rows):
            ax = axes[row, column]
            ax.imshow(face, cmap="gray", vmin=0, vmax=255)
            if maps is None:
                edges = cv2.Canny(region.astype(np.uint8) * 255, 100, 200) > 0
                ax.imshow(np.ma.masked_where(~edges, edges), cmap="autumn", alpha=1.0)
                ax.set_title(f"{EMOTIONS[column]} -> {predicted}", fontsize=8)
            else:
                ax.imshow(maps[column], cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.set_title(f"{concentration(maps[column], region):.1f}x", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle(f"ResNet-18 at {INPUT} px after {args.steps} steps (drawn -> predicted)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
