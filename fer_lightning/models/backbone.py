"""ImageNet (or any torchvision-format) ResNet weights for the trunk of a model.

The paper's recipe starts from an ImageNet-pretrained trunk; the masks and the head start from
scratch. Forgetting this step costs about 8 points of FER2013 accuracy, so ``create_model``
takes it as one argument: ``pretrained_backbone="imagenet"`` or a path to a state dict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fer_lightning.models.resnet import Bottleneck, ResNet

log = logging.getLogger(__name__)

# torchvision's ImageNet-1k V1 weights (the ones the paper's code used through pretrained=True).
IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}

TRUNK_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


class PretrainedWeightsError(RuntimeError):
    """The backbone weights could not be found, read or matched to the trunk."""


@dataclass
class BackboneLoadReport:
    """What ``load_backbone`` did: which trunk tensors it filled and which it left alone."""

    source: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # in the file, not part of the trunk

    def __str__(self) -> str:
        return (
            f"Loaded {len(self.loaded)} trunk tensors from {self.source}; "
            f"{len(self.ignored)} tensors of the file were not trunk tensors and were ignored "
            "(masks and head keep their fresh initialisation)."
        )


def trunk_layout(model: ResNet) -> str:
    """The torchvision ResNet whose trunk matches ``model`` (resnet18, resnet34 or resnet50)."""
    if isinstance(model.layer1[0], Bottleneck):
        return "resnet50"
    return "resnet18" if len(model.layer3) == 2 else "resnet34"


def imagenet_weights_path(layout: str) -> Path:
    """Where ``torch.hub`` keeps (and where a user may put) the ImageNet file for ``layout``."""
    filename = IMAGENET_URLS[layout].rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _fetch_imagenet(layout: str) -> Path:
    path = imagenet_weights_path(layout)
    if path.is_file():
        return path
    try:
        torch.hub.load_state_dict_from_url(IMAGENET_URLS[layout], progress=True, map_location="cpu")
    except Exception as error:  # no network, proxy, disk full...
        raise PretrainedWeightsError(
            f"Could not download the ImageNet {layout} weights {path.name} ({error}). Offline, "
            f"download {IMAGENET_URLS[layout]} on a machine with internet access and put it in "
            f"{path.parent}/ (or pass model.pretrained_backbone=/path/to/{path.name}). To train "
            "from scratch instead: model.pretrained_backbone=null."
        ) from None
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(
            f"Backbone weights file {path} does not exist. Pass a torchvision-format ResNet state "
            "dict, or pretrained_backbone=imagenet."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(
            f"Could not read backbone weights from {path}: {error}. Expected a torchvision-format "
            "ResNet state dict saved with torch.save."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict (name -> tensor).")
    return state


def load_backbone(model: ResNet, source: str | Path) -> BackboneLoadReport:
    """Copy torchvision-format ResNet trunk weights into ``model`` (in place).

    ``source`` is ``"imagenet"`` (downloaded once through ``torch.hub``, read from its cache
    afterwards) or a path. Every trunk tensor of the model must be in the file with the same
    shape; the file's ``fc`` (ImageNet's 1000 classes) and any other keys are ignored.
    """
    if str(source) == "imagenet":
        path = _fetch_imagenet(trunk_layout(model))
    else:
        path = Path(source).expanduser()
    state = _read_state_dict(path)
    own = {k: v for k, v in model.state_dict().items() if k.startswith(TRUNK_PREFIXES)}
    missing = [k for k in own if k not in state]
    if missing:
        raise PretrainedWeightsError(
            f"{path} lacks {len(missing)} of the {len(own)} trunk tensors of this "
            f"{trunk_layout(model)}-style trunk (first: {', '.join(missing[:5])}). Is it a "
            "torchvision ResNet state dict of the same depth?"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise PretrainedWeightsError(
            f"{path} does not fit the {trunk_layout(model)} trunk: {'; '.join(wrong[:3])}."
        )
    with torch.no_grad():
        # Copy through the module's own tensors so that shared storage and dtype are kept.
        for key, tensor in model.state_dict().items():
            if key in own:
                tensor.copy_(state[key])
    report = BackboneLoadReport(
        source=str(path),
        loaded=list(own),
        ignored=[k for k in state if k not in own],
    )
    log.info("%s", report)
    return report
