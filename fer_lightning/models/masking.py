"""The masking block of the Residual Masking Network: a small U-Net that outputs a mask.

``MaskingBlock(C, depth)`` maps a feature map (N, C, H, W) to a mask of the same shape whose
values, at every pixel, are a softmax over the C channels. Widths along the encoder are C, 2C,
4C, ... (2^depth C at the bottom); each decoder step up-samples 2x with a transposed convolution,
concatenates the encoder map of that level (up-sampled map first) and halves the width again::

    depth 3:  x ─ conv1 (C→2C) ─────────────────────── cat ─ conv5 (4C→2C) ─ conv6 ─ softmax
                     └ pool ─ conv2 (2C→4C) ─── cat ─ conv4 ┘ up_pool5         (2C→C)
                                └ pool ─ conv3 (8C) ┘ up_pool4

Every convolution step is a :class:`BasicBlock` with a 1x1 projection shortcut. That shortcut is
registered twice, as ``conv<i>.downsample`` and as ``downsample<i>`` on the masking block itself,
because the published checkpoints hold both names (one tensor each); registering the same names
is what lets them load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fer_lightning.models.resnet import BasicBlock, projection_shortcut

MAX_DEPTH = 4


def up_block(in_planes: int, out_planes: int) -> nn.Sequential:
    """2x up-sampling: ConvTranspose2d(kernel 2, stride 2) -> BN -> ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_planes, out_planes, kernel_size=2, stride=2),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


class MaskingBlock(nn.Module):
    """U-Net mask of ``depth`` levels (1 to 4) over ``channels`` channels.

    (N, C, H, W) -> (N, C, H, W), non-negative, summing to 1 over the channels at each pixel.
    H and W must be divisible by 2^(depth - 1).
    """

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"Masking depth must be between 1 and {MAX_DEPTH}, got {depth}.")
        self.channels = channels
        self.depth = depth
        # Widths C, 2C, ..., 2^depth C; encoder step i goes widths[i] -> widths[i + 1].
        widths = [channels * 2**i for i in range(depth + 1)]
        if depth == 1:
            # No pooling at depth 1: up C -> 2C, back 2C -> C.
            self._add_step(1, widths[0], widths[1])
            self._add_step(2, widths[1], widths[0])
            return
        # Module registration order follows the published code, so that state-dict keys come out
        # in the same order as in its checkpoints: all encoder shortcuts, the encoder blocks, the
        # decoder shortcuts, then the decoder (up-sampling, block) pairs and the output block.
        encoder = [(i + 1, widths[i], widths[i + 1]) for i in range(depth)]
        # Decoder steps merge back to widths[depth - 1], ..., widths[1], then the output block
        # maps widths[1] -> C.
        decoder = [
            (depth + 1 + k, widths[depth - k], widths[depth - k - 1]) for k in range(depth - 1)
        ]
        output = (2 * depth, widths[1], widths[0])
        for index, in_planes, out_planes in encoder:
            self.add_module(f"downsample{index}", projection_shortcut(in_planes, out_planes))
        for index, in_planes, out_planes in encoder:
            self.add_module(
                f"conv{index}",
                BasicBlock(in_planes, out_planes, downsample=getattr(self, f"downsample{index}")),
            )
        for index, in_planes, out_planes in [*decoder, output]:
            self.add_module(f"downsample{index}", projection_shortcut(in_planes, out_planes))
        for index, in_planes, out_planes in decoder:
            self.add_module(f"up_pool{index}", up_block(in_planes, out_planes))
            self.add_module(
                f"conv{index}",
                BasicBlock(in_planes, out_planes, downsample=getattr(self, f"downsample{index}")),
            )
        index, in_planes, out_planes = output
        self.add_module(
            f"conv{index}",
            BasicBlock(in_planes, out_planes, downsample=getattr(self, f"downsample{index}")),
        )
        self.pool = nn.MaxPool2d(2)

    def _add_step(self, index: int, in_planes: int, out_planes: int) -> None:
        shortcut = projection_shortcut(in_planes, out_planes)
        self.add_module(f"downsample{index}", shortcut)
        self.add_module(f"conv{index}", BasicBlock(in_planes, out_planes, downsample=shortcut))

    def forward(self, x: Tensor) -> Tensor:
        if self.depth == 1:
            return torch.softmax(self.conv2(self.conv1(x)), dim=1)
        # Encoder: conv1 at full size, then pool before each deeper level.
        skips = [self.conv1(x)]
        for index in range(2, self.depth + 1):
            skips.append(getattr(self, f"conv{index}")(self.pool(skips[-1])))
        # Decoder: up-sample, concatenate the skip of the level above (up-sampled map first).
        y = skips.pop()
        for index in range(self.depth + 1, 2 * self.depth):
            up = getattr(self, f"up_pool{index}")(y)
            y = getattr(self, f"conv{index}")(torch.cat([up, skips.pop()], dim=1))
        out = getattr(self, f"conv{2 * self.depth}")(y)
        return torch.softmax(out, dim=1)
