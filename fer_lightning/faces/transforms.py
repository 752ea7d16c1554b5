"""Batched, device-side preprocessing shared by training, evaluation and inference.

Per-pixel work on the CPU stays at the datasets' native 48x48; the up-sizing to the network's
input (224 in the paper, any multiple of 32) and the 3-channel stacking happen here, once per
batch, on whatever device the batch is on. Test-time augmentation views are made the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# The paper's 10-view test-time augmentation, made deterministic: every combination of these
# rotations (degrees) with and without a horizontal flip.
TTA_ANGLES: tuple[float, ...] = (0.0, -10.0, 10.0, -20.0, 20.0)


def to_model_input(faces: Tensor, size: int) -> Tensor:
    """Grayscale faces -> network input.

    ``faces``: (N, H, W) or (N, 1, H, W), uint8 in [0, 255] or float in [0, 1].
    Returns (N, 3, size, size) float32 in [0, 1]: bilinear resize (as OpenCV's ``INTER_LINEAR``
    does when up-sampling) and the gray channel repeated three times. No mean/std normalisation,
    as in the published recipe.
    """
    if faces.dim() == 3:
        faces = faces.unsqueeze(1)
    if faces.dim() != 4 or faces.shape[1] != 1:
        raise ValueError(
            "Expected grayscale faces of shape (N, H, W) or (N, 1, H, W), "
            f"got {tuple(faces.shape)}."
        )
    # On CPUs uint8 stays uint8 through the resize, as with OpenCV in the original pipeline,
    # and torch's uint8 bilinear kernel is the faster one; other devices resize in float.
    x = faces if faces.device.type == "cpu" else faces.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.float()
    if faces.dtype == torch.uint8:
        x = x.div_(255.0)
    return x.expand(-1, 3, -1, -1).contiguous()


def rotate_and_flip(x: Tensor, angles_deg: Tensor, flips: Tensor) -> Tensor:
    """Rotate each image of ``x`` (N, C, H, W) about its centre and optionally mirror it.

    ``x`` is floating point; ``angles_deg`` (N,) float, ``flips`` (N,) bool. One
    ``grid_sample`` for the whole batch; pixels rotated in from outside the image are black, as
    with the training augmentation.
    """
    theta = angles_deg.to(device=x.device, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    sign = 1.0 - 2.0 * flips.to(device=x.device, dtype=torch.float32)  # -1 mirrors x
    zeros = torch.zeros_like(cos)
    matrix = torch.stack(
        [torch.stack([cos * sign, -sin, zeros], 1), torch.stack([sin * sign, cos, zeros], 1)], 1
    )
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def tta_views(x: Tensor, angles: tuple[float, ...] = TTA_ANGLES) -> Tensor:
    """Test-time augmentation views of a batch of model inputs.

    ``x``: (N, C, S, S). Returns (V, N, C, S, S) with V = 2 * len(angles): each angle without,
    then with, a horizontal flip. View 0 is ``x`` itself.
    """
    n = x.shape[0]
    combos = [(angle, flip) for flip in (False, True) for angle in angles]
    angle_t = torch.tensor([a for a, _ in combos], device=x.device).repeat_interleave(n)
    flip_t = torch.tensor([f for _, f in combos], device=x.device).repeat_interleave(n)
    tiled = x.unsqueeze(0).expand(len(combos), *x.shape).reshape(-1, *x.shape[1:])
    views = rotate_and_flip(tiled, angle_t, flip_t).reshape(len(combos), *x.shape)
    views[0] = x  # exact identity, no resampling error
    return views
