"""The project's RAdam: torch.optim.RAdam's numbers and state dict, fused once rectified."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fer_lightning.training.optim import RAdam


def train(model, optimizer, steps, seed=0, scheduler=None):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 12, generator=generator)
        y = torch.randint(0, 5, (16,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 5))
    return model, copy.deepcopy(model)


def assert_same(a, b):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_same_numbers_as_torch_radam_across_rectification_and_lr_changes():
    reference, fused = models()
    opt_ref = torch.optim.RAdam(reference.parameters(), lr=1e-2, weight_decay=1e-3, foreach=True)
    opt_fused = RAdam(fused.parameters(), lr=1e-2, weight_decay=1e-3, foreach=True)
    train(reference, opt_ref, 40, scheduler=torch.optim.lr_scheduler.StepLR(opt_ref, 10, 0.5))
    train(fused, opt_fused, 40, scheduler=torch.optim.lr_scheduler.StepLR(opt_fused, 10, 0.5))
    assert opt_fused._adam is not None, "no step took the fused path"
    assert_same(reference, fused)


def test_state_dicts_move_between_the_two_optimisers():
    reference, fused = models()
    opt_ref = torch.optim.RAdam(reference.parameters(), lr=1e-2, weight_decay=1e-3)
    opt_fused = RAdam(fused.parameters(), lr=1e-2, weight_decay=1e-3)
    train(reference, opt_ref, 10)
    train(fused, opt_fused, 10)
    # Swap the states, as resuming a checkpoint written by the other class would.
    state_ref, state_fused = opt_ref.state_dict(), opt_fused.state_dict()
    opt_ref.load_state_dict(copy.deepcopy(state_fused))
    opt_fused.load_state_dict(copy.deepcopy(state_ref))
    train(reference, opt_ref, 10, seed=1)
    train(fused, opt_fused, 10, seed=1)
    assert_same(reference, fused)
    assert float(opt_fused.state_dict()["state"][0]["step"]) == 20


def test_decoupled_weight_decay_stays_torchs_own():
    reference, fused = models()
    settings = {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}
    opt_ref = torch.optim.RAdam(reference.parameters(), **settings)
    opt_fused = RAdam(fused.parameters(), **settings)
    train(reference, opt_ref, 12)
    train(fused, opt_fused, 12)
    assert opt_fused._adam is None
    assert_same(reference, fused)
