"""The whole Residual Masking Network's numbers (seconds each): the CPU convolutions against
float64, and the naive ablation ignoring its masks."""

from __future__ import annotations

import copy

import pytest
import torch

from fer_lightning.models import (
    create_model,
)
from fer_lightning.models.cpu_convs import CPUConv2d, use_cpu_convs
from tests.helpers.recipe import load_recipe, recipe_input
from tests.unit.test_cpu_convs import count_winograd_calls


@pytest.mark.slow
def test_the_network_keeps_its_keys_numbers_and_gradients_at_32px(monkeypatch):
    """Outputs and every parameter's gradient as float64 gives them, at 32 px (Winograd on the
    4x4 and 8x8 maps, the matrix product on 2x2 and 1x1).

    Both fp32 paths are compared with float64, not with each other: PyTorch's own fp32
    convolutions are the inaccurate side on some machines and inputs (1.6% on this input on an
    AVX2 CPU, 6-8% on an AMX one; benchmarks/gradient_accuracy.py). Batch norm runs as its fixed
    affine map (eval mode): with the statistics of 4 images on 1x1 maps it is ill-conditioned,
    and every fp32 path, PyTorch's included, lands percents from float64 (same script)."""
    torch.manual_seed(0)
    reference = create_model("resmasking_dropout1").eval()
    fast = copy.deepcopy(reference)
    float64 = copy.deepcopy(reference).double()
    converted = use_cpu_convs(fast)
    assert converted == sum(type(m) is CPUConv2d for m in fast.modules()) > 50
    assert list(fast.state_dict()) == list(reference.state_dict())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = float64(x.double())
        torch.testing.assert_close(fast(x).double(), exact, rtol=1e-4, atol=1e-4)
    tiles = count_winograd_calls(monkeypatch)
    fast(x).logsumexp(dim=1).sum().backward()
    float64(x.double()).logsumexp(dim=1).sum().backward()
    assert 2 in tiles and 4 in tiles
    # Measured on this input: 3.4e-6 at most (AVX2); PyTorch's fp32 convolutions: 1.6e-2.
    largest = max(p.grad.abs().max().item() for p in float64.parameters())
    for (name, mine), exact_param in zip(
        fast.named_parameters(), float64.parameters(), strict=True
    ):
        error = (mine.grad.double() - exact_param.grad).norm().item()
        assert error <= 1e-4 * exact_param.grad.norm().item() + 1e-7 * largest, name


@pytest.mark.slow
def test_naive_ablation_ignores_its_masks(manifest):
    """Same weights: the naive model equals the masked one with every mask output at zero."""
    entries = manifest["resmasking_dropout1"]["keys"]
    naive = load_recipe(create_model("resmasking_naive_dropout1"), entries)
    masked = load_recipe(create_model("resmasking_dropout1"), entries)
    x = recipe_input(64)
    with torch.no_grad():
        naive_out = naive(x)
        assert not torch.allclose(naive_out, masked(x))
        masked.apply_masks = False
        torch.testing.assert_close(naive_out, masked(x))
