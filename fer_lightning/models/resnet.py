"""The ResNet trunk (He et al., 2016) with torchvision's module names.

Written here rather than imported from torchvision (which does not install beside the CPU torch
this project uses); the key names match torchvision's so that its ImageNet weights load into
the trunk, and the Residual Masking Network reuses :class:`BasicBlock` inside its masks.
"""

from __future__ import annotations

from torch import Tensor, nn

from fer_lightning.labels import NUM_CLASSES
from fer_lightning.models.presets import check_input_size
from fer_lightning.models.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def projection_shortcut(in_planes: int, out_planes: int, stride: int = 1) -> nn.Sequential:
    """The ``downsample`` shortcut used where a block changes width or resolution."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU.

    (N, inplanes, H, W) -> (N, planes, H / stride, W / stride).
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x4), plus the shortcut, then ReLU.

    (N, inplanes, H, W) -> (N, planes * 4, H / stride, W / stride). The stride sits on the 3x3
    convolution, as in torchvision's ResNet-50 (the "V1.5" layout).
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def check_input(x: Tensor) -> None:
    """Refuse inputs the zoo cannot take, with a message a user can act on."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"Expected a batch of shape (N, 3, H, W), got {tuple(x.shape)}. Grayscale faces are "
            "stacked into 3 identical channels (see fer_lightning.faces.transforms.to_model_input)."
        )
    for side in (int(x.shape[-2]), int(x.shape[-1])):
        check_input_size(side, name=f"The input side ({tuple(x.shape)})")


def init_weights(root: nn.Module) -> None:
    """He-normal convolutions and identity BatchNorms, as torchvision initialises ResNets."""
    for module in root.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ResNet(nn.Module):
    """ResNet trunk + global average pool + ``fc`` head.

    Input (N, 3, H, W) float in [0, 1] with H and W multiples of 32; output (N, num_classes)
    logits. The stage outputs have strides 4, 8, 16 and 32 (56, 28, 14 and 7 pixels at 224).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = NUM_CLASSES,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.fc = head if head is not None else nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = projection_shortcut(self.inplanes, planes * block.expansion, stride)
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, 64, H / 4, W / 4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stages(self) -> list[nn.Module]:
        """The four residual stages, in order."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_stages(self, x: Tensor) -> Tensor:
        """(N, 64, H / 4, W / 4) -> (N, num_features, H / 32, W / 32)."""
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> pooled features (N, num_features)."""
        check_input(x)
        x = self.forward_stages(self.stem(x))
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> logits (N, num_classes)."""
        return self.fc(self.forward_features(x))


def _resnet(block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int) -> ResNet:
    return ResNet(block, layers, num_classes=num_classes)


@register_model()
def resnet18(num_classes: int = NUM_CLASSES) -> ResNet:
    """Plain ResNet-18 baseline with a ``Linear(512, num_classes)`` head."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes)


@register_model()
def resnet34(num_classes: int = NUM_CLASSES) -> ResNet:
    """Plain ResNet-34 baseline with a ``Linear(512, num_classes)`` head."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes)


@register_model()
def resnet50(num_classes: int = NUM_CLASSES) -> ResNet:
    """Plain ResNet-50 baseline with a ``Linear(2048, num_classes)`` head."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes)
