"""Architecture facts that the rest of the project reads instead of repeating them, in the
manner of timm's ``_cfg``: the input size each network was published at, and the input rule
every network of the zoo shares.
"""

from __future__ import annotations

from dataclasses import dataclass

# Total stride of the trunk (conv1 2x, maxpool 2x, layer2-4 2x each). The masks of the Residual
# Masking Network pool inside each stage, so every model of the zoo asks for sides divisible by it.
INPUT_MULTIPLE = 32


@dataclass(frozen=True)
class ModelPreset:
    """What a network expects: ``input_size`` is the square side it was published at."""

    input_size: int = 224


# Every architecture of the zoo was published at 224x224; one entry per exception.
DEFAULT_PRESET = ModelPreset()
_PRESETS: dict[str, ModelPreset] = {}


def get_preset(arch: str | None) -> ModelPreset:
    """The preset of ``arch`` (the default for unknown or unnamed architectures)."""
    return _PRESETS.get(arch or "", DEFAULT_PRESET)


def default_input_size(arch: str | None = None) -> int:
    """The input side ``arch`` was published at: what checkpoints that do not record it use."""
    return get_preset(arch).input_size


def check_input_size(size: int, name: str = "input_size") -> int:
    """``size`` if the zoo can take it (a positive multiple of 32); a ``ValueError`` that says
    what to use otherwise."""
    valid = isinstance(size, int) and not isinstance(size, bool)
    if not valid or size < INPUT_MULTIPLE or size % INPUT_MULTIPLE:
        raise ValueError(
            f"{name} must be a multiple of {INPUT_MULTIPLE} (at least {INPUT_MULTIPLE}), not "
            f"{size!r}: use {default_input_size()} (the paper's size) or another multiple, "
            "such as 64."
        )
    return size
