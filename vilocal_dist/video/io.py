"""Video I/O on PyAV (files) and OpenCV/Pillow (frame folders): probe, stream, resize, encode.

Frames are uint8 H×W×3 RGB, masks bool H×W (True = hole). Decoding streams one frame at a time,
so a long video is never held whole. Sizes are checked against :class:`Limits` from container or
image headers before decoding. Writers go to a temporary name beside the target and
``os.replace`` it at the end, so nothing half-written ever looks complete.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.video.validate import (
    DEFAULT_LIMITS,
    Limits,
    binarize_mask,
    check_frame_count,
    check_frame_size,
    check_same_size,
    to_rgb_uint8,
)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

#: Encoder name -> pixel format it is fed. FFV1 takes bgr0 (no 8-bit planar RGB), which is a pure
#: channel reordering of RGB, so FFV1 round trips are bit-exact.
PIX_FMTS = {"ffv1": "bgr0", "libx264": "yuv420p", "libx265": "yuv420p", "mpeg4": "yuv420p"}
LOSSLESS = frozenset({"ffv1"})  # lossless PNG output: write_png_folder
DEFAULT_CRF = {"libx264": 23, "libx265": 28, "mpeg4": 4}
_CRF_RANGE = {"libx264": (0, 51), "libx265": (0, 51), "mpeg4": (1, 31)}
_LOSSLESS_CONTAINERS = frozenset({".mkv", ".avi", ".nut"})


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns without decoding pixels."""

    path: Path
    kind: str  # "file" or "folder"
    num_frames: int  # exact for folders, for containers that declare it, or after counting packets
    height: int
    width: int
    fps: float | None = None
    codec: str | None = None


# ----------------------------------------------------------------------------- probing


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` sorted by name (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("not a folder", folder)
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file()
    )


def image_header(path: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[int, int, str]:
    """(height, width, Pillow mode) from the image header only; checks the size limit."""
    try:
        with warnings.catch_warnings():
            # We apply our own (configurable) pixel limit just below; Pillow's bomb warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height, mode = im.width, im.height, im.mode
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large ({exc})", path) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"unreadable image ({exc})", path) from None
    check_frame_size(width, height, path, limits)
    return height, width, mode


def _open_container(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise InputError("no such file", path)
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)", path)
    try:
        container = av.open(str(path))
    except av.EOFError:
        raise InputError("empty or truncated video (ends before its first frame)", path) from None
    except av.FFmpegError as exc:
        raise InputError(f"unreadable or corrupt video ({exc.strerror or exc})", path) from None
    if not container.streams.video:
        container.close()
        raise InputError("no video stream", path)
    return container


def _declared_frames(
    stream: av.video.stream.VideoStream, container: av.container.InputContainer
) -> tuple[int, int | None]:
    """(exact declared count or 0, duration-based estimate or None)."""
    rate = stream.average_rate or stream.guessed_rate
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    estimate = round(seconds * float(rate)) if seconds and rate else None
    return int(stream.frames or 0), estimate


def _check_truncation(num: int, declared: int, estimate: int | None, path: Path) -> None:
    """Fewer frames than the container declares (or its duration implies) means a cut-off file."""
    if declared and num < declared:
        raise InputError(f"truncated video: {num} of {declared} declared frames present", path)
    # Without a declared count (e.g. Matroska) the header duration is the evidence left; the slack
    # allows for rounding of duration × average frame rate.
    if not declared and estimate and num < estimate - max(2, 0.02 * estimate):
        raise InputError(f"truncated video: {num} frames present, its duration implies about {estimate}", path)


def probe(path: str | Path, limits: Limits = DEFAULT_LIMITS, *, count: bool = True) -> VideoInfo:
    """Frame count, size, fps and codec of a video file or frame folder, without decoding pixels.

    For containers that do not declare a frame count (Matroska, WebM), ``count=True`` demuxes the
    packets to count frames exactly (reads the file, decodes nothing); otherwise the count is
    estimated from duration × frame rate.
    """
    path = Path(path)
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise InputError("folder holds no frames (png/jpg)", path)
        check_frame_count(len(files), path, limits)
        height, width, _ = image_header(files[0], limits)
        return VideoInfo(path, "folder", len(files), height, width)
    container = _open_container(path)
    with container:
        stream = container.streams.video[0]
        check_frame_size(stream.width, stream.height, path, limits)
        declared, estimate = _declared_frames(stream, container)
        num = declared or estimate or 0
        check_frame_count(num, path, limits)
        if not declared and count:
            num = 0
            try:
                for packet in container.demux(stream):
                    if packet.size:
                        num += 1
                        if num > limits.max_frames:
                            check_frame_count(num, path, limits)
            except av.FFmpegError as exc:
                raise InputError(f"corrupt video ({exc.strerror or exc})", path) from None
            _check_truncation(num, 0, estimate, path)
        if num == 0:
            raise InputError("video holds no frames", path)
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            path, "file", num, stream.height, stream.width, float(rate) if rate else None, stream.codec_context.name
        )


# ----------------------------------------------------------------------------- decoding


def resize_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Bilinear resize of an H×W×3 frame to ``size`` = (height, width); no-op when equal or None."""
    if size is None or tuple(frame.shape[:2]) == tuple(size):
        return frame
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resize of a bool H×W mask (nearest keeps it binary)."""
    if size is None or tuple(mask.shape[:2]) == tuple(size):
        return mask
    return cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def read_image(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """One image file → uint8 H×W×3 RGB (gray and alpha converted, size checked first)."""
    path = Path(path)
    image_header(path, limits)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError("unreadable or corrupt image", path)
    return to_rgb_uint8(image, path, bgr=True)


def _iter_folder(folder: Path, limits: Limits, max_frames: int | None) -> Iterator[np.ndarray]:
    info = probe(folder, limits)
    for file in list_image_files(folder)[:max_frames]:
        frame = read_image(file, limits)
        check_same_size((info.height, info.width), frame.shape[:2], file, "frame")
        yield frame


def _iter_file(path: Path, limits: Limits, max_frames: int | None) -> Iterator[np.ndarray]:
    container = _open_container(path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads; output order is unchanged
        check_frame_size(stream.width, stream.height, path, limits)
        declared, estimate = _declared_frames(stream, container)
        check_frame_count(declared or estimate or 0, path, limits)
        num = 0
        try:
            for frame in container.decode(stream):
                if (frame.height, frame.width) != (stream.height, stream.width):
                    raise InputError(
                        f"frame {num} is {frame.width}x{frame.height}, the stream declares "
                        f"{stream.width}x{stream.height}",
                        path,
                    )
                num += 1
                check_frame_count(num, path, limits)
                # to_ndarray(rgb24) converts any pixel format (gray, yuva, rgba) to plain RGB.
                yield frame.to_ndarray(format="rgb24")
                if max_frames is not None and num >= max_frames:
                    return
        except av.FFmpegError as exc:
            problem = f"corrupt or truncated video: decoding failed after {num} frames ({exc.strerror or exc})"
            raise InputError(problem, path) from None
    if num == 0:
        raise InputError("video holds no decodable frames", path)
    _check_truncation(num, declared, estimate, path)


def iter_frames(
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream uint8 H×W×3 RGB frames of a video file or frame folder, optionally resized.

    Raises InputError for unreadable, corrupt, truncated (detected at the end of the stream),
    zero-frame or over-limit input.
    """
    path = Path(path)
    frames = _iter_folder(path, limits, max_frames) if path.is_dir() else _iter_file(path, limits, max_frames)
    for frame in frames:
        yield resize_frame(frame, size)


def read_frames(
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    max_frames: int | None = None,
) -> np.ndarray:
    """All frames at once: uint8 T×H×W×3 RGB."""
    return np.stack(list(iter_frames(path, size, limits=limits, max_frames=max_frames)))


# ----------------------------------------------------------------------------- masks

def davis_palette(num_colors: int = 256) -> np.ndarray:
    """The DAVIS/PASCAL VOC palette (uint8 N×3): index 1 = (128,0,0), 2 = (0,128,0), …"""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        code, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((code >> 0) & 1) << (7 - bit)
            g |= ((code >> 1) & 1) << (7 - bit)
            b |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette[index] = (r, g, b)
    return palette


def read_mask_image(path: str | Path, object_id: int | None = None, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """One mask/annotation image → bool H×W (True = hole / object).

    Palette PNGs (DAVIS annotations) hold object indices; colour-coded RGB annotations are
    mapped to indices through the DAVIS palette. ``object_id=None`` merges all objects (any
    nonzero index / any non-black colour); an integer selects that object. Grayscale masks are
    binary 0/1 or 0/255; other gray values are thresholded at 128 with a warning
    (see :func:`~vilocal_dist.video.validate.binarize_mask`); ``object_id`` is an error there.
    """
    path = Path(path)
    image_header(path, limits)
    try:
        with Image.open(path) as im:
            mode = im.mode
            values = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"unreadable mask image ({exc})", path) from None
    if mode == "P":
        return values != 0 if object_id is None else values == object_id
    if values.ndim == 3:
        rgb = values[..., :3]
        if object_id is None:
            return np.any(rgb != 0, axis=2)
        return np.all(rgb == davis_palette()[object_id], axis=2)
    if object_id is not None:
        raise ConfigError(f"object id {object_id} given, but {path} is a grayscale mask without object ids")
    if values.dtype == np.uint16 or mode.startswith("I"):
        values = (values.astype(np.uint32) // 257).astype(np.uint8)
    return binarize_mask(values, path)


def iter_masks(
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    object_id: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream bool H×W masks from a mask folder or a mask video (gray; thresholded as above)."""
    path = Path(path)
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise InputError("mask folder holds no images", path)
        for file in files[:max_frames]:
            yield resize_mask(read_mask_image(file, object_id, limits), size)
        return
    if object_id is not None:
        raise ConfigError(f"object id {object_id} given, but the mask video {path} has no object ids")
    for frame in iter_frames(path, limits=limits, max_frames=max_frames):
        # A lossy mask video is never exactly binary; binarize_mask warns when it thresholds.
        yield resize_mask(binarize_mask(frame[..., 0], path), size)


# ----------------------------------------------------------------------------- encoding


def _temp_sibling(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{suffix}")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing any old one."""
    old = None
    if final.exists():
        old = _temp_sibling(final, ".old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_codec(codec: str, crf: int | None, suffix: str | None) -> dict[str, str]:
    """Encoder options for ``codec`` at ``crf``; ConfigError for unknown codecs or bad values."""
    if codec not in PIX_FMTS:
        raise ConfigError(f"unknown codec {codec!r}; known: {', '.join(sorted(PIX_FMTS))}")
    if suffix is not None and codec in LOSSLESS and suffix not in _LOSSLESS_CONTAINERS:
        raise ConfigError(f"codec {codec} needs a .mkv (or .avi/.nut) file, not {suffix}")
    if codec in LOSSLESS:
        if crf is not None:
            raise ConfigError(f"codec {codec} is lossless and takes no crf")
        return {"slicecrc": "1"}  # per-slice CRCs: corruption in a forensic archive is detected
    crf = DEFAULT_CRF[codec] if crf is None else int(crf)
    low, high = _CRF_RANGE[codec]
    if not low <= crf <= high:
        raise ConfigError(f"crf {crf} out of range {low}..{high} for {codec}")
    if codec == "mpeg4":
        # MPEG-4 Part 2 has no CRF; the closest constant-quality mode is a fixed quantiser (q:v).
        return {"qmin": str(crf), "qmax": str(crf)}
    options = {"crf": str(crf)}
    if codec == "libx265":
        options["x265-params"] = "log-level=none"  # x265 prints banners to stderr otherwise
    return options


def _encode(
    target: str | io.BytesIO,
    fmt: str | None,
    frames: Iterable[np.ndarray],
    codec: str,
    options: dict[str, str],
    fps: int,
    preset: str | None,
) -> int:
    """Encode ``frames`` into ``target`` (path or file object); returns the frame count."""
    container = av.open(target, "w", format=fmt)
    count = 0
    try:
        stream = None
        for frame in frames:
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be uint8 H×W×3, got {frame.dtype} {frame.shape}")
            if stream is None:
                height, width = frame.shape[:2]
                if PIX_FMTS[codec] == "yuv420p" and (height % 2 or width % 2):
                    raise ConfigError(f"{codec} (4:2:0) needs an even frame size, got {width}x{height}")
                if codec == "libx265" and width < 64:
                    # libx265 aborts the whole process (heap corruption) on narrower frames.
                    raise ConfigError(f"libx265 needs frames at least 64 px wide, got {width}x{height}")
                stream = container.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, PIX_FMTS[codec]
                if preset and codec in ("libx264", "libx265"):
                    options = {**options, "preset": preset}
                stream.options = options
            elif frame.shape[:2] != (stream.height, stream.width):
                raise ValueError(f"frame {count} is {frame.shape[:2]}, earlier frames {(stream.height, stream.width)}")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return count


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    codec: str = "ffv1",
    crf: int | None = None,
    fps: int = 25,
    preset: str | None = "medium",
) -> Path:
    """Encode uint8 H×W×3 RGB frames to ``path`` atomically (temp name, then ``os.replace``).

    ``codec``: ``ffv1`` (lossless, .mkv) or ``libx264``/``libx265``/``mpeg4`` (lossy,
    any container) at ``crf`` (default 23 / 28; for mpeg4 ``crf`` is the fixed quantiser 1–31).
    """
    path = Path(path)
    options = _check_codec(codec, crf, path.suffix.lower())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, path.suffix)  # keep the suffix: it selects the container format
    try:
        _encode(str(tmp), None, frames, codec, options, fps, preset)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def encode_roundtrip(
    frames: np.ndarray, codec: str = "libx264", crf: int | None = 23, *, preset: str | None = "medium"
) -> np.ndarray:
    """Compress T×H×W×3 frames with ``codec`` at ``crf`` in memory and decode them back."""
    options = _check_codec(codec, crf, None)
    buffer = io.BytesIO()
    _encode(buffer, "matroska", iter(frames), codec, options, 25, preset)
    buffer.seek(0)
    with av.open(buffer, "r", format="matroska") as container:
        out = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    return np.stack(out)


def write_png_folder(folder: str | Path, images: Iterable[np.ndarray], *, compression: int = 3) -> Path:
    """Write RGB frames (H×W×3 uint8) or bool masks (H×W → 0/255) as 00000.png… atomically.

    The folder appears complete or not at all (written to a temp sibling, then renamed).
    OpenCV's PNG writer stores no timestamps, so equal inputs give byte-identical files.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(folder)
    tmp.mkdir()
    try:
        for index, image in enumerate(images):
            if image.dtype == np.bool_:
                data = image.astype(np.uint8) * 255
            elif image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
                data = image[..., ::-1]  # RGB -> OpenCV's BGR
            else:
                raise ValueError(f"expected uint8 H×W×3 frames or bool masks, got {image.dtype} {image.shape}")
            if not cv2.imwrite(str(tmp / f"{index:05d}.png"), data, [cv2.IMWRITE_PNG_COMPRESSION, compression]):
                raise OSError(f"could not write {tmp / f'{index:05d}.png'}")
        replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
