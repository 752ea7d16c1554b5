"""The one reader of checkpoint files: any bytes in, a network's state dict or one
:class:`CheckpointError` out.

Files are read with ``torch.load(..., weights_only=True)``, so that a file whose unpickling
would run code is refused before any of it runs. Three formats are understood:

- the published Residual Masking Network format: a dict whose ``"net"`` is the state dict;
- this project's Lightning checkpoints: ``"state_dict"`` (keys prefixed ``net.``) with
  ``"hyper_parameters"`` naming the architecture;
- a bare state dict (name -> tensor), as ``torch.save(model.state_dict(), path)`` writes.

On bytes that are none of these, torch's weights-only unpickler raises almost anything
(``KeyError``, ``IndexError``, ``struct.error``, ``RuntimeError``, zip errors, ``EOFError``,
``UnicodeDecodeError``...): every one becomes a :class:`CheckpointError` that names the file
and says what was expected.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from fer_lightning.models.errors import CheckpointError
from fer_lightning.models.presets import ARCHITECTURES, preferred_twins
from fer_lightning.models.registry import get_model_builder, list_models

# Prefixes that wrappers add to state-dict keys: this project's LightningModule (``net.``),
# torch.compile (``_orig_mod.``) and DataParallel / DistributedDataParallel (``module.``).
WRAPPER_PREFIXES = ("net.", "_orig_mod.", "module.")

EXPECTED = (
    "expected a checkpoint written by torch.save: a published RMN checkpoint (a dict with "
    "'net'), a fer-lightning checkpoint (.ckpt or model.pt) or a state dict"
)


def _missing_message(path: Path) -> str:
    """That ``path`` does not exist; for a published file's name, how to fetch it."""
    for name, preset in ARCHITECTURES.items():
        published = preset.published
        if published is not None and path.name in (published.filename, name):
            return (
                f"Checkpoint {path} does not exist. {path.name!r} names the published "
                f"{name} weights: ckpt_path=pretrained:{name} downloads them (once, into the "
                "cache) and loads them."
            )
    return f"Checkpoint {path} does not exist."


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> object:
    """What ``torch.load(path, weights_only=True)`` reads, or a :class:`CheckpointError`
    that names the file and says what was expected, whatever the bytes."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {path} is a folder, not a file; {EXPECTED}.")
    if not path.exists():
        raise CheckpointError(_missing_message(path))
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"Checkpoint {path} is empty (0 bytes); {EXPECTED}.")
        return torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        # The weights-only unpickler names the first global it refused ("... GLOBAL posix.system
        # ..."); anything else it failed on means the bytes are not a checkpoint at all.
        refused = [line for line in str(error).splitlines() if "GLOBAL" in line]
        if not refused:
            raise CheckpointError(_unreadable(path, error)) from None
        raise CheckpointError(
            f"Refused to load {path}: it holds Python objects that only an unsafe unpickler could "
            f"rebuild, and unpickling them could run code ({refused[0].strip()}). Only tensors "
            "and plain values are accepted. If you trust the file, re-save its state dict: "
            "torch.save(torch.load(path, weights_only=False)['net'], 'clean.pt'). (A file cut "
            "short can name a part of a name like this: then it is damaged.)"
        ) from None
    except OSError as error:
        cause = error.strerror or error
        raise CheckpointError(f"Could not read checkpoint {path}: {cause}.") from None
    except Exception as error:  # any bytes: torch raises a zoo of exception types on junk
        raise CheckpointError(_unreadable(path, error)) from None


def _unreadable(path: Path, error: BaseException) -> str:
    # torch's own reason ("WeightsUnpickler error: Unsupported operand 60"), else the first
    # line of its message: the rest is advice about weights_only that does not apply to bytes
    # that are not a checkpoint.
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("WeightsUnpickler error")), None)
    # The first sentence: miniz and torch go on with advice for other situations.
    first = " ".join((reason or (lines[0] if lines else "")).split()).split(". ")[0][:160]
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return (
        f"Could not read {path} as a PyTorch checkpoint ({detail}): it is damaged, incomplete or "
        f"another kind of file; {EXPECTED}."
    )


@functools.cache
def architecture_signature(arch: str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of ``arch`` (7 classes), built on the meta device (no memory)."""
    with torch.device("meta"):
        model = get_model_builder(arch)()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def head_free(signature: dict[str, tuple[int, ...]]) -> set[str]:
    return {k for k in signature if not k.startswith("fc.")}


def fits(state_dict: dict[str, Tensor], arch: str) -> bool:
    """Whether the state dict has ``arch``'s keys and shapes (the head's output size aside)."""
    signature = architecture_signature(arch)
    if set(signature) != set(state_dict):
        return False
    for key, shape in signature.items():
        actual = tuple(state_dict[key].shape)
        if key in head_free(signature):
            if actual != shape:
                return False
        # The head: any number of outputs, the rest of its shape as built.
        elif len(actual) != len(shape) or actual[1:] != shape[1:]:
            return False
    return True


def matching_architectures(state_dict: dict[str, Tensor]) -> list[str]:
    """Registered architectures whose keys equal the state dict's (any number of classes)."""
    preferred = preferred_twins()
    matches = [arch for arch in list_models() if fits(state_dict, arch)]
    matches.sort(key=lambda a: (a not in preferred, a))
    return matches


def infer_num_classes(state_dict: dict[str, Tensor]) -> int:
    """The head's output size: the first dimension of the last ``fc`` weight."""
    fc_weights = [k for k in state_dict if k.startswith("fc") and k.endswith("weight")]
    if not fc_weights or state_dict[fc_weights[-1]].ndim < 1:
        raise CheckpointError("The state dict has no classifier head (no 'fc.*.weight' key).")
    return int(state_dict[fc_weights[-1]].shape[0])


def strip_wrapper_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``net.``/``_orig_mod.``/``module.`` prefixes shared by every key."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def extract_state_dict(
    content: object, path: str | Path
) -> tuple[dict[str, Tensor], dict[str, object]]:
    """(state dict without wrapper prefixes, metadata such as hyperparameters) of a checkpoint;
    ``metadata["format"]`` says which of the three formats it is."""
    meta: dict[str, object] = {}
    if isinstance(content, dict) and isinstance(content.get("net"), dict):
        state, fmt = content["net"], "published RMN"
        meta = {k: v for k, v in content.items() if k != "net" and not isinstance(v, Tensor)}
    elif isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        # The network's tensors, without the module's own (metric states and the like).
        full = content["state_dict"]
        state = {k: v for k, v in full.items() if isinstance(k, str) and k.startswith("net.")}
        state, fmt = state or full, "Lightning"
        hyper = content.get("hyper_parameters")
        meta = dict(hyper) if isinstance(hyper, dict) else {}
        # The temperature fitted after training (models.calibration), beside the weights.
        if "calibration" in content:
            meta["calibration"] = content["calibration"]
    elif (
        isinstance(content, dict)
        and content
        and all(isinstance(v, Tensor) for v in content.values())
    ):
        state, fmt = content, "bare state dict"
    else:
        raise CheckpointError(f"{path} is not a model checkpoint: {EXPECTED}.")
    meta["format"] = fmt
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(
            f"The {fmt} state dict in {path} holds keys that are not names or values that are "
            f"not tensors; {EXPECTED}."
        )
    return strip_wrapper_prefixes(dict(state)), meta


def mismatch_message(
    path: str | Path, arch: str, state_dict: dict[str, Tensor], fitting: list[str]
) -> str:
    """Why ``state_dict`` does not fit ``arch``: missing, unexpected and misshapen keys."""
    expected = architecture_signature(arch)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
        for k in head_free(expected)
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    parts = [f"Checkpoint {path} does not fit architecture {arch!r}."]
    if missing:
        parts.append(f"Missing keys ({len(missing)}): {', '.join(missing[:5])}.")
    if unexpected:
        parts.append(f"Unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}.")
    if wrong_shape:
        parts.append(f"Wrong shapes: {'; '.join(wrong_shape[:3])}.")
    if fitting:
        parts.append(f"Its keys fit {fitting[0]!r}: pass arch={fitting[0]!r}.")
    else:
        parts.append("Its keys fit no registered architecture.")
    return " ".join(parts)


def build_network(state_dict: dict[str, Tensor], arch: str, path: str | Path) -> nn.Module:
    """``arch`` with the state dict loaded strictly (the head sized from it); a
    :class:`CheckpointError` explaining the mismatch otherwise."""
    if arch not in list_models():
        raise CheckpointError(f"Unknown arch {arch!r}. Available: {', '.join(list_models())}.")
    if not fits(state_dict, arch):
        raise CheckpointError(
            mismatch_message(path, arch, state_dict, matching_architectures(state_dict))
        )
    num_classes = infer_num_classes(state_dict)
    if num_classes < 1:
        raise CheckpointError(f"Checkpoint {path} has a classifier head with no outputs.")
    model = get_model_builder(arch)(num_classes=num_classes)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # dtypes that cannot be copied, and the like
        first = " ".join(str(error).split())[:200]
        raise CheckpointError(f"Checkpoint {path} does not load into {arch!r}: {first}") from None
    model.arch = arch
    return model
