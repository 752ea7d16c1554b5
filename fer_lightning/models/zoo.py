"""The model zoo as a table: parameters and forward FLOPs of every registered architecture.

Counted on the meta device, so even the 1.9-billion-parameter ResNet-50 variant is listed in a
second without allocating its weights. FLOPs: ``torch.utils.flop_counter``, 2 per multiply-add.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from fer_lightning.models import ResMaskingNet, create_model
from fer_lightning.models.presets import default_input_size


def describe(name: str, input_size: int | None = None) -> dict[str, object]:
    """Parameters, forward GFLOPs for one (1, 3, size, size) image, and whether masks apply."""
    input_size = input_size or default_input_size(name)
    with torch.device("meta"):
        model = create_model(name).eval()
        x = torch.empty(1, 3, input_size, input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return {
        "name": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops": counter.get_total_flops() / 1e9,
        "masks": isinstance(model, ResMaskingNet) and model.apply_masks,
        "masks_built": isinstance(model, ResMaskingNet),
    }


def format_table(rows: list[dict[str, object]], input_size: int) -> str:
    header = f"{'model':<28}{'parameters':>16}{f'GFLOPs@{input_size}':>14}  masks"
    lines = [header, "-" * len(header)]
    for row in rows:
        masks = "applied" if row["masks"] else ("built, not applied" if row["masks_built"] else "-")
        lines.append(f"{row['name']:<28}{row['parameters']:>16,}{row['gflops']:>14.2f}  {masks}")
    return "\n".join(lines)
