"""HP3D against the reference kernel, typed out here by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vilocal_dist.models import HP3D, hp3d_kernel

SQUARE = [[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]
KV = [
    [-1, 2, -2, 2, -1],
    [2, -6, 8, -6, 2],
    [-2, 8, -12, 8, -2],
    [2, -6, 8, -6, 2],
    [-1, 2, -2, 2, -1],
]
LAPLACIAN = [[0, -1, 0], [-1, 4, -1], [0, -1, 0]]


def _pad5(k3: list[list[int]]) -> list[list[int]]:
    return [[0] * 5] + [[0] + row + [0] for row in k3] + [[0] * 5]


def _reference_taps() -> list[list[list[float]]]:
    """[tap t-1, tap t, tap t+1] as nested lists of floats."""
    return [
        [[v / 4 for v in row] for row in _pad5(SQUARE)],
        [[v / 12 for v in row] for row in KV],
        [[v / 4 for v in row] for row in _pad5(LAPLACIAN)],
    ]


def test_kernel_taps_match_reference() -> None:
    assert torch.allclose(hp3d_kernel(), torch.tensor(_reference_taps()))


def test_impulse_response_taps_and_clamp() -> None:
    """A single bright pixel in one channel of frame 2: frame t sees tap (t-1 -> 2) etc."""
    value = 6.0
    t0, y0, x0 = 2, 8, 9
    clip = torch.zeros(1, 3, 5, 17, 19)
    clip[0, 1, t0, y0, x0] = value
    out = HP3D(3)(clip)
    assert out.shape == clip.shape

    taps = _reference_taps()
    expected = torch.zeros(5, 17, 19)
    # Cross-correlation, padding (1, 2, 2):
    #   out[t, y, x] = Σ w[kt, ky, kx] · in[t+kt-1, y+ky-2, x+kx-2]
    # so the impulse lands at out[t0 - kt + 1, y0 - ky + 2, x0 - kx + 2] = value * w[kt, ky, kx].
    for kt in range(3):
        for ky in range(5):
            for kx in range(5):
                raw = value * taps[kt][ky][kx]
                expected[t0 - kt + 1, y0 - ky + 2, x0 - kx + 2] = min(max(raw, 0.0), 4.0)
    for c in range(3):  # every output channel sums all inputs through the same kernel
        assert torch.allclose(out[0, c], expected, atol=1e-6)
    # Spot checks that the clamp bites: centre of the Laplacian tap is 6*4/4 = 6 -> 4; KV centre is
    # negative -> 0; KV (2,1) tap 8/12*6 = 4 -> 4; square ring value 2/4*6 = 3 stays 3.
    assert out[0, 0, t0 - 1, y0, x0] == 4.0
    assert out[0, 0, t0, y0, x0] == 0.0
    assert out[0, 0, t0, y0 - 1, x0] == pytest.approx(4.0)
    assert out[0, 0, t0 + 1, y0 - 1, x0] == pytest.approx(3.0)
    assert out[0, 0, 0].abs().sum() == 0  # beyond the temporal reach of the impulse


def test_equals_full_convolution_on_random_clip() -> None:
    clip = torch.rand(2, 3, 5, 12, 16, generator=torch.Generator().manual_seed(0))
    full = torch.tensor(_reference_taps())[None, None].expand(3, 3, 3, 5, 5)
    expected = F.conv3d(clip, full, padding=(1, 2, 2)).clamp(0, 4)
    out = HP3D(3)(clip)
    assert torch.allclose(out, expected, atol=1e-5)
    assert out.min() >= 0 and out.max() <= 4
    assert torch.equal(out[:, 0], out[:, 2])


def test_kernel_is_a_fixed_buffer() -> None:
    hp = HP3D(3)
    assert list(hp.parameters()) == []
    assert any(name == "kernel" for name, _ in hp.named_buffers())
    assert "kernel" not in hp.state_dict()  # derived, so not carried in checkpoints


def test_stays_fp32_under_autocast() -> None:
    clip = torch.rand(1, 3, 5, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = HP3D(3)(clip)
    assert out.dtype == torch.float32
    assert torch.allclose(out, HP3D(3)(clip))


def test_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        HP3D(3)(torch.zeros(1, 1, 5, 8, 8))
