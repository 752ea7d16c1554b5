"""The Residual Masking Network variants (Pham, Vu & Tran, ICPR 2020).

After each ResNet stage i the features are re-weighted by that stage's mask::

    x = layer_i(x)
    x = x * (1 + mask_i(x))        # mask_i: MaskingBlock(width_i, depth 4, 3, 2, 1 for i = 1..4)

so a mask can only amplify (by up to 2x) the features it attends to, and an all-zero mask leaves
the plain ResNet. Deeper masks sit on the larger, earlier feature maps.
"""

from __future__ import annotations

from torch import Tensor, nn

from fer_lightning.labels import NUM_CLASSES
from fer_lightning.models.masking import MaskingBlock
from fer_lightning.models.registry import register_model
from fer_lightning.models.resnet import BasicBlock, Bottleneck, ResNet, init_weights

# Mask depth per stage: the U-Net gets shallower as the feature map shrinks.
MASK_DEPTHS = (4, 3, 2, 1)


class ResMaskingNet(ResNet):
    """ResNet trunk with a :class:`MaskingBlock` after each stage.

    ``apply_masks=False`` builds the masks but skips them in ``forward`` (the paper's naive
    ablation, whose checkpoints share the keys of the masked model).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = NUM_CLASSES,
        head: nn.Module | None = None,
        apply_masks: bool = True,
    ) -> None:
        super().__init__(block, layers, num_classes=num_classes, head=head)
        self.apply_masks = apply_masks
        for index, depth in enumerate(MASK_DEPTHS, start=1):
            width = 64 * 2 ** (index - 1) * block.expansion
            mask = MaskingBlock(width, depth)
            init_weights(mask)
            self.add_module(f"mask{index}", mask)

    def masks(self) -> list[MaskingBlock]:
        """The four masking blocks, in stage order."""
        return [self.mask1, self.mask2, self.mask3, self.mask4]

    def forward_stages(self, x: Tensor) -> Tensor:
        for stage, mask in zip(self.stages(), self.masks(), strict=True):
            x = stage(x)
            if self.apply_masks:
                x = x * (1 + mask(x))
        return x


def dropout_head(num_features: int, num_classes: int) -> nn.Sequential:
    """``Sequential(Dropout(0.4), Linear(num_features, num_classes))``: keys ``fc.1.*``."""
    return nn.Sequential(nn.Dropout(0.4), nn.Linear(num_features, num_classes))


RESNET34_LAYERS = [3, 4, 6, 3]


@register_model()
def resmasking(num_classes: int = NUM_CLASSES) -> ResMaskingNet:
    """ResNet-34 + masks, ``Linear(512, num_classes)`` head."""
    return ResMaskingNet(BasicBlock, RESNET34_LAYERS, num_classes=num_classes)


@register_model()
def resmasking_dropout1(num_classes: int = NUM_CLASSES) -> ResMaskingNet:
    """ResNet-34 + masks, ``Dropout(0.4) -> Linear(512, num_classes)`` head (the paper's model)."""
    return ResMaskingNet(BasicBlock, RESNET34_LAYERS, head=dropout_head(512, num_classes))


@register_model()
def resmasking_dropout2(num_classes: int = NUM_CLASSES) -> ResMaskingNet:
    """ResNet-34 + masks, ``Linear(512, 128) -> ReLU -> Dropout(0.5) -> Linear(128, classes)``."""
    head = nn.Sequential(
        nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(128, num_classes)
    )
    return ResMaskingNet(BasicBlock, RESNET34_LAYERS, head=head)


@register_model()
def resmasking50_dropout1(num_classes: int = NUM_CLASSES) -> ResMaskingNet:
    """ResNet-50 + masks (about 1.9 billion parameters), ``Dropout(0.4) -> Linear(2048, ...)``."""
    return ResMaskingNet(Bottleneck, RESNET34_LAYERS, head=dropout_head(2048, num_classes))


@register_model()
def resmasking_naive_dropout1(num_classes: int = NUM_CLASSES) -> ResMaskingNet:
    """Ablation: the masks of ``resmasking_dropout1`` are built but not applied."""
    return ResMaskingNet(
        BasicBlock, RESNET34_LAYERS, head=dropout_head(512, num_classes), apply_masks=False
    )
