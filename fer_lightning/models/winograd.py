"""3x3 convolutions by Winograd's minimal filtering (Lavin & Gray, CVPR 2016), for CPU training.

F(m x m, 3 x 3) computes an m x m block of a 3x3, stride-1, padding-1 convolution's output from an
(m + 2) x (m + 2) tile of its input with (m + 2)^2 multiplications per input-output channel
pair instead of 9 m^2: 2.25x fewer for m = 2, 4x fewer for m = 4. The tiles, the filters and the
products are linear transforms of one another (the matrices ``B``, ``G`` and ``A`` below), so a
whole layer is three small matrix products around one batched product over the (m + 2)^2 tile
positions::

    V = B^T d B   (input tiles)       U = G g G^T   (filters)
    M[k] = V[k] @ U[k]  for each of the (m + 2)^2 positions k
    y = A^T M A   (output blocks)

On CPUs without a faster convolution (oneDNN runs 3x3 convolutions at the fp32 matrix-product
peak, so fewer products is the only way to go faster), this makes the Residual Masking
Network's 3x3 convolutions on 4x4 to 56x56 maps with 128+ channels faster forward + backward
(``benchmarks/bench_convs.py``; figures in benchmarks/README.md). The numbers are the
convolution's up to fp32 rounding: relative differences of about 1e-5 for m = 4 and 3e-6 for
m = 2.

The output comes back channels-last (N, C, H, W strides of an NHWC tensor), the layout in which
the transforms gather their tiles; batch norm, ReLU and the next convolution take it as it is.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

TILE_SIZES = (2, 4)

# F(2x2, 3x3) and F(4x4, 3x3) from Lavin & Gray (2016): (B^T, G, A^T).
_TRANSFORMS = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


@cache
def _kron_transforms(tile: int) -> tuple[Tensor, Tensor, Tensor]:
    """The 2-D transforms as matrices on flattened tiles: (a^2, a^2), (a^2, 9), (m^2, a^2)."""
    bt, g, at = (torch.tensor(t, dtype=torch.float64) for t in _TRANSFORMS[tile])
    # Kept in float64 so that 1/6 and 1/24 are rounded once, to the input's dtype.
    return tuple(torch.kron(t, t) for t in (bt, g, at))


def _transforms_like(x: Tensor, tile: int) -> tuple[Tensor, ...]:
    """The transforms on ``x``'s device and in its dtype."""
    return tuple(t.to(x.device, x.dtype) for t in _kron_transforms(tile))


def _tiles(x: Tensor, tile: int) -> tuple[Tensor, int, int]:
    """Overlapping (tile + 2)^2 windows of zero-padded ``x`` -> ((tile + 2)^2, N*Th*Tw, C)."""
    n, c, h, w = x.shape
    rows, cols = -(-h // tile), -(-w // tile)
    side = tile + 2
    padded = x.new_zeros(n, rows * tile + 2, cols * tile + 2, c)
    padded[:, 1 : h + 1, 1 : w + 1] = x.permute(0, 2, 3, 1)
    windows = padded.unfold(1, side, tile).unfold(2, side, tile)  # N, Th, Tw, C, a, a
    return windows.permute(4, 5, 0, 1, 2, 3).reshape(side * side, -1, c), rows, cols


class _Winograd3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, tile: int) -> Tensor:
        input_t, filter_t, output_t = _transforms_like(x, tile)
        n, c, h, w = x.shape
        out_channels, side = weight.shape[0], tile + 2
        d, rows, cols = _tiles(x, tile)
        v = (input_t @ d.reshape(side * side, -1)).view(side * side, -1, c)
        # (a^2, 9) @ (9, O*C): the weight's own layout read transposed, no copy; u is (a^2, O, C).
        u = (filter_t @ weight.reshape(-1, 9).t()).view(side * side, out_channels, c)
        products = torch.bmm(v, u.transpose(1, 2))  # a^2, N*Th*Tw, O
        blocks = (output_t @ products.view(side * side, -1)).view(
            tile, tile, n, rows, cols, out_channels
        )
        y = blocks.permute(2, 3, 0, 4, 1, 5).reshape(n, rows * tile, cols * tile, out_channels)
        if (rows * tile, cols * tile) != (h, w):
            y = y[:, :h, :w].contiguous()
        ctx.save_for_backward(v, u)
        ctx.tile, ctx.input_shape = tile, (n, c, h, w)
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, Tensor, None]:
        v, u = ctx.saved_tensors
        tile, (n, c, h, w) = ctx.tile, ctx.input_shape
        input_t, filter_t, output_t = _transforms_like(v, tile)
        side, out_channels = tile + 2, grad_y.shape[1]
        rows, cols = -(-h // tile), -(-w // tile)
        grad_nhwc = grad_y.permute(0, 2, 3, 1)
        if (rows * tile, cols * tile) != (h, w):
            padded = grad_y.new_zeros(n, rows * tile, cols * tile, out_channels)
            padded[:, :h, :w] = grad_nhwc
            grad_nhwc = padded
        grad_blocks = grad_nhwc.reshape(n, rows, tile, cols, tile, out_channels)
        grad_blocks = grad_blocks.permute(2, 4, 0, 1, 3, 5).reshape(tile * tile, -1)
        grad_products = (output_t.t() @ grad_blocks).view(side * side, -1, out_channels)
        grad_u = torch.bmm(grad_products.transpose(1, 2), v)  # a^2, O, C
        grad_v = torch.bmm(grad_products, u)
        # (O*C, a^2) @ (a^2, 9): comes out in the weight's (O, C, 3, 3) layout.
        grad_weight = (grad_u.view(side * side, -1).t() @ filter_t).view(out_channels, c, 3, 3)
        grad_d = (input_t.t() @ grad_v.view(side * side, -1)).view(side, side, n, rows, cols, c)
        # Each window's first tile x tile positions cover the padded input once: one copy. The
        # last two rows and columns overlap the next windows: added position by position.
        grad_padded = grad_y.new_zeros(n, rows * tile + 2, cols * tile + 2, c)
        core = grad_padded[:, : rows * tile, : cols * tile].view(n, rows, tile, cols, tile, c)
        core.copy_(grad_d[:tile, :tile].permute(2, 3, 0, 4, 1, 5))
        for i in range(side):
            for j in range(side):
                if i >= tile or j >= tile:
                    window = grad_padded[:, i : i + rows * tile : tile, j : j + cols * tile : tile]
                    window += grad_d[i, j]
        grad_x = grad_padded[:, 1 : h + 1, 1 : w + 1].permute(0, 3, 1, 2)
        return grad_x, grad_weight, None


def winograd_conv3x3(x: Tensor, weight: Tensor, tile: int = 4) -> Tensor:
    """``F.conv2d(x, weight, padding=1)`` for a 3x3 ``weight`` (O, C, 3, 3), by F(tile x tile, 3x3).

    x: (N, C, H, W) -> (N, O, H, W), channels-last strides, on x's device and in its dtype (fp32
    is what it is checked and used for; bf16 would lose the transforms' precision).
    Differentiable in ``x`` and ``weight``. ``tile`` is 2 or 4; H and W need not be multiples of
    it (the last row and column of blocks are computed over zero padding and cropped).
    """
    if tile not in TILE_SIZES:
        raise ValueError(f"tile must be one of {TILE_SIZES}, got {tile}.")
    if weight.shape[2:] != (3, 3) or x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"winograd_conv3x3 takes (N, C, H, W) inputs and (O, C, 3, 3) weights; "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}."
        )
    return _Winograd3x3.apply(x, weight, tile)
