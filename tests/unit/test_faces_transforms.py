"""The batched device-side preprocessing shared by training, evaluation and inference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fer_lightning.faces.transforms import rotate_and_flip, to_model_input, tta_views


def test_resize_matches_the_original_opencv_pipeline():
    """The original code resized each 48x48 face with cv2.resize (bilinear), 3 channels."""
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    expected = np.stack(
        [cv2.resize(face, (224, 224), interpolation=cv2.INTER_LINEAR) for face in faces]
    )
    x = to_model_input(torch.from_numpy(faces), 224)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 2])
    difference = np.abs(x[:, 0].numpy() * 255 - expected.astype(np.float32))
    assert difference.max() <= 1.0  # rounding of the fixed-point kernels only


def test_float_input_and_native_size_pass_through():
    x = torch.rand(2, 1, 64, 64)
    out = to_model_input(x, 64)
    assert torch.equal(out[:, 1], x[:, 0])
    assert out.min() >= 0 and out.max() <= 1


def test_rgb_input_is_refused_clearly():
    with pytest.raises(ValueError, match="grayscale"):
        to_model_input(torch.zeros(2, 3, 48, 48, dtype=torch.uint8), 64)


def test_tta_views_are_flips_and_rotations_of_the_batch():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64)
    views = tta_views(x)
    assert views.shape == (10, 4, 3, 64, 64)
    assert torch.equal(views[0], x)
    torch.testing.assert_close(views[5], x.flip(-1), atol=1e-5, rtol=0)
    # A +90 degree rotation through the same kernel equals torch.rot90 (up to the sign
    # convention of image coordinates, y pointing down).
    rotated = rotate_and_flip(x, torch.full((4,), 90.0), torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(rotated, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)
    # The rotated views differ from the original but keep its brightness.
    assert not torch.allclose(views[1], x)
    assert views[1:5].mean().item() == pytest.approx(x.mean().item(), abs=0.1)
