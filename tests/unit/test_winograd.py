"""Winograd F(2x2, 3x3) and F(4x4, 3x3): a 3x3 convolution's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fer_lightning.models.winograd import winograd_conv3x3


def close(mine: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> None:
    """Equal up to ``tolerance`` of the reference's largest magnitude (fp32 rounding)."""
    scale = theirs.abs().max().item()
    torch.testing.assert_close(mine, theirs, rtol=0, atol=tolerance * scale)


# (batch, in, out, height, width): whole tiles, and maps that end in a part-tile (odd sides,
# non-square, smaller than one tile).
SHAPES = [(2, 8, 5, 8, 8), (3, 6, 4, 7, 7), (2, 5, 7, 5, 9), (1, 3, 2, 1, 1), (2, 4, 4, 2, 6)]


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("n,cin,cout,h,w", SHAPES)
def test_outputs_and_gradients_are_the_convolutions(tile, n, cin, cout, h, w):
    torch.manual_seed(0)
    x = torch.randn(n, cin, h, w, requires_grad=True)
    weight = torch.randn(cout, cin, 3, 3, requires_grad=True)
    expected = F.conv2d(x, weight, padding=1)
    grad = torch.randn_like(expected)
    expected_x, expected_w = torch.autograd.grad(expected, (x, weight), grad)
    got = winograd_conv3x3(x, weight, tile)
    got_x, got_w = torch.autograd.grad(got, (x, weight), grad)
    assert got.shape == expected.shape and got_x.shape == x.shape and got_w.shape == weight.shape
    # F(4x4) multiplies by up to 8 and 1/24 on the way: fp32 rounding of ~1e-5 relative.
    tolerance = 1e-5 if tile == 2 else 5e-5
    close(got, expected, tolerance)
    close(got_x, expected_x, tolerance)
    close(got_w, expected_w, tolerance)


def test_channels_last_input_and_inference_give_the_same_numbers():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 12, 12)
    weight = torch.randn(24, 16, 3, 3)
    expected = F.conv2d(x, weight, padding=1)
    with torch.no_grad():
        got = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), weight)
    close(got, expected, 5e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_unsupported_tiles_and_kernels_are_refused_with_the_value():
    x, weight = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="tile must be one of \\(2, 4\\), got 3"):
        winograd_conv3x3(x, weight, 3)
    with pytest.raises(ValueError, match=r"\(3, 2, 5, 5\)"):
        winograd_conv3x3(x, torch.randn(3, 2, 5, 5))


def test_float64_inputs_use_float64_transforms():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    got = winograd_conv3x3(x, weight, 4)
    assert got.dtype == torch.float64
    close(got, F.conv2d(x, weight, padding=1), 1e-12)
    assert torch.autograd.gradcheck(
        lambda a, b: winograd_conv3x3(a, b, 4), (x[:1, :2], weight[:2, :2])
    )
