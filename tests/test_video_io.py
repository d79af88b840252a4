"""Video I/O: bit-exact FFV1, lossy codecs, atomic writers, frame folders, masks, validation."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.video import (
    Limits,
    davis_palette,
    encode_roundtrip,
    iter_frames,
    iter_masks,
    probe,
    read_frames,
    read_mask_image,
    resize_mask,
    write_png_folder,
    write_video,
)


def noise_frames(t: int = 6, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def smooth_frames(t: int = 6, h: int = 48, w: int = 64) -> np.ndarray:
    """Gradients that drift: content a lossy codec reproduces closely."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 4 + 3 * i) % 256, (y * 5) % 256, ((x + y) * 2 + i) % 256], axis=-1) for i in range(t)]
    return np.asarray(frames, dtype=np.uint8)


def test_ffv1_round_trip_is_bit_exact(tmp_path: Path) -> None:
    frames = noise_frames()
    path = write_video(tmp_path / "v.mkv", frames, codec="ffv1")
    info = probe(path)
    assert (info.num_frames, info.height, info.width, info.codec) == (6, 48, 64, "ffv1")
    assert np.array_equal(read_frames(path), frames)


@pytest.mark.parametrize("codec", ["libx264", "libx265", "mpeg4"])
def test_lossy_codecs_round_trip_close(tmp_path: Path, codec: str) -> None:
    frames = smooth_frames()
    path = write_video(tmp_path / f"v_{codec}.mp4", frames, codec=codec, crf=18 if codec != "mpeg4" else 2)
    decoded = read_frames(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - frames).mean()
    assert 0 < error < 12  # lossy, but the picture survives


def test_higher_crf_gives_smaller_file(tmp_path: Path) -> None:
    frames = noise_frames(t=4)
    low = write_video(tmp_path / "low.mp4", frames, codec="libx264", crf=10).stat().st_size
    high = write_video(tmp_path / "high.mp4", frames, codec="libx264", crf=45).stat().st_size
    q_low = write_video(tmp_path / "qlow.avi", frames, codec="mpeg4", crf=2).stat().st_size
    q_high = write_video(tmp_path / "qhigh.avi", frames, codec="mpeg4", crf=31).stat().st_size
    assert high < low and q_high < q_low


def test_encode_roundtrip_in_memory() -> None:
    frames = smooth_frames(t=5)
    out = encode_roundtrip(frames, "libx264", 23)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert not np.array_equal(out, frames)
    assert np.abs(out.astype(int) - frames).mean() < 12


def test_codec_argument_errors(tmp_path: Path) -> None:
    frames = noise_frames(t=2)
    with pytest.raises(ConfigError, match="unknown codec"):
        write_video(tmp_path / "a.mkv", frames, codec="h263x")
    with pytest.raises(ConfigError, match="mkv"):
        write_video(tmp_path / "a.mp4", frames, codec="ffv1")
    with pytest.raises(ConfigError, match="even"):
        write_video(tmp_path / "a.mp4", frames[:, :47], codec="libx264")
    with pytest.raises(ConfigError, match="out of range"):
        write_video(tmp_path / "a.mp4", frames, codec="libx264", crf=60)
    with pytest.raises(ConfigError, match="lossless"):
        write_video(tmp_path / "a.mkv", frames, codec="ffv1", crf=3)


def test_writer_failure_leaves_nothing_and_keeps_old_file(tmp_path: Path) -> None:
    target = write_video(tmp_path / "v.mkv", noise_frames(t=2))
    old = target.read_bytes()

    def failing():
        yield from noise_frames(t=3, seed=1)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        write_video(target, failing())
    with pytest.raises(RuntimeError):
        write_video(tmp_path / "new.mkv", failing())
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mkv"]


def test_png_folder_round_trip_and_masks(tmp_path: Path) -> None:
    frames = noise_frames(t=3)
    folder = write_png_folder(tmp_path / "frames", frames)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert np.array_equal(read_frames(folder), frames)
    masks = np.zeros((2, 48, 64), dtype=bool)
    masks[0, 10:20, 5:9] = True
    mask_dir = write_png_folder(tmp_path / "masks", masks)
    assert set(np.unique(cv2.imread(str(mask_dir / "00000.png"), cv2.IMREAD_UNCHANGED))) == {0, 255}
    assert np.array_equal(np.stack(list(iter_masks(mask_dir))), masks)
    # Rewriting replaces the folder whole (no stale frames from a longer earlier write).
    write_png_folder(tmp_path / "frames", frames[:1])
    assert len(list((tmp_path / "frames").iterdir())) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_frame_folder_sorted_by_name_and_converted_to_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    gray = np.full((8, 10), 77, dtype=np.uint8)
    rgba = np.zeros((8, 10, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10  # red, nearly transparent: alpha is dropped, not composited
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")  # written first, sorts second
    Image.fromarray(gray, "L").save(folder / "a.png")
    (folder / "notes.txt").write_text("ignored")
    frames = read_frames(folder)
    assert frames.shape == (2, 8, 10, 3)
    assert np.all(frames[0] == 77)
    assert np.all(frames[1] == [200, 0, 0])


def test_frame_folder_inconsistent_size_and_corrupt_image(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    write_png_folder(folder, noise_frames(t=2))
    cv2.imwrite(str(folder / "00002.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match="00002.png.*differs"):
        read_frames(folder)
    (folder / "00002.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="00002.png"):
        read_frames(folder)


def test_limits_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_png_folder(tmp_path / "f", noise_frames(t=2))
    video = write_video(tmp_path / "v.mkv", noise_frames(t=3))
    import vilocal_dist.video.io as vio

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded despite the size limit")

    monkeypatch.setattr(vio.cv2, "imread", no_decoding)
    with pytest.raises(InputError, match="exceeds the limit"):
        next(iter_frames(folder, limits=Limits(max_pixels=1000)))
    monkeypatch.setattr(vio.av.container.InputContainer, "decode", no_decoding)
    with pytest.raises(InputError, match="exceeds the limit"):
        next(iter_frames(video, limits=Limits(max_width=32)))
    with pytest.raises(InputError, match="3 frames exceeds the limit of 2"):
        probe(video, limits=Limits(max_frames=2))


def _truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize(
    "make, fraction, match",
    [
        ("mp4", 0.5, "unreadable or corrupt"),  # moov atom at the end: cut off
        ("mp4-faststart", 0.5, "truncated"),  # index first: fewer frames than declared
        ("mkv", 0.5, "truncated"),  # no declared count: the duration gives it away
        ("mkv", 0.02, "no decodable frames|ends before its first frame"),  # zero frames
    ],
)
def test_truncated_videos_raise_naming_the_file(tmp_path: Path, make: str, fraction: float, match: str) -> None:
    frames = noise_frames(t=20)
    if make == "mkv":
        path = write_video(tmp_path / "v.mkv", frames)
    else:
        path = write_video(tmp_path / "v.mp4", frames, codec="libx264")
        if make == "mp4-faststart":
            import av

            faststart = {"movflags": "+faststart"}  # index (moov) before the data
            with av.open(str(path)) as src, av.open(str(tmp_path / "fs.mp4"), "w", options=faststart) as dst:
                stream = dst.add_stream_from_template(src.streams.video[0])
                for packet in src.demux(src.streams.video[0]):
                    if packet.dts is not None:
                        packet.stream = stream
                        dst.mux(packet)
            path = tmp_path / "fs.mp4"
    cut = _truncate(path, fraction)
    with pytest.raises(InputError, match=match) as excinfo:
        list(iter_frames(cut))
    assert str(cut) in str(excinfo.value)


def test_not_a_video_and_missing_file(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file\n" * 20)
    with pytest.raises(InputError, match="notes.mp4: unreadable or corrupt video"):
        probe(fake)
    with pytest.raises(InputError, match="no such file"):
        list(iter_frames(tmp_path / "missing.mp4"))


def test_davis_palette_hand_values() -> None:
    palette = davis_palette()
    assert palette[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


def test_mask_images_palette_rgb_gray(tmp_path: Path) -> None:
    index = np.zeros((6, 8), dtype=np.uint8)
    index[1, 1], index[2, 2:4] = 1, 2
    palette_img = Image.fromarray(index, "P")
    palette_img.putpalette(davis_palette().ravel().tolist())
    palette_img.save(tmp_path / "p.png")
    Image.fromarray(davis_palette()[index], "RGB").save(tmp_path / "rgb.png")
    for name in ("p.png", "rgb.png"):
        assert read_mask_image(tmp_path / name).sum() == 3
        assert np.argwhere(read_mask_image(tmp_path / name, object_id=1)).tolist() == [[1, 1]]
        assert np.argwhere(read_mask_image(tmp_path / name, object_id=2)).tolist() == [[2, 2], [2, 3]]
    Image.fromarray((index > 0).astype(np.uint8), "L").save(tmp_path / "01.png")
    assert read_mask_image(tmp_path / "01.png").sum() == 3
    with pytest.raises(ConfigError, match="grayscale"):
        read_mask_image(tmp_path / "01.png", object_id=1)


def test_non_binary_mask_thresholded_with_warning(tmp_path: Path) -> None:
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    Image.fromarray(values, "L").save(tmp_path / "soft.png")
    with pytest.warns(UserWarning, match="soft.png.*thresholding at 128"):
        mask = read_mask_image(tmp_path / "soft.png")
    assert mask.tolist() == [[False, False, True, True]]


def test_mask_video(tmp_path: Path) -> None:
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[:, 4:8, 4:12] = True
    video = write_video(tmp_path / "m.mkv", [np.repeat(m[..., None] * np.uint8(255), 3, axis=2) for m in masks])
    assert np.array_equal(np.stack(list(iter_masks(video))), masks)


def test_resize_mask_stays_binary() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:6, 3:7] = True
    small = resize_mask(mask, (5, 5))
    assert small.dtype == np.bool_ and small.shape == (5, 5)
    assert small.sum() == 4


def test_decode_benchmark_on_small_file(tmp_path: Path) -> None:
    from vilocal_dist.bench.decode import decode_benchmark

    video = write_video(tmp_path / "b.mp4", smooth_frames(t=8), codec="libx264")
    result = decode_benchmark(video, repeats=1)
    assert result["frames"] == 8 and (result["height"], result["width"]) == (48, 64)
    assert result["decode_fps"] > 0 and result["peak_rss_mib"] >= result["baseline_rss_mib"] > 0
    assert os.path.exists(result["video"])


def test_libx265_refuses_narrow_frames_instead_of_crashing(tmp_path):
    # libx265 corrupts the heap and aborts on frames narrower than 64 px; we refuse cleanly.
    import numpy as np

    from vilocal_dist.errors import ConfigError
    from vilocal_dist.video.io import encode_roundtrip

    frames = np.zeros((2, 64, 48, 3), np.uint8)
    with pytest.raises(ConfigError, match="64 px wide"):
        encode_roundtrip(frames, codec="libx265", crf=23)
