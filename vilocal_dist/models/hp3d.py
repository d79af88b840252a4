"""HP3D: the fixed spatio-temporal high-pass filter ViLocal applies before its encoder.

The filter is a 3-D convolution with kernel ``[C_out=C, C_in=C, 3, 5, 5]`` (stride 1, padding
(1, 2, 2)) in which every (out, in) channel pair holds the same three temporal taps, followed by
``clamp(0, 4)`` (lower bound 0, as in the authors' code, not ±4):

- tap ``t-1``: the 3×3 kernel ``[[-1,2,-1],[2,-4,2],[-1,2,-1]] / 4`` in the centre of a 5×5;
- tap ``t``:   the 5×5 "KV" kernel ``/ 12``;
- tap ``t+1``: the 3×3 Laplacian ``[[0,-1,0],[-1,4,-1],[0,-1,0]] / 4`` in the centre of a 5×5.

Because every pair shares one kernel, output channel ``o`` equals ``sum_c conv(x_c, k)`` for every
``o``: we sum the input channels once and convolve a single channel (C² times fewer
multiply-adds), then broadcast. The result equals the full ``[C, C, 3, 5, 5]`` convolution.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

_SQUARE_3X3 = [[-1.0, 2.0, -1.0], [2.0, -4.0, 2.0], [-1.0, 2.0, -1.0]]
_KV_5X5 = [
    [-1.0, 2.0, -2.0, 2.0, -1.0],
    [2.0, -6.0, 8.0, -6.0, 2.0],
    [-2.0, 8.0, -12.0, 8.0, -2.0],
    [2.0, -6.0, 8.0, -6.0, 2.0],
    [-1.0, 2.0, -2.0, 2.0, -1.0],
]
_LAPLACIAN_3X3 = [[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]

#: Output range of the filter (the authors clamp to [0, 4], not [-4, 4]).
CLAMP_MIN, CLAMP_MAX = 0.0, 4.0


def _centre_in_5x5(kernel_3x3: list[list[float]]) -> torch.Tensor:
    out = torch.zeros(5, 5)
    out[1:4, 1:4] = torch.tensor(kernel_3x3)
    return out


def hp3d_kernel() -> torch.Tensor:
    """The three temporal taps, shape ``[3, 5, 5]`` (index 0 multiplies frame t-1)."""
    return torch.stack(
        [
            _centre_in_5x5(_SQUARE_3X3) / 4.0,
            torch.tensor(_KV_5X5) / 12.0,
            _centre_in_5x5(_LAPLACIAN_3X3) / 4.0,
        ]
    )


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class HP3D(nn.Module):
    """Fixed (untrained) HP3D noise filter.

    ``forward(x: [B, C, T, H, W]) -> [B, C, T, H, W]``, all output channels equal, values in [0, 4].
    The kernel is a non-persistent buffer: it moves with ``.to(device)`` but is derived, so it is
    not stored in state dicts and never receives gradients.
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"HP3D needs at least one channel, got {channels}")
        self.channels = channels
        self.register_buffer("kernel", hp3d_kernel()[None, None], persistent=False)  # [1,1,3,5,5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise ValueError(f"HP3D expects [B, {self.channels}, T, H, W], got {list(x.shape)}")
        # Always fp32: under bf16 autocast, pixel steps of 1/255 would be rounded away before the
        # high-pass filter could expose them, and those steps are the forensic signal.
        with _no_autocast(x.device):
            summed = x.float().sum(dim=1, keepdim=True)  # [B,1,T,H,W]
            residual = F.conv3d(summed, self.kernel.float(), padding=(1, 2, 2))
            residual = residual.clamp(CLAMP_MIN, CLAMP_MAX)
        return residual.expand(-1, self.channels, -1, -1, -1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, clamp=({CLAMP_MIN}, {CLAMP_MAX})"
