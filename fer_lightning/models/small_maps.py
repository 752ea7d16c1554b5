"""Convolutions on tiny feature maps as one matrix product (CPU training at small input sizes).

At 32-64 px input, the Residual Masking Network's last two stages run 3x3 convolutions with
512-1024 channels on 1x1 to 4x4 feature maps. oneDNN's kernels are slow there (4-22 GFLOP/s
forward and backward on an AVX2 CPU, against 60-90 for the same convolutions on 7x7 maps), and
on a 1x1 map eight of a 3x3 window's nine taps only ever see padding. Written as an ``unfold``
followed by one matrix product over the whole batch, the same convolution runs 1.2x (4x4 maps)
to 2.6x (2x2) faster; on a 1x1 map it is a product with the centre tap alone, 7x faster
(``benchmarks/bench_convs.py``; the figures are in benchmarks/README.md).

The numbers are the convolution's own: the same products, summed in another order (fp32
differences of about 1e-6 relative). Larger maps, other devices, ``torch.compile`` and ONNX
export keep PyTorch's convolution.

>>> net = create_model("resmasking_dropout1")
>>> use_small_map_convs(net)  # the same modules and state-dict keys, another forward
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Output positions per image up to which the matrix product beats oneDNN (4x4: measured
# 1.2x faster for 512 channels, 8x8: 1.5-2x slower; benchmarks/README.md).
MAX_OUTPUT_POSITIONS = 16


def _output_side(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes small CPU outputs as one matrix product.

    Input (N, C, H, W) -> output (N, O, H', W') exactly as ``nn.Conv2d``; the matrix-product
    path is taken on the CPU, for ``groups=1`` and zero padding, when H' x W' is at most
    :data:`MAX_OUTPUT_POSITIONS`.
    """

    def _takes_matmul_path(self, x: Tensor) -> bool:
        if x.device.type != "cpu" or x.dim() != 4 or self.groups != 1:
            return False
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            return False
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        out_h = _output_side(x.shape[-2], kh, sh, ph, dh)
        out_w = _output_side(x.shape[-1], kw, sw, pw, dw)
        return 0 < out_h * out_w <= MAX_OUTPUT_POSITIONS

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self._takes_matmul_path(x):
            return super()._conv_forward(x, weight, bias)
        n, _, h, w = x.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if (h, w) == (1, 1) and self.dilation == (1, 1) and (kh, kw) == (2 * ph + 1, 2 * pw + 1):
            # A 1x1 map under a centred window: every other tap multiplies padding.
            out = x.flatten(1) @ weight[:, :, ph, pw].t()
            out = out.view(n, -1, 1, 1)
        else:
            out_h = _output_side(h, kh, self.stride[0], ph, self.dilation[0])
            out_w = _output_side(w, kw, self.stride[1], pw, self.dilation[1])
            columns = F.unfold(x, (kh, kw), self.dilation, self.padding, self.stride)
            # (O, C*kh*kw) @ (N, C*kh*kw, L): torch folds the batch into one product.
            out = (weight.flatten(1) @ columns).view(n, -1, out_h, out_w)
        return out if bias is None else out + bias.view(1, -1, 1, 1)


def use_small_map_convs(module: nn.Module) -> int:
    """Give every plain ``nn.Conv2d`` in ``module`` the small-map path; returns how many.

    In place: parameters, buffers and state-dict keys stay as they are.
    """
    converted = 0
    for child in module.modules():
        if type(child) is nn.Conv2d:
            child.__class__ = SmallMapConv2d
            converted += 1
    return converted
