"""The stopping rule of internal inpainting (plateau, maximum, minimum), the dilation scaling, and
an IIVI fit that stops early on a trivially easy video."""

from __future__ import annotations

import numpy as np
import pytest

from vilocal_dist.inpaint.stopping import Plateau, StopRule, lr_factor, phase_plateau, scaled_dilation, watch


def _run(rule: StopRule, scores: list[float]) -> int:
    """Feed ``scores`` at the rule's evaluation points; the iteration the fit stops at."""
    plateau = Plateau(rule)
    iteration = 0
    for score in scores:
        iteration += rule.every
        if plateau.update(min(iteration, rule.max_iters), score):
            return min(iteration, rule.max_iters)
    raise AssertionError("the rule never stopped")


def test_stops_on_plateau() -> None:
    rule = StopRule(every=10, patience=3, min_delta=0.05, min_iters=0, max_iters=1000)
    scores = [10, 15, 18, 20, 20.01, 20.02, 20.03, 20.04] + [30] * 100  # plateau from the 4th evaluation
    assert _run(rule, scores) == 70  # 3 evaluations (50, 60, 70) without a gain > 0.05 dB after 40


def test_never_past_maximum() -> None:
    rule = StopRule(every=10, patience=3, min_delta=0.05, min_iters=0, max_iters=55)
    assert _run(rule, [float(i) for i in range(100)]) == 55  # always improving: stops at the maximum
    disabled = StopRule(every=10, patience=0, min_delta=0.05, min_iters=0, max_iters=40)
    assert _run(disabled, [1.0] * 10) == 40  # patience 0 = fixed budget, even on a flat curve


def test_respects_minimum() -> None:
    rule = StopRule(every=10, patience=2, min_delta=0.05, min_iters=100, max_iters=1000)
    assert _run(rule, [5.0] * 50) == 100  # flat from the start, but not before min_iters


def test_nan_scores_never_count_as_gains() -> None:
    rule = StopRule(every=1, patience=2, min_delta=0.0, min_iters=0, max_iters=10)
    assert _run(rule, [float("nan")] * 10) == 2


@pytest.mark.parametrize(("dilate", "rows", "ref", "expected"), [
    (12, 320, 320, 12), (12, 80, 320, 3), (12, 640, 320, 24), (12, 10, 320, 1), (1, 32, 320, 1),
    (0, 320, 320, 0), (12, 80, 0, 12),
])  # fmt: skip
def test_dilation_scaling(dilate: int, rows: int, ref: int, expected: int) -> None:
    assert scaled_dilation(dilate, rows, ref) == expected


def test_cosine_schedule_warms_up_and_decays() -> None:
    f = [lr_factor("cosine", i, 1000, 50) for i in range(1000)]
    assert f[0] == pytest.approx(1 / 50) and f[49] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[50:], f[51:])) and f[-1] == pytest.approx(0.1, abs=1e-4)
    assert lr_factor("constant", 999, 1000, 50) == 1.0


def test_plateau_schedule_drops_the_lr_once_then_stops() -> None:
    rule = StopRule(every=10, patience=2, min_delta=0.05, min_iters=0, max_iters=1000)
    plateau = phase_plateau(rule, "plateau")
    assert (plateau.decays, plateau.scale) == (1, 1.0)
    flat = [plateau.update(10 * (i + 1), 20.0) for i in range(5)]
    # 1st evaluation sets the best; the 2nd plateau (evaluations 2-3) drops the lr, the next stops.
    assert flat == [False, False, False, False, True] and plateau.scale == pytest.approx(0.1)
    assert plateau.stopped_at == 50
    again = Plateau(rule)
    again.load_state_dict(plateau.state_dict())  # a resumed fit keeps the dropped lr
    assert (again.decays, again.scale) == (0, pytest.approx(0.1))
    # The next phase starts at the lr the last one ended at, with no drops left.
    assert (phase_plateau(rule, "plateau", plateau).decays, phase_plateau(rule, "plateau", plateau).scale) == (0, pytest.approx(0.1))
    assert phase_plateau(rule, "plateau", phase_plateau(rule, "plateau")).decays == 1
    assert phase_plateau(rule, "constant").decays == 0 and lr_factor("plateau", 10, 100, 5) == 1.0
    assert Plateau(rule).load_state_dict({"best": 1.0, "since_best": 0, "stopped_at": 0}) is None  # old checkpoints


def test_iivi_stops_at_the_plateau_not_the_maximum() -> None:
    from vilocal_dist.inpaint.iivi import fit_one_video

    # A flat grey video, and a threshold no gain can meet: after the first evaluation every one is
    # "no improvement", so the fit must stop at min_iters (20) + patience, far below its 2000 maximum.
    frames = np.full((3, 32, 48, 3), 128, np.uint8)
    masks = np.zeros((3, 32, 48), bool)
    masks[:, 12:20, 18:30] = True
    cfg = {"preset": "tiny", "iters_recon": 2000, "iters_reg": 0, "lr": 1e-3, "batch": 1,
           "stop_every": 10, "stop_patience": 2, "stop_min_delta": 1000.0, "min_iters": 20}  # fmt: skip
    seen: list[dict[str, float]] = []
    with watch(on_eval=seen.append, gt_frames=frames):
        result = fit_one_video(frames, masks, cfg, progress=False)
    assert result.metrics["train/iters"] == 30 and result.metrics["train/iters_recon"] == 30
    assert [p["iteration"] for p in result.history] == [10.0, 20.0, 30.0]
    assert seen == result.history and all("true/hole_psnr" in p and p["seconds"] > 0 for p in seen)
    assert all(np.isfinite(p["selfval/psnr"]) or p["selfval/psnr"] == np.inf for p in seen)


def test_iivi_plateau_schedule_drops_the_lr_before_stopping() -> None:
    from vilocal_dist.inpaint.iivi import fit_one_video

    frames = np.full((3, 32, 48, 3), 128, np.uint8)
    masks = np.zeros((3, 32, 48), bool)
    masks[:, 12:20, 18:30] = True
    cfg = {"preset": "tiny", "iters_recon": 2000, "iters_reg": 0, "lr": 1e-3, "batch": 1, "lr_schedule": "plateau",
           "stop_every": 10, "stop_patience": 2, "stop_min_delta": 1000.0, "min_iters": 20}  # fmt: skip
    result = fit_one_video(frames, masks, cfg, progress=False)
    assert result.metrics["train/iters"] == 50  # stop at 30 turned into a drop, then 2 more evaluations


def test_iivi_variants_share_phase_one_through_the_recon_cache(tmp_path) -> None:
    """Variants differing only in phase 2 start it from the same cached network; the cached path
    gives the very result of a fit that ran phase 1 itself."""
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.inpaint.iivi import fit_one_video

    clip = compose_video(3, 3, (32, 48))
    base = {"preset": "tiny", "iters_recon": 10, "iters_reg": 4, "lr": 1e-3, "batch": 1, "random_vgg": True,
            "stop_every": 5, "stop_patience": 100, "min_iters": 0, "recon_cache": str(tmp_path / "cache")}  # fmt: skip
    first = fit_one_video(clip.frames, clip.masks, base, progress=False)
    assert len(list((tmp_path / "cache").glob("recon-*.pt"))) == 1
    other = fit_one_video(clip.frames, clip.masks, {**base, "lambda_a": 0.0}, progress=False)
    phase1 = [p for p in first.history if p["phase"] == 1.0]
    assert len(phase1) == 2 and [p for p in other.history if p["phase"] == 1.0] == phase1  # timings too: not re-run
    assert other.metrics["train/iters"] == 14 and len(list((tmp_path / "cache").iterdir())) == 1
    alone = fit_one_video(clip.frames, clip.masks, {**base, "recon_cache": ""}, progress=False)
    assert np.array_equal(alone.frames, first.frames)
    again = fit_one_video(clip.frames, clip.masks, base, progress=False)  # from the cache, same λ
    assert np.array_equal(again.frames, first.frames)
