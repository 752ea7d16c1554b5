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

# Inputs (seeds of torch.rand) on which the whole network's fp32 gradients are compared.
GRADIENT_INPUTS = (0, 1, 2)
# On a few inputs one fp32 path or the other lands about 1% from float64 while float64 itself is
# smooth there (moving the input by 1e-7 moves its gradients by 2e-7): on seed 1, PyTorch's
# convolutions on an AVX2 EPYC, CPUConv2d on an AVX-512 EPYC (benchmarks/gradient_accuracy.py,
# benchmarks/README.md). A wrong convolution is off on every input; such an input is one.
WITHIN_1E4_AT_LEAST = 2
ODD_INPUT_BOUND = 5e-2


def _worst_gradient_error(fast: torch.nn.Module, float64: torch.nn.Module, seed: int) -> float:
    """The largest ||g - g64|| / (||g64|| + 1e-3 * largest |g64|) over the parameters, after
    checking the outputs, for the input of ``seed``."""
    fast, float64 = copy.deepcopy(fast), copy.deepcopy(float64)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(fast(x).double(), float64(x.double()), rtol=1e-4, atol=1e-4)
    fast(x).logsumexp(dim=1).sum().backward()
    float64(x.double()).logsumexp(dim=1).sum().backward()
    largest = max(p.grad.abs().max().item() for p in float64.parameters())
    return max(
        (mine.grad.double() - exact.grad).norm().item()
        / (exact.grad.norm().item() + 1e-3 * largest)
        for mine, exact in zip(fast.parameters(), float64.parameters(), strict=True)
    )


@pytest.mark.slow
def test_the_network_keeps_its_keys_numbers_and_gradients_at_32px(monkeypatch):
    """Outputs and every parameter's gradient as float64 gives them, at 32 px (Winograd on the
    4x4 and 8x8 maps, the matrix product on 2x2 and 1x1), on three inputs.

    CPUConv2d is compared with float64, not with PyTorch's fp32 convolutions: either fp32 path
    can be the inaccurate side, depending on the machine and the input (GRADIENT_INPUTS). Batch
    norm runs as its fixed affine map (eval mode): with the statistics of 4 images on 1x1 maps
    it is ill-conditioned, and every fp32 path lands percents from float64 (same script)."""
    torch.manual_seed(0)
    reference = create_model("resmasking_dropout1").eval()
    fast = copy.deepcopy(reference)
    float64 = copy.deepcopy(reference).double()
    converted = use_cpu_convs(fast)
    assert converted == sum(type(m) is CPUConv2d for m in fast.modules()) > 50
    assert list(fast.state_dict()) == list(reference.state_dict())
    tiles = count_winograd_calls(monkeypatch)
    errors = {seed: _worst_gradient_error(fast, float64, seed) for seed in GRADIENT_INPUTS}
    assert 2 in tiles and 4 in tiles
    # Measured: 2.5e-6 to 5.1e-6 on the inputs where fp32 holds, 1.6e-2 on the odd one.
    report = ", ".join(f"seed {seed}: {error:.1e}" for seed, error in errors.items())
    assert sum(error <= 1e-4 for error in errors.values()) >= WITHIN_1E4_AT_LEAST, report
    assert max(errors.values()) <= ODD_INPUT_BOUND, report


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
