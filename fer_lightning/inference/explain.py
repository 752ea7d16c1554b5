"""Where the network looked: Grad-CAM for every architecture, and the Residual Masking
Network's four masks, as maps over the face crop and over the image.

* ``gradcam``: Grad-CAM (Selvaraju et al., ICCV 2017) of one class at the last convolutional
  stage, the (N, C, h, w) map the global average pool reads (for the masking networks after
  the fourth mask): ``relu(sum_c mean(d score / d A_c) * A_c)``.
* ``mask1`` ... ``mask4``: each masking block's mask. The mask is a softmax over the channels
  at each pixel, so its sum over channels is 1 everywhere and says nothing about *where*; the
  map is what the mask adds to the features there, ``sum_c m_c * x_c`` (``x * (1 + m)`` in the
  network), from forward hooks, so the module names and checkpoint keys stay as they are.
* ``masks``: the mean of the four mask maps over the crop.
* ``hirescam`` (with ``method="hirescam"``, in place of ``gradcam``): HiResCAM (Draelos &
  Carin, 2020), ``relu(sum_c d score / d A_c * A_c)`` place by place, faithful at earlier,
  finer stages (``layer=``) where Grad-CAM's averaged weights blur.

Each map is scaled per face by its maximum into [0, 1] (all zeros where the map is zero),
up-sampled bilinearly to the 48x48 crop (the grid of a stage covers the crop evenly) and laid
over the image with the crop's affine matrix (:func:`fer_lightning.faces.crop.crop_matrix`),
zero outside the crop.

Hand-written with hooks rather than ``grad-cam`` (which needs torchvision, not installed here)
or ``captum`` (a dependency for two hooks and one ``autograd.grad``; neither library reads the
masking blocks, which need hooks of their own anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lightning.faces.transforms import to_model_input
from fer_lightning.labels import FACE_SIZE
from fer_lightning.models.calibration import calibrated_probabilities

GRADCAM = "gradcam"
HIRESCAM = "hirescam"
CLASS_MAPS = (GRADCAM, HIRESCAM)
MASK_NAMES = ("mask1", "mask2", "mask3", "mask4")
COMBINED_MASKS = "masks"
STAGES = ("layer1", "layer2", "layer3", "layer4")


def has_masks(model: nn.Module) -> bool:
    """Whether ``model`` applies masking blocks (``mask1`` ... ``mask4``) in its forward."""
    return all(hasattr(model, name) for name in MASK_NAMES) and bool(
        getattr(model, "apply_masks", False)
    )


def map_names(model: nn.Module, method: str = GRADCAM) -> tuple[str, ...]:
    """The maps :func:`explain_crops` gives for ``model``: the class map ``method``
    (``gradcam`` or ``hirescam``), and for the masking networks ``mask1`` ... ``mask4`` and
    ``masks``."""
    return (method, *MASK_NAMES, COMBINED_MASKS) if has_masks(model) else (method,)


def _unit(maps: Tensor) -> Tensor:
    """(N, h, w) non-negative -> each map divided by its maximum (zeros stay zeros)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)
    return (maps / peak[:, None, None]).clamp(0.0, 1.0)


def _to_crop(maps: Tensor, size: int) -> Tensor:
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear")
    return _unit(up[:, 0].clamp_min(0.0))


def explain_crops(
    model: nn.Module,
    crops: np.ndarray,
    input_size: int,
    target: int | Sequence[int] | None = None,
    temperature: float | None = None,
    layer: str | None = None,
    method: str = GRADCAM,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities and maps of (N, 48, 48) uint8 face crops through ``model`` (eval mode).

    ``target``: the class whose Grad-CAM is drawn, one for all faces or one per face; ``None``:
    each face's most likely class. ``layer``: the Grad-CAM's feature map, ``None`` for the
    last stage's (what the pooling reads) or a stage's output (``layer1`` ... ``layer4``,
    strides 4 to 32: finer, but further from the decision). ``method``: ``gradcam`` weighs
    each channel by its mean gradient; ``hirescam`` (Draelos & Carin, 2020) multiplies
    gradients and activations place by place, so that it stays faithful at earlier, finer
    stages. Returns (N, K) float32
    probabilities (``softmax(logits / temperature)``) and ``{name: (N, 48, 48) float32 in
    [0, 1]}`` for :func:`map_names`.
    """
    if method not in CLASS_MAPS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(CLASS_MAPS)}.")
    device = next(model.parameters()).device
    faces = torch.from_numpy(np.ascontiguousarray(crops)).to(device)
    captured: dict[str, Tensor] = {}

    # Grad mode is per thread: a plain prediction running the same model meanwhile in another
    # thread (under inference mode, as fer-serve's batcher does) is not captured.
    def store(name: str, value: Tensor) -> None:
        if torch.is_grad_enabled():
            captured[name] = value

    if layer is None:
        hooks = [
            model.avgpool.register_forward_hook(lambda _m, inputs, _out: store(GRADCAM, inputs[0]))
        ]
    else:
        if layer not in STAGES:
            raise ValueError(f"Unknown layer {layer!r}; Grad-CAM reads one of {', '.join(STAGES)}.")
        hooks = [
            getattr(model, layer).register_forward_hook(
                lambda _m, _inputs, out: store(GRADCAM, out)
            )
        ]
    if has_masks(model):
        for name in MASK_NAMES:

            def keep(_m: nn.Module, inputs: tuple[Tensor], out: Tensor, name: str = name) -> None:
                store(name, (out * inputs[0]).sum(1).detach())

            hooks.append(getattr(model, name).register_forward_hook(keep))
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(to_model_input(faces.clone(), input_size)).float()
            if target is None:
                classes = logits.argmax(1)
            else:
                classes = torch.as_tensor(target, device=device).long().expand(len(crops))
            score = logits.gather(1, classes[:, None]).sum()
            features = captured[GRADCAM]
            (grads,) = torch.autograd.grad(score, features)
    finally:
        for hook in hooks:
            hook.remove()
    grads = grads.float()
    weights = grads.mean((2, 3), keepdim=True) if method == GRADCAM else grads
    cam = F.relu((weights * features.detach().float()).sum(1))
    maps = {method: _to_crop(cam, FACE_SIZE)}
    if has_masks(model):
        for name in MASK_NAMES:
            maps[name] = _to_crop(_unit(captured[name].float()), FACE_SIZE)
        maps[COMBINED_MASKS] = _unit(torch.stack([maps[n] for n in MASK_NAMES]).mean(0))
    probs = calibrated_probabilities(logits.detach(), temperature)
    return probs.cpu().numpy().astype(np.float32), {
        name: m.cpu().numpy().astype(np.float32) for name, m in maps.items()
    }


def crop_map_to_image(
    crop_map: np.ndarray, matrix: np.ndarray, image_shape: tuple[int, int]
) -> np.ndarray:
    """A (48, 48) map of a crop laid over the image it was cut from: (H, W) float32 in
    [0, 1], zero outside the crop. ``matrix``: the crop's (2, 3) image-to-crop affine
    (:func:`fer_lightning.faces.crop.crop_matrix`); ``image_shape``: (H, W)."""
    height, width = image_shape[:2]
    laid = cv2.warpAffine(
        np.ascontiguousarray(crop_map, dtype=np.float32),
        np.asarray(matrix, dtype=np.float64),
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    return np.clip(laid, 0.0, 1.0)


@dataclass(frozen=True)
class FaceExplanation:
    """One face and where the network looked: ``box`` (x0, y0, x1, y1) in the image's pixels,
    the detector's ``score``, ``label`` and ``probs`` (as :class:`FacePrediction`), ``target``
    (the class the Grad-CAM is of), ``crop_maps`` (name -> (48, 48) float32 in [0, 1] over the
    face crop), and ``matrix`` / ``image_shape`` to lay them over the image (:meth:`image_map`,
    :attr:`maps`)."""

    box: tuple[int, int, int, int]
    score: float
    label: str
    probs: dict[str, float]
    target: str
    crop_maps: dict[str, np.ndarray] = field(repr=False)
    matrix: np.ndarray = field(repr=False)
    image_shape: tuple[int, int] = (0, 0)

    @property
    def confidence(self) -> float:
        """Probability of ``label``."""
        return self.probs[self.label]

    def image_map(self, name: str | None = None) -> np.ndarray:
        """The map ``name`` (default: the class map, ``gradcam`` or ``hirescam``) over the
        whole image: (H, W) float32 in [0, 1], zero off the crop."""
        if name is None:
            name = next(iter(self.crop_maps))
        if name not in self.crop_maps:
            raise KeyError(f"No map {name!r}; this face has {', '.join(self.crop_maps)}.")
        return crop_map_to_image(self.crop_maps[name], self.matrix, self.image_shape)

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """Every map over the whole image (name -> (H, W) float32 in [0, 1]); computed on
        each access (one image-sized array per map)."""
        return {name: self.image_map(name) for name in self.crop_maps}

    def to_dict(self, decimals: int = 3) -> dict[str, object]:
        """JSON-ready: box, score, label, probs, target and the crop maps as 48 rows of 48
        numbers rounded to ``decimals``."""
        return {
            "box": [int(v) for v in self.box],
            "score": round(float(self.score), 4),
            "label": self.label,
            "probs": {k: round(float(v), 6) for k, v in self.probs.items()},
            "target": self.target,
            "maps": {k: np.round(v, decimals).tolist() for k, v in self.crop_maps.items()},
        }
