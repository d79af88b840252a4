"""InterVI's generator: a Deep-Image-Prior skip encoder-decoder with an image and a flow head.

Paper appendix A.1: the encoder has one block per scale, two convs each (the first with stride 2),
kernel 5; the decoder mirrors it with nearest ×2 upsampling at the start of each block and kernel
3; the input of every encoder block feeds, through a 1×1 conv to 4 channels, the decoder block at
the same resolution (after its upsampling). Every conv except the heads is followed by BatchNorm
and LeakyReLU(0.2); padding is by reflection. Heads: 3-channel sigmoid image and ``2·K``-channel
flow in normalised units (see ``losses``; K = number of predicted flow targets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_act(in_c: int, out_c: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_c, out_c, k, stride=stride, padding=k // 2, padding_mode="reflect"),
        nn.BatchNorm2d(out_c),
        nn.LeakyReLU(0.2, inplace=True),
    )


class SkipNet(nn.Module):
    """``forward(noise (B,1,H,W)) -> {'image': (B,3,H,W) in [0,1], 'flow': (B,2K,H,W) normalised}``.

    H and W must be multiples of ``2**len(widths)`` (see ``padded_size``).
    """

    def __init__(
        self,
        *,
        widths: tuple[int, ...],
        flow_channels: int,
        in_channels: int = 1,
        enc_kernel: int = 5,
        dec_kernel: int = 3,
        skip_channels: int = 4,
    ) -> None:
        super().__init__()
        self.scales = len(widths)
        self.down = nn.ModuleList()
        self.skip = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.skip.append(_conv_bn_act(prev, skip_channels, 1))
            self.down.append(nn.Sequential(_conv_bn_act(prev, w, enc_kernel, stride=2), _conv_bn_act(w, w, enc_kernel)))
            prev = w
        # up[i] produces scale i from scale i+1 (built coarsest first, indexed finest first).
        up: list[nn.Module] = []
        for i in reversed(range(self.scales)):
            below = widths[i + 1] if i + 1 < self.scales else widths[-1]
            first = _conv_bn_act(below + skip_channels, widths[i], dec_kernel)
            up.append(nn.Sequential(first, _conv_bn_act(widths[i], widths[i], dec_kernel)))
        self.up = nn.ModuleList(reversed(up))
        self.image_head = nn.Conv2d(widths[0], 3, 1)
        self.flow_head = nn.Conv2d(widths[0], flow_channels, 1)
        # LeCun init (the paper cites LeCun et al., "Efficient backprop"): normal, std 1/sqrt(fan_in).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                nn.init.zeros_(m.bias)
        # Flows start at zero motion rather than at random pixel offsets.
        nn.init.zeros_(self.flow_head.weight)

    def forward(self, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        skips, x = [], noise
        for skip, down in zip(self.skip, self.down):
            skips.append(skip(x))
            x = down(x)
        for i in reversed(range(self.scales)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
        return {"image": torch.sigmoid(self.image_head(x)), "flow": self.flow_head(x)}


def padded_size(h: int, w: int, scales: int, kernel: int) -> tuple[int, int]:
    """Network input size for an H×W frame: multiples of ``2**scales`` whose coarsest map is
    still larger than the reflection padding (``kernel // 2``). Outputs are cropped back to H×W."""
    unit = 2**scales
    least = kernel // 2 + 1

    def fit(n: int) -> int:
        return max(-(-n // unit), least) * unit

    return fit(h), fit(w)
