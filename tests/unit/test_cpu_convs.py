"""The project's CPU convolutions: nn.Conv2d's outputs and gradients, on the path each claims."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fer_lightning.models import cpu_convs
from fer_lightning.models.cpu_convs import use_cpu_convs

# Tiny maps, (in, out, kernel, stride, padding, bias, map side): the Residual Masking Network's
# shapes at 32-64 px (3x3 on 1x1, 2x2 and 4x4 maps with too few channels for Winograd, the
# masks' 2x2 stride-2 and 1x1 convolutions) and an odd one (5x5 window, padding 2, on a 1x1 map).
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
    assert use_cpu_convs(fast) == 1
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
    use_cpu_convs(grouped)
    grouped(torch.randn(2, 8, 2, 2))
    assert calls[0] == 2


def count_winograd_calls(monkeypatch) -> list[int]:
    """The tile size of every Winograd convolution CPUConv2d runs."""
    tiles = []
    winograd = cpu_convs.winograd_conv3x3

    def spy(x, weight, tile):
        tiles.append(tile)
        return winograd(x, weight, tile)

    monkeypatch.setattr(cpu_convs, "winograd_conv3x3", spy)
    return tiles


# (in, out, map side) -> the tile CPUConv2d picks; None: PyTorch's convolution.
WINOGRAD_CASES = [
    ((128, 128, 8), 4),  # sides multiples of 4: F(4x4, 3x3)
    ((128, 160, 28), 4),
    ((160, 128, 14), 2),  # even sides: F(2x2, 3x3)
    ((128, 128, 4), 2),
    ((128, 128, 7), None),  # odd sides: oneDNN
    ((64, 128, 8), None),  # too few channels for the transforms to pay
]


@pytest.mark.parametrize("shape,tile", WINOGRAD_CASES)
def test_3x3_convolutions_take_winograd_where_it_pays_with_the_same_numbers(
    monkeypatch, shape, tile
):
    cin, cout, side = shape
    reference, fast = pair(cin, cout, 3, 1, 1, True)
    x = torch.randn(3, cin, side, side)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = reference(x_ref)
    tiles, native = count_winograd_calls(monkeypatch), count_native_calls(monkeypatch)
    got = fast(x_fast)
    assert tiles == ([] if tile is None else [tile])
    assert native[0] == (1 if tile is None else 0)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    for mine, theirs in [
        (got, expected),
        (x_fast.grad, x_ref.grad),
        (fast.weight.grad, reference.weight.grad),
        (fast.bias.grad, reference.bias.grad),
    ]:
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_winograd_is_not_taken_under_bf16_autocast_or_in_float64(monkeypatch):
    _, fast = pair(128, 128, 3, 1, 1, False)
    tiles = count_winograd_calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(torch.randn(2, 128, 8, 8)).dtype == torch.bfloat16
    fast.double()(torch.randn(2, 128, 8, 8, dtype=torch.float64))
    assert tiles == []


def test_onednn_gets_the_smaller_of_input_and_weight_to_convert(monkeypatch):
    """A channels-last input with a plain weight: the input is made NCHW where it is the
    smaller (else PyTorch copies the weight on every call), left as it is where it is not."""
    layouts = []
    native = nn.Conv2d._conv_forward

    def spy(self, x, weight, bias):
        layouts.append(x.is_contiguous())
        return native(self, x, weight, bias)

    reference, fast = pair(256, 256, 3, 1, 1, False)  # 589,824 weights
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", spy)
    for side in (7, 49):  # 7x7 maps (Winograd skips odd sides): 25,088 and 1.2M inputs
        x = torch.randn(2, 256, side, side).contiguous(memory_format=torch.channels_last)
        got = fast(x)
        torch.testing.assert_close(got, native(reference, x, reference.weight, None))
    assert layouts == [True, False]


def test_cpu_convs_auto_follows_the_cpu_they_were_measured_faster_on(monkeypatch):
    """``model.cpu_convs=auto`` (the default): on where the CPU's best vector unit is AVX2,
    off with AVX-512 (oneDNN was faster there) and elsewhere; true and false are kept; anything
    else is one clear error."""
    from fer_lightning import runtime
    from fer_lightning.training.module import FERClassifier

    for capability, expected in (("AVX2", True), ("AVX512", False), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert runtime.resolve_cpu_convs("auto") is expected
        module = FERClassifier(arch="resnet18", input_size=32)
        converted = any(isinstance(m, cpu_convs.CPUConv2d) for m in module.net.modules())
        assert converted is expected, capability
        assert module.hparams.cpu_convs == "auto"
    assert runtime.resolve_cpu_convs(True) is True and runtime.resolve_cpu_convs(False) is False
    with pytest.raises(ValueError, match="use true, false or auto"):
        runtime.resolve_cpu_convs("yes")
