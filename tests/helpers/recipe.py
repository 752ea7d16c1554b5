"""The reference's deterministic "recipe" weights and input (shared/reference/README.md)."""

from __future__ import annotations

import math

import torch
from torch import nn


def recipe_tensor(shape: list[int], key: str, dtype: str, tensor_id: int) -> torch.Tensor:
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    numel = math.prod(shape)
    j = torch.arange(numel, dtype=torch.float64)
    s = torch.sin(0.37 * j + 1.3 * tensor_id)
    if key.endswith("running_var"):
        values = 1 + 0.5 * s**2
    elif key.endswith("running_mean"):
        values = 0.1 * s
    elif len(shape) == 1 and key.endswith("weight"):
        values = 1 + 0.1 * s
    elif len(shape) == 1:
        values = 0.05 * s
    else:
        values = s * math.sqrt(2 / (numel / shape[0]))
    return values.reshape(shape).to(torch.float32)


def recipe_state_dict(manifest_entries: list[dict]) -> dict[str, torch.Tensor]:
    made: dict[int, torch.Tensor] = {}
    state = {}
    for entry in manifest_entries:
        uid = entry["tensor"]
        if uid not in made:
            made[uid] = recipe_tensor(entry["shape"], entry["key"], entry["dtype"], uid)
        state[entry["key"]] = made[uid]
    return state


def recipe_input(size: int, batch: int = 2) -> torch.Tensor:
    j = torch.arange(batch * 3 * size * size, dtype=torch.float64)
    return (0.5 + 0.5 * torch.sin(0.013 * j)).reshape(batch, 3, size, size).to(torch.float32)


def load_recipe(model: nn.Module, manifest_entries: list[dict]) -> nn.Module:
    model.load_state_dict(recipe_state_dict(manifest_entries), strict=True)
    return model.eval()
