"""Small-map convolutions: the same outputs and gradients as nn.Conv2d, on the path they claim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fer_lightning.models import create_model
from fer_lightning.models.small_maps import SmallMapConv2d, use_small_map_convs

# (in, out, kernel, stride, padding, bias, map side): the Residual Masking Network's shapes at
# 32-64 px (3x3 on 1x1, 2x2 and 4x4 maps, the masks' 2x2 stride-2 and 1x1 convolutions) and
# an odd one (5x5 window, padding 2, on a 1x1 map).
CASES = [
    (64, 48, 3, 1, 1, False, 1),
    (64, 48, 3, 1, 1, True, 2),
    (32, 40, 3, 1, 1, False, 4),
    (32, 40, 3, 2, 1, False, 4),
    (32, 40, 2, 2, 0, True, 4),
    (32, 40, 1, 1, 0, False, 2),
    (16, 24, 5, 1, 2, True, 1),
]


def pair(cin, cout, kernel, stride, padding, bias):
    torch.manual_seed(0)
    reference = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    fast = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    fast.load_state_dict(reference.state_dict())
    assert use_small_map_convs(fast) == 1
    return reference, fast


def count_native_calls(monkeypatch) -> list[int]:
    calls = [0]
    native = nn.Conv2d._conv_forward

    def spy(self, x, weight, bias):
        calls[0] += 1
        return native(self, x, weight, bias)

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", spy)
    return calls


@pytest.mark.parametrize("cin,cout,kernel,stride,padding,bias,side", CASES)
def test_same_outputs_and_gradients_without_the_native_convolution(
    monkeypatch, cin, cout, kernel, stride, padding, bias, side
):
    reference, fast = pair(cin, cout, kernel, stride, padding, bias)
    x = torch.randn(5, cin, side, side)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = reference(x_ref)
    calls = count_native_calls(monkeypatch)
    got = fast(x_fast)
    assert calls[0] == 0, "the small map went through nn.Conv2d's convolution"
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-5)
    if bias:
        torch.testing.assert_close(fast.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)


def test_large_maps_and_grouped_convolutions_keep_pytorchs_convolution(monkeypatch):
    calls = count_native_calls(monkeypatch)
    _, fast = pair(8, 8, 3, 1, 1, False)
    fast(torch.randn(2, 8, 8, 8))  # 64 output positions
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
    use_small_map_convs(grouped)
    grouped(torch.randn(2, 8, 2, 2))
    assert calls[0] == 2


def test_the_network_keeps_its_keys_and_numbers_at_32px():
    torch.manual_seed(0)
    reference = create_model("resmasking_dropout1").eval()
    fast = create_model("resmasking_dropout1").eval()
    fast.load_state_dict(reference.state_dict())
    converted = use_small_map_convs(fast)
    assert converted == sum(type(m) is SmallMapConv2d for m in fast.modules()) > 50
    assert list(fast.state_dict()) == list(reference.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-4, atol=1e-4)
