"""Load a trained network from any checkpoint a user is likely to have, safely.

Three formats are read, always with ``torch.load(..., weights_only=True)`` so that a file whose
unpickling would run code is refused before any of it runs:

- the published Residual Masking Network format: a dict whose ``"net"`` is the state dict;
- this project's Lightning checkpoints: ``"state_dict"`` (keys prefixed ``net.``) with
  ``"hyper_parameters"`` naming the architecture;
- a bare state dict (name -> tensor), as ``torch.save(model.state_dict(), path)`` writes.

Where the architecture is not given, the keys identify it.
"""

from __future__ import annotations

import functools
import logging
import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from fer_lightning.models import create_model, list_models
from fer_lightning.models.provenance import (
    PUBLISHED,
    PUBLISHED_TRAINING_DATA,
    STATE_DICT,
    TRAINED_HERE,
    ModelProvenance,
    training_data_record,
)

log = logging.getLogger(__name__)

# Prefixes that wrappers add to state-dict keys: this project's LightningModule (``net.``),
# torch.compile (``_orig_mod.``) and DataParallel / DistributedDataParallel (``module.``).
WRAPPER_PREFIXES = ("net.", "_orig_mod.", "module.")

# Key-identical architectures, in order of preference when only the keys are known.
PREFERRED_AMONG_TWINS = ("resmasking_dropout1",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the requested architecture."""


@functools.cache
def architecture_signature(arch: str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of ``arch`` (7 classes), built on the meta device (no memory)."""
    with torch.device("meta"):
        model = create_model(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _head_free(signature: dict[str, tuple[int, ...]]) -> set[str]:
    return {k for k in signature if not k.startswith("fc.")}


def _fits(state_dict: dict[str, Tensor], arch: str) -> bool:
    """Whether the state dict has ``arch``'s keys and shapes (the head's size aside)."""
    signature = architecture_signature(arch)
    if set(signature) != set(state_dict):
        return False
    # Everything but the head's output size must agree in shape.
    return all(tuple(state_dict[k].shape) == signature[k] for k in _head_free(signature))


def matching_architectures(state_dict: dict[str, Tensor]) -> list[str]:
    """Registered architectures whose keys equal the state dict's (any number of classes)."""
    matches = [arch for arch in list_models() if _fits(state_dict, arch)]
    matches.sort(key=lambda a: (a not in PREFERRED_AMONG_TWINS, a))
    return matches


def infer_num_classes(state_dict: dict[str, Tensor]) -> int:
    """The head's output size: the first dimension of the last ``fc`` weight."""
    fc_weights = [k for k in state_dict if k.startswith("fc") and k.endswith("weight")]
    if not fc_weights:
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


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> object:
    """``torch.load`` with ``weights_only=True`` and errors that name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler names the first global it refused ("... GLOBAL posix.system
        # ..."); anything else it failed on means the bytes are not a pickle at all.
        refused = [line for line in str(error).splitlines() if "GLOBAL" in line]
        if not refused:
            raise CheckpointError(
                f"Could not read {path} as a PyTorch checkpoint (the data is not a valid pickle). "
                "Is the file complete and saved with torch.save?"
            ) from None
        raise CheckpointError(
            f"Refused to load {path}: it holds Python objects that only an unsafe unpickler could "
            f"rebuild, and unpickling them could run code ({refused[0].strip()}). Only tensors "
            "and plain values are accepted. If you trust the file, re-save its state dict: "
            "torch.save(torch.load(path, weights_only=False)['net'], 'clean.pt')."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"Could not read {path} as a PyTorch checkpoint ({error}). Is the file complete "
            "and saved with torch.save?"
        ) from None


def extract_state_dict(
    content: object, path: str | Path
) -> tuple[dict[str, Tensor], dict[str, object]]:
    """(state dict without wrapper prefixes, metadata such as hyperparameters) of a checkpoint."""
    meta: dict[str, object] = {}
    if isinstance(content, dict) and isinstance(content.get("net"), dict):
        state, fmt = content["net"], "published RMN"
        meta = {k: v for k, v in content.items() if k != "net" and not isinstance(v, Tensor)}
    elif isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        # The network's tensors, without the module's own (metric states and the like).
        state = {k: v for k, v in content["state_dict"].items() if k.startswith("net.")}
        state, fmt = state or content["state_dict"], "Lightning"
        hyper = content.get("hyper_parameters")
        meta = dict(hyper) if isinstance(hyper, dict) else {}
    elif (
        isinstance(content, dict)
        and content
        and all(isinstance(v, Tensor) for v in content.values())
    ):
        state, fmt = content, "bare state dict"
    else:
        raise CheckpointError(
            f"{path} is not a model checkpoint: expected a published RMN checkpoint (a dict with "
            "'net'), a fer-lightning Lightning checkpoint (with 'state_dict') or a state dict."
        )
    meta["format"] = fmt
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"The {fmt} state dict in {path} holds values that are not tensors.")
    return strip_wrapper_prefixes(dict(state)), meta


def _mismatch_message(
    path: str | Path, arch: str, state_dict: dict[str, Tensor], fits: list[str]
) -> str:
    expected = architecture_signature(arch)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
        for k in _head_free(expected)
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    parts = [f"Checkpoint {path} does not fit architecture {arch!r}."]
    if missing:
        parts.append(f"Missing keys ({len(missing)}): {', '.join(missing[:5])}.")
    if unexpected:
        parts.append(f"Unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}.")
    if wrong_shape:
        parts.append(f"Wrong shapes: {'; '.join(wrong_shape[:3])}.")
    if fits:
        parts.append(f"Its keys fit {fits[0]!r}: pass arch={fits[0]!r}.")
    else:
        parts.append("Its keys fit no registered architecture.")
    return " ".join(parts)


def load_model(
    path: str | Path, arch: str | None = None, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """The network stored in ``path``, in eval mode, with ``model.arch`` set.

    ``arch`` may be omitted: Lightning checkpoints name it in their hyperparameters, and the
    other formats are identified by their keys. ``resmasking_dropout1`` and its naive ablation
    have identical keys; without ``arch`` such a checkpoint loads as ``resmasking_dropout1``.
    When the checkpoint records its input size (Lightning checkpoints), ``model.input_size``
    holds it; when it records its class names (``label_names``, one per output),
    ``model.label_names`` holds them as a tuple. ``path`` may name a published checkpoint,
    ``pretrained:resmasking_dropout1``: it is downloaded on first use
    (:mod:`fer_lightning.models.hub`).
    """
    published = str(path).startswith("pretrained:")
    if published:
        # Imported here: hub imports this module (CheckpointError).
        from fer_lightning.models.hub import checkpoint_entry, resolve_checkpoint

        arch = arch or checkpoint_entry(path).arch
        path = resolve_checkpoint(path)
    content = read_checkpoint(path, map_location)
    state_dict, meta = extract_state_dict(content, path)
    if arch is None:
        arch = meta.get("arch") if isinstance(meta.get("arch"), str) else None
    # Building every architecture's key signature takes seconds: when the checkpoint names its
    # architecture, check that one first and scan the rest only to explain a mismatch.
    known = arch is not None and arch in list_models()
    fits = [arch] if known and _fits(state_dict, arch) else matching_architectures(state_dict)
    if arch is None:
        if not fits:
            raise CheckpointError(
                f"Cannot tell the architecture of {path}: its keys fit no registered model "
                f"({', '.join(list_models())}). Pass arch=... if it is a variant with another head."
            )
        arch = fits[0]
        if len(fits) > 1:
            log.warning(
                "The keys of %s fit %s; loading it as %r. Pass arch=... to choose another.",
                path,
                ", ".join(fits),
                arch,
            )
    elif arch not in list_models():
        raise CheckpointError(f"Unknown arch {arch!r}. Available: {', '.join(list_models())}.")
    if arch not in fits:
        raise CheckpointError(_mismatch_message(path, arch, state_dict, fits))
    model_classes = infer_num_classes(state_dict)
    model = create_model(arch, num_classes=model_classes)
    model.load_state_dict(state_dict, strict=True)
    model.arch = arch
    input_size = meta.get("input_size")
    if isinstance(input_size, int):
        model.input_size = input_size
    label_names = meta.get("label_names")
    if (
        isinstance(label_names, list | tuple)
        and len(label_names) == model_classes
        and all(isinstance(name, str) for name in label_names)
    ):
        model.label_names = tuple(label_names)
    model.provenance = checkpoint_provenance(meta, path, arch, published)
    log.info("Loaded %s.", model.provenance.summary())
    return model.eval()


def checkpoint_provenance(
    meta: dict[str, object], path: str | Path, arch: str, published: bool = False
) -> ModelProvenance:
    """What the checkpoint read as ``meta`` (:func:`extract_state_dict`) is.

    The authors' published file is a dict with ``"net"`` and no ``"arch"``; this project's
    ``model.pt`` has the same layout plus ``"arch"`` (and ``"training_data"``), and its Lightning
    checkpoints record ``training_data`` in their hyperparameters.
    """
    fmt = meta.get("format")
    training_data = training_data_record(meta.get("training_data"))
    if published or (fmt == "published RMN" and "arch" not in meta and training_data is None):
        origin, training_data = PUBLISHED, dict(PUBLISHED_TRAINING_DATA)
    elif fmt == "bare state dict":
        origin = STATE_DICT
    else:
        origin = TRAINED_HERE
    return ModelProvenance(arch=arch, origin=origin, training_data=training_data, path=str(path))
