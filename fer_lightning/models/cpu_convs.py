"""Faster CPU convolutions for training: Winograd 3x3 and one matrix product for tiny maps.

:class:`CPUConv2d` takes two other paths than oneDNN (PyTorch's CPU convolution) for the shapes
where ``benchmarks/bench_convs.py`` measured them faster, forward and backward (the figures, and
why other shapes keep oneDNN, are in benchmarks/README.md):

* **Winograd** (:mod:`fer_lightning.models.winograd`): 3x3, stride 1, padding 1, fp32 (no
  autocast), at least 128 input and output channels, maps of 4x4 or more whose sides are even:
  F(4x4, 3x3) where both sides are multiples of 4 and at least 8, else F(2x2, 3x3) (4x or
  2.25x fewer multiplications). Not taken on odd sides (7x7 maps: padded tiles) nor below 128
  channels, where the transforms cost more than they save.
* **Tiny maps**: other outputs of at most :data:`MAX_OUTPUT_POSITIONS` positions (the 2x2 and
  1x1 maps of 32-64 px inputs): ``unfold`` and one matrix product over the batch; a 1x1 map
  under a centred window is a product with the centre tap alone (eight of nine taps see only
  padding).

Everything else, other devices, ``torch.compile`` and ONNX export keep PyTorch's convolution.
The numbers are the convolution's, summed in another order (fp32 differences of about 1e-5
relative).

>>> net = create_model("resmasking_dropout1")
>>> use_cpu_convs(net)  # the same modules and state-dict keys, another forward
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lightning.models.winograd import winograd_conv3x3

# Output positions per image up to which unfold + one matrix product beats oneDNN (1x1 and 2x2
# maps; 4x4 maps go to Winograd, which beats both there: benchmarks/README.md).
MAX_OUTPUT_POSITIONS = 16
# Fewer channels than this and Winograd's transforms cost what its products save (64 channels on
# 56x56 maps measured 0.8-1.1x oneDNN in four runs; 128 channels 1.1x-1.9x).
WINOGRAD_MIN_CHANNELS = 128


def _output_side(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class CPUConv2d(nn.Conv2d):
    """``nn.Conv2d`` that takes the Winograd or tiny-map path on the CPU where they are faster.

    Input (N, C, H, W) -> output (N, O, H', W') as ``nn.Conv2d``, to fp32 rounding.
    """

    def _native_only(self, x: Tensor) -> bool:
        return (
            x.device.type != "cpu"
            or x.dim() != 4
            or self.groups != 1
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
            or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export()
        )

    def _winograd_tile(self, x: Tensor) -> int | None:
        """F(m x m, 3x3)'s m for this input, or None where Winograd is not the faster path."""
        shape = (self.kernel_size, self.stride, self.padding, self.dilation)
        if shape != ((3, 3), (1, 1), (1, 1), (1, 1)):
            return None
        if min(self.in_channels, self.out_channels) < WINOGRAD_MIN_CHANNELS:
            return None
        if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return None  # bf16 products would lose the transforms' precision
        h, w = x.shape[-2:]
        if h % 4 == 0 and w % 4 == 0 and min(h, w) >= 8:
            return 4
        if h % 2 == 0 and w % 2 == 0 and min(h, w) >= 4:
            return 2
        return None

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self._native_only(x):
            return super()._conv_forward(x, weight, bias)
        tile = self._winograd_tile(x)
        if tile is not None:
            out = winograd_conv3x3(x, weight, tile)
        else:
            out = self._tiny_map_forward(x, weight)
            if out is None:
                return super()._conv_forward(self._layout_for_onednn(x, weight), weight, bias)
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    @staticmethod
    def _layout_for_onednn(x: Tensor, weight: Tensor) -> Tensor:
        """``x`` in NCHW if it is channels-last (Winograd's output, through batch norm), the weight
        is not, and the input is the smaller: else PyTorch copies the weight to channels-last in
        the forward and again in the backward (7x7 maps, 1024 channels: four 38 MB copies per
        layer and step)."""
        if (
            weight.is_contiguous()
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.numel() < weight.numel()
        ):
            return x.contiguous()
        return x

    def _tiny_map_forward(self, x: Tensor, weight: Tensor) -> Tensor | None:
        """The convolution as one matrix product, or None if the output is not tiny."""
        n, _, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        out_h, out_w = _output_side(h, kh, sh, ph, dh), _output_side(w, kw, sw, pw, dw)
        if not 0 < out_h * out_w <= MAX_OUTPUT_POSITIONS:
            return None
        if (h, w) == (1, 1) and (dh, dw) == (1, 1) and (kh, kw) == (2 * ph + 1, 2 * pw + 1):
            # A 1x1 map under a centred window: every other tap multiplies padding.
            return (x.flatten(1) @ weight[:, :, ph, pw].t()).view(n, -1, 1, 1)
        columns = F.unfold(x, (kh, kw), self.dilation, self.padding, self.stride)
        # (O, C*kh*kw) @ (N, C*kh*kw, L): torch folds the batch into one product.
        return (weight.flatten(1) @ columns).view(n, -1, out_h, out_w)


def use_cpu_convs(module: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` in ``module`` a :class:`CPUConv2d`; returns how many.

    In place: parameters, buffers and state-dict keys stay as they are.
    """
    converted = 0
    for child in module.modules():
        if type(child) is nn.Conv2d:
            child.__class__ = CPUConv2d
            converted += 1
    return converted
