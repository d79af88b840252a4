"""`vilocal data inspect|compose`: reports, determinism, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vilocal_dist.cli.main import main
from vilocal_dist.video import write_png_folder, write_video


def _inspect(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["data", "inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.davis
def test_inspect_real_davis(davis_dir: Path, capsys: pytest.CaptureFixture) -> None:
    by_folder = _inspect(capsys, str(davis_dir / "JPEGImages" / "480p" / "bmx-trees"))
    by_root = _inspect(capsys, str(davis_dir), "--seq", "bmx-trees", "--quick")
    for report in (by_folder, by_root):
        assert (report["frames"], report["height"], report["width"], report["mask_frames"]) == (80, 480, 854, 80)
        assert 0.005 < report["mean_mask_fraction"] < 0.05
    dilated = _inspect(capsys, str(davis_dir), "--seq", "bmx-trees", "--masks", "masks", "--quick")
    assert dilated["mean_mask_fraction"] > by_root["mean_mask_fraction"]


def test_inspect_video_with_masks_and_text_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    frames = np.zeros((4, 16, 24, 3), dtype=np.uint8)
    masks = np.zeros((4, 16, 24), dtype=bool)
    masks[:, :4, :6] = True  # 24 / 384 = 1/16 of each frame
    video = write_video(tmp_path / "v.mkv", frames)
    write_png_folder(tmp_path / "m", masks)
    report = _inspect(capsys, str(video), "--mask-path", str(tmp_path / "m"))
    assert report == {
        "name": "v",
        "source": str(video),
        "frames": 4,
        "height": 16,
        "width": 24,
        "mask_frames": 4,
        "mean_mask_fraction": 0.0625,
        "fps": 25.0,
        "codec": "ffv1",
        "backgrounds": False,
    }
    assert main(["data", "inspect", str(video)]) == 0
    out = capsys.readouterr().out
    assert "frames" in out and "mask_frames         0" in out


def test_compose_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = str(tmp_path / name)
        assert main(["data", "compose", "--out", out, "--videos", "2", "--frames", "3", "--size", "32x48", "--seed", seed]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(tmp_path / "a" / "JPEGImages" / "480p" / "composed-s3-000")
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert a == b and len(a) == 19
    assert set(a.values()).isdisjoint(set(v for k, v in c.items() if k.startswith("JPEGImages")))
    report = _inspect(capsys, str(tmp_path / "a"), "--seq", "composed-s3-001")
    assert (report["frames"], report["height"], report["width"], report["mask_frames"]) == (3, 32, 48, 3)
    assert report["backgrounds"] is True and 0.03 < report["mean_mask_fraction"] < 0.15


def test_bad_size_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["data", "compose", "--out", str(tmp_path), "--size", "big"])
    assert excinfo.value.code == 2


def _broken_inputs(tmp_path: Path) -> list[tuple[list[str], Path]]:
    frames = np.random.default_rng(0).integers(0, 256, (10, 32, 48, 3), dtype=np.uint8)
    good = write_video(tmp_path / "good.mp4", frames, codec="libx264")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 10)
    seq = tmp_path / "davis" / "JPEGImages" / "480p" / "s"
    write_png_folder(seq, frames[:4])
    masks_dir = write_png_folder(tmp_path / "davis" / "Annotations" / "480p" / "s", np.zeros((4, 32, 48), dtype=bool))
    (masks_dir / "00001.png").unlink()
    return [([str(truncated)], truncated), ([str(text)], text), ([str(seq)], masks_dir)]


def test_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args, culprit in _broken_inputs(tmp_path):
        assert main(["data", "inspect", *args, "--json"]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vilocal: error: ") and str(culprit) in lines[0], captured.err
        assert "Traceback" not in captured.err and captured.out == ""


def test_errors_through_a_subprocess(tmp_path: Path) -> None:
    for args, culprit in _broken_inputs(tmp_path):
        result = subprocess.run(
            [sys.executable, "-m", "vilocal_dist", "data", "inspect", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(culprit) in lines[0] and "Traceback" not in result.stderr, result.stderr
