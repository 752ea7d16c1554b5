"""The model zoo: ResNet baselines and the Residual Masking Network variants.

>>> from fer_lightning.models import create_model, list_models
>>> net = create_model("resmasking_dropout1", pretrained_backbone="imagenet")
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

# Importing the modules registers their builders.
from fer_lightning.labels import NUM_CLASSES
from fer_lightning.models import resmasking, resnet  # noqa: F401
from fer_lightning.models.backbone import (
    BackboneLoadReport,
    PretrainedWeightsError,
    load_backbone,
)
from fer_lightning.models.masking import MaskingBlock
from fer_lightning.models.presets import (
    INPUT_MULTIPLE,
    ModelPreset,
    check_input_size,
    default_input_size,
    get_preset,
)
from fer_lightning.models.registry import get_model_builder, list_models, register_model
from fer_lightning.models.resmasking import ResMaskingNet
from fer_lightning.models.resnet import BasicBlock, Bottleneck, ResNet


def create_model(
    name: str,
    *,
    num_classes: int = NUM_CLASSES,
    pretrained_backbone: str | Path | None = None,
) -> nn.Module:
    """Build the registered architecture ``name`` with a ``num_classes``-way head.

    ``pretrained_backbone`` is ``None`` (all weights fresh), ``"imagenet"`` or a path to a
    torchvision-format ResNet state dict; only the trunk is loaded, the masks and the head stay
    freshly initialised. The report of what was loaded is kept as ``model.backbone_report``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    model = get_model_builder(name)(num_classes=num_classes)
    if pretrained_backbone is not None:
        model.backbone_report = load_backbone(model, pretrained_backbone)
    return model


def num_classes_of(model: nn.Module) -> int:
    """The size of ``model``'s classifier head (the last ``Linear`` of its ``fc``)."""
    head = getattr(model, "fc", None)
    last = head[-1] if isinstance(head, nn.Sequential) else head
    if not isinstance(last, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no fc head whose size could be read.")
    return last.out_features


__all__ = [
    "INPUT_MULTIPLE",
    "BackboneLoadReport",
    "BasicBlock",
    "Bottleneck",
    "MaskingBlock",
    "ModelPreset",
    "PretrainedWeightsError",
    "ResMaskingNet",
    "ResNet",
    "check_input_size",
    "create_model",
    "default_input_size",
    "get_preset",
    "list_models",
    "load_backbone",
    "num_classes_of",
    "register_model",
]
