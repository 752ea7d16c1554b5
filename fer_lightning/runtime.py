"""Where and at which precision a network runs: one device rule and one autocast rule for
training, evaluation and inference.

Precision names are Lightning's (``32-true``, ``bf16-mixed``, ``16-mixed``) or the short ones
the recogniser takes (``fp32``, ``bf16``); ``auto`` chooses by what the hardware runs natively.
"""

from __future__ import annotations

import contextlib

import torch

PRECISION_CHOICES = ("auto", "fp32", "bf16")


class DeviceUnavailableError(ValueError):
    """A device was asked for that this machine does not have."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else CPU; ``gpu`` -> CUDA; anything else as
    ``torch.device`` reads it. Asking for CUDA where there is none is an error, not a fallback."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device("cuda" if name == "gpu" else name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={name!r} was asked for, but CUDA is not available here; use device=cpu."
        )
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX). Without them
    bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_convs_pay_off() -> bool:
    """Whether the project's CPU convolutions (:mod:`fer_lightning.models.cpu_convs`) train
    faster than oneDNN's here: on CPUs whose best vector unit is AVX2, where they were measured
    1.2-1.9x per layer; not with AVX-512 (oneDNN's own kernels won there: 64 px training ran
    1.33x faster without them) nor on CPUs not measured."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def resolve_cpu_convs(value: bool | str) -> bool:
    """``model.cpu_convs``: ``true``, ``false`` or ``auto`` (where they pay off)."""
    if isinstance(value, bool):
        return value
    if str(value).lower() == "auto":
        return cpu_convs_pay_off()
    raise ValueError(f"model.cpu_convs={value!r}: use true, false or auto.")


def has_native_bf16(device: torch.device) -> bool:
    """bf16 runs natively: CUDA compute capability 8.0 and up, or a CPU with AMX/AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """The recogniser's precision: ``auto`` -> ``bf16`` where native, else ``fp32``."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}."
        )
    if precision != "auto":
        return precision
    return "bf16" if has_native_bf16(device) else "fp32"


def lightning_precision(precision: str | int | None, device: torch.device) -> str:
    """Lightning's precision setting, with ``auto`` resolved: ``bf16-mixed`` where bf16 is
    native, ``16-mixed`` on older GPUs, ``32-true`` elsewhere."""
    value = str(precision if precision is not None else "auto")
    if value != "auto":
        return value
    if has_native_bf16(device):
        return "bf16-mixed"
    return "16-mixed" if device.type == "cuda" else "32-true"


def autocast(
    precision: str | int | None, device: torch.device
) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (either naming) on ``device``; none for 32-bit."""
    value = str(precision or "32")
    if value.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if value.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()
