"""Load a trained network from any checkpoint a user is likely to have, safely.

The file is read by :mod:`.checkpoint_reader` (weights only; any bytes give one
:class:`CheckpointError`), the architecture taken from the checkpoint, the caller or the keys,
and the network built strictly. ``pretrained:<name>`` names a published checkpoint, fetched
into the cache on first use (:mod:`.hub`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from fer_lightning.models.calibration import Calibration, calibration_record
from fer_lightning.models.checkpoint_reader import (
    build_network,
    extract_state_dict,
    infer_num_classes,
    matching_architectures,
    read_checkpoint,
    strip_wrapper_prefixes,
)
from fer_lightning.models.errors import CheckpointError
from fer_lightning.models.hub import PRETRAINED_PREFIX, checkpoint_entry, fetch, verified_cache
from fer_lightning.models.provenance import (
    PUBLISHED,
    PUBLISHED_TRAINING_DATA,
    STATE_DICT,
    TRAINED_HERE,
    ModelProvenance,
    training_data_record,
)
from fer_lightning.models.registry import list_models

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "checkpoint_provenance",
    "extract_state_dict",
    "infer_num_classes",
    "load_model",
    "matching_architectures",
    "read_checkpoint",
    "strip_wrapper_prefixes",
]


def load_model(
    path: str | Path, arch: str | None = None, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """The network stored in ``path``, in eval mode, with ``model.arch`` and
    ``model.provenance`` (:class:`~fer_lightning.models.provenance.ModelProvenance`) set.

    ``arch`` may be omitted: Lightning checkpoints name it in their hyperparameters, and the
    other formats are identified by their keys. ``resmasking_dropout1`` and its naive ablation
    have identical keys; without ``arch`` such a checkpoint loads as ``resmasking_dropout1``.
    ``model.calibration`` holds the fitted temperature
    (:class:`~fer_lightning.models.calibration.Calibration`) when the file records one, else
    ``None``. When the checkpoint records its input size (Lightning checkpoints),
    ``model.input_size`` holds it; when it records its class names (``label_names``, one per
    output), ``model.label_names`` holds them as a tuple. ``path`` may name a published checkpoint,
    ``pretrained:resmasking_dropout1``: it is downloaded on first use.
    """
    published = str(path).startswith(PRETRAINED_PREFIX)
    if published:
        entry = checkpoint_entry(path)
        arch = arch or entry.arch
        path = fetch(str(path).removeprefix(PRETRAINED_PREFIX))
        # A file in the cache that does not load says so, with the advice to delete it.
        with verified_cache(path):
            content = read_checkpoint(path, map_location)
            state_dict, meta = extract_state_dict(content, path)
            model = _network(state_dict, meta, path, arch)
    else:
        content = read_checkpoint(path, map_location)
        state_dict, meta = extract_state_dict(content, path)
        model = _network(state_dict, meta, path, arch)
    input_size = meta.get("input_size")
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        model.input_size = input_size
    label_names = meta.get("label_names")
    if (
        isinstance(label_names, list | tuple)
        and len(label_names) == infer_num_classes(state_dict)
        and all(isinstance(name, str) for name in label_names)
    ):
        model.label_names = tuple(label_names)
    model.provenance = checkpoint_provenance(meta, path, model.arch, published)
    model.calibration = checkpoint_calibration(meta, path)
    log.info(
        "Loaded %s; %s.",
        model.provenance.summary(),
        model.calibration.summary() if model.calibration else "no temperature",
    )
    return model.eval()


def checkpoint_calibration(meta: dict[str, object], path: str | Path) -> Calibration | None:
    """The temperature recorded with the weights (``calibration``: Lightning checkpoints and
    ``model.pt`` written after a fit); ``None`` for files without one (the published ones)."""
    try:
        return calibration_record(meta.get("calibration"))
    except ValueError as error:
        raise CheckpointError(
            f"Checkpoint {path}: its calibration record is invalid: {error}"
        ) from None


def _network(
    state_dict: dict, meta: dict[str, object], path: str | Path, arch: str | None
) -> nn.Module:
    """The architecture (given, recorded, or told by the keys) built from ``state_dict``."""
    if arch is None:
        arch = meta.get("arch") if isinstance(meta.get("arch"), str) else None
    if arch is None:
        fitting = matching_architectures(state_dict)
        if not fitting:
            raise CheckpointError(
                f"Cannot tell the architecture of {path}: its keys fit no registered model "
                f"({', '.join(list_models())}). Pass arch=... if it is a variant with another head."
            )
        arch = fitting[0]
        if len(fitting) > 1:
            log.warning(
                "The keys of %s fit %s; loading it as %r. Pass arch=... to choose another.",
                path,
                ", ".join(fitting),
                arch,
            )
    # Building every architecture's key signature takes seconds: a named architecture is
    # checked alone, and the rest are scanned only to explain a mismatch (build_network).
    return build_network(state_dict, arch, path)


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
