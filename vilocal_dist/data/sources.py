"""Data sources: one object per video, whatever its layout on disk.

``open_source(spec)`` understands:

* a DAVIS root (``JPEGImages/<res>/<seq>`` + ``Annotations|Masks/<res>/<seq>``) with ``seq=``;
  composed datasets written by :func:`~vilocal_dist.data.composed.write_composed_dataset` share
  this layout and add ``Backgrounds/<res>/<seq>`` (clean ground truth);
* a DAVIS sequence folder ``…/JPEGImages/<res>/<seq>`` (masks found at
  ``…/Annotations/<res>/<seq>`` or ``…/Masks/<res>/<seq>``);
* a forged video folder ``videos/<id>`` of a forged dataset (``frames/``, ``masks/``);
* a video file or a plain frame folder, with masks from ``mask_path`` (folder or mask video);
* ``composed:SEED[:FRAMES[:HxW]]``: a built-in composed video generated in memory.

Frames come out as uint8 H×W×3 RGB, masks as bool H×W, streamed one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vilocal_dist.config import parse_size
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.video.io import (
    VideoInfo,
    image_header,
    iter_frames,
    iter_masks,
    list_image_files,
    probe,
    resize_frame,
    resize_mask,
)
from vilocal_dist.video.validate import DEFAULT_LIMITS, Limits, check_mask_count, check_same_size

MASK_FOLDERS = {"annotations": "Annotations", "masks": "Masks"}
DEFAULT_RESOLUTION = "480p"
Size = tuple[int, int] | None


class VideoSource:
    """A video with optional per-frame masks and optional clean backgrounds.

    Attributes: ``name``, ``spec`` (string that reopens it), ``num_frames``, ``height``, ``width``,
    ``num_masks`` (0 when the video has none), ``background_path`` (folder or None).
    """

    name: str
    spec: str
    num_frames: int
    height: int
    width: int
    num_masks: int
    background_path: Path | None = None

    @property
    def has_masks(self) -> bool:
        return self.num_masks > 0

    @property
    def has_backgrounds(self) -> bool:
        return False

    def iter_frames(self, size: Size = None) -> Iterator[np.ndarray]:
        """uint8 H×W×3 RGB frames, resized (bilinear) to ``size`` = (H, W) when given."""
        raise NotImplementedError

    def iter_masks(self, size: Size = None) -> Iterator[np.ndarray]:
        """bool H×W masks (True = hole), resized (nearest) to ``size`` when given."""
        raise NotImplementedError

    def iter_backgrounds(self, size: Size = None) -> Iterator[np.ndarray]:
        """uint8 H×W×3 clean frames (composed videos only)."""
        raise InputError("this source has no ground-truth backgrounds", self.spec)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, frames={self.num_frames}, "
            f"size={self.height}x{self.width}, masks={self.num_masks})"
        )


class PathSource(VideoSource):
    """Frames from a video file or frame folder; masks from a folder or mask video."""

    def __init__(
        self,
        name: str,
        frames_path: Path,
        masks_path: Path | None = None,
        *,
        background_path: Path | None = None,
        object_id: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.name, self.frames_path, self.masks_path = name, frames_path, masks_path
        self.background_path, self.object_id, self.limits = background_path, object_id, limits
        self.spec = str(frames_path)
        info = probe(frames_path, limits)
        self.num_frames, self.height, self.width = info.num_frames, info.height, info.width
        self.info: VideoInfo = info
        self.num_masks = 0
        if masks_path is not None:
            self.num_masks = self._check_companion(masks_path, "mask")
        if background_path is not None:
            self._check_companion(background_path, "background")

    def _check_companion(self, path: Path, what: str) -> int:
        """Count and size of a mask/background folder or video must match the frames (headers only)."""
        if path.is_dir():
            files = list_image_files(path)
            if not files:
                raise InputError(f"{what} folder holds no images", path)
            height, width, _ = image_header(files[0], self.limits)
            count, first = len(files), files[0]
        else:
            info = probe(path, self.limits)
            count, height, width, first = info.num_frames, info.height, info.width, path
        if count != self.num_frames:
            raise InputError(f"{count} {what}s for {self.num_frames} frames{self._missing_hint(path)}", path)
        check_same_size((self.height, self.width), (height, width), first, what)
        return count

    def _missing_hint(self, companion: Path) -> str:
        """Name the frames lacking a companion file when both sides are folders."""
        if not (self.frames_path.is_dir() and companion.is_dir()):
            return ""
        stems = {p.stem for p in list_image_files(self.frames_path)}
        missing = sorted(stems - {p.stem for p in list_image_files(companion)})
        return f" (none for {', '.join(missing[:5])}{', …' if len(missing) > 5 else ''})" if missing else ""

    @property
    def has_backgrounds(self) -> bool:
        return self.background_path is not None

    def iter_frames(self, size: Size = None) -> Iterator[np.ndarray]:
        return iter_frames(self.frames_path, size, limits=self.limits)

    def iter_masks(self, size: Size = None) -> Iterator[np.ndarray]:
        if self.masks_path is None:
            raise InputError("no masks for this video (give a mask folder or mask video)", self.frames_path)
        files = list_image_files(self.masks_path) if self.masks_path.is_dir() else None
        count = 0
        for mask in iter_masks(self.masks_path, object_id=self.object_id, limits=self.limits):
            where = files[count] if files else self.masks_path  # name the offending file when there is one
            check_same_size((self.height, self.width), mask.shape, where, "mask")
            count += 1
            yield resize_mask(mask, size)
        check_mask_count(self.num_frames, count, self.masks_path)

    def iter_backgrounds(self, size: Size = None) -> Iterator[np.ndarray]:
        if self.background_path is None:
            return super().iter_backgrounds(size)
        return iter_frames(self.background_path, size, limits=self.limits)


class ArraySource(VideoSource):
    """A video already in memory (built-in composed videos, tests)."""

    def __init__(
        self,
        name: str,
        frames: np.ndarray,
        masks: np.ndarray | None = None,
        *,
        backgrounds: np.ndarray | None = None,
        spec: str | None = None,
    ) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 T×H×W×3, got {frames.dtype} {frames.shape}")
        if masks is not None and masks.shape != frames.shape[:3]:
            raise ValueError(f"masks {masks.shape} do not match frames {frames.shape[:3]}")
        self.name, self.spec = name, spec or name
        self.frames, self.masks, self.backgrounds = frames, masks, backgrounds
        self.num_frames, self.height, self.width = frames.shape[:3]
        self.num_masks = 0 if masks is None else len(masks)

    @property
    def has_backgrounds(self) -> bool:
        return self.backgrounds is not None

    def iter_frames(self, size: Size = None) -> Iterator[np.ndarray]:
        return (resize_frame(f, size) for f in self.frames)

    def iter_masks(self, size: Size = None) -> Iterator[np.ndarray]:
        if self.masks is None:
            raise InputError("no masks for this video", self.spec)
        return (resize_mask(m.astype(bool), size) for m in self.masks)

    def iter_backgrounds(self, size: Size = None) -> Iterator[np.ndarray]:
        if self.backgrounds is None:
            return super().iter_backgrounds(size)
        return (resize_frame(f, size) for f in self.backgrounds)


# ----------------------------------------------------------------------------- DAVIS layout


def _resolution_dir(root: Path) -> Path:
    """JPEGImages/480p when present, else the only resolution folder there."""
    images = root / "JPEGImages"
    if (images / DEFAULT_RESOLUTION).is_dir():
        return images / DEFAULT_RESOLUTION
    subdirs = sorted(p for p in images.iterdir() if p.is_dir())
    if len(subdirs) == 1:
        return subdirs[0]
    raise InputError(f"expected JPEGImages/{DEFAULT_RESOLUTION} (found {[p.name for p in subdirs]})", images)


def is_davis_root(path: str | Path) -> bool:
    return (Path(path) / "JPEGImages").is_dir()


def list_sequences(davis_root: str | Path) -> list[str]:
    """Sequence names under ``davis_root/JPEGImages/<res>``, sorted."""
    root = Path(davis_root)
    if not is_davis_root(root):
        raise InputError("not a DAVIS root (no JPEGImages folder)", root)
    return sorted(p.name for p in _resolution_dir(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def _davis_source(
    root: Path, resolution: str, seq: str, masks: str, mask_path: Path | None, object_id: int | None, limits: Limits
) -> PathSource:
    frames = root / "JPEGImages" / resolution / seq
    if not frames.is_dir():
        raise InputError(f"no sequence {seq!r} (known: {', '.join(list_sequences(root))})", root)
    if mask_path is None:
        mask_path = root / MASK_FOLDERS[masks] / resolution / seq
        if not mask_path.is_dir():
            if masks == "masks":
                raise InputError("mask folder requested with masks='masks' does not exist", mask_path)
            mask_path = None  # annotations are optional: a sequence may be unannotated
    backgrounds = root / "Backgrounds" / resolution / seq
    return PathSource(
        seq,
        frames,
        mask_path,
        background_path=backgrounds if backgrounds.is_dir() else None,
        object_id=object_id,
        limits=limits,
    )


def _composed_source(spec: str) -> ArraySource:
    from vilocal_dist.data.composed import compose_video

    parts = spec.split(":")[1:]
    try:
        seed = int(parts[0])
        num_frames = int(parts[1]) if len(parts) > 1 else 24
        height, width = parse_size(parts[2], minimum=1) if len(parts) > 2 else (240, 432)
        if len(parts) > 3:
            raise ValueError
    except (ValueError, IndexError, ConfigError):
        raise ConfigError(f"bad built-in source {spec!r}; expected composed:SEED[:FRAMES[:HxW]]") from None
    video = compose_video(seed, num_frames, (height, width))
    return ArraySource(video.name, video.frames, video.masks, backgrounds=video.backgrounds, spec=spec)


def open_source(
    spec: str | Path | VideoSource,
    *,
    seq: str | None = None,
    object_id: int | None = None,
    masks: str = "annotations",
    mask_path: str | Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VideoSource:
    """Open any supported video source (see the module docstring).

    ``masks`` picks the DAVIS mask folder (``annotations`` = Annotations, ``masks`` = Masks);
    ``object_id`` selects one object of multi-object annotations (None merges them all);
    ``mask_path`` overrides where masks come from.
    """
    if isinstance(spec, VideoSource):
        return spec
    if masks not in MASK_FOLDERS:
        raise ConfigError(f"masks must be one of {sorted(MASK_FOLDERS)}, got {masks!r}")
    if isinstance(spec, str) and spec.startswith("composed:"):
        return _composed_source(spec)
    path = Path(spec).expanduser()
    mask_path = None if mask_path is None else Path(mask_path).expanduser()
    if not path.exists():
        raise InputError("no such file or folder", path)
    if seq is not None and not is_davis_root(path):
        raise ConfigError(f"--seq applies to a DAVIS root (with JPEGImages/), and {path} is not one")
    if is_davis_root(path):
        if seq is None:
            sequences = list_sequences(path)
            if len(sequences) != 1:
                names = ", ".join(sequences[:20])
                raise ConfigError(f"{path} holds {len(sequences)} sequences; pick one with --seq ({names})")
            seq = sequences[0]
        return _davis_source(path, _resolution_dir(path).name, seq, masks, mask_path, object_id, limits)
    if path.is_dir() and path.parent.parent.name == "JPEGImages":
        return _davis_source(path.parents[2], path.parent.name, path.name, masks, mask_path, object_id, limits)
    if path.is_dir() and (path / "provenance.json").is_file() and (path / "frames").is_dir():
        forged_masks = mask_path or (path / "masks" if (path / "masks").is_dir() else None)
        return PathSource(path.name, path / "frames", forged_masks, object_id=object_id, limits=limits)
    name = path.name if path.is_dir() else path.stem
    return PathSource(name, path, mask_path, object_id=object_id, limits=limits)


def load_video(
    source: str | Path | VideoSource,
    size: Size = None,
    max_frames: int | None = None,
    *,
    require_masks: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole video: (frames uint8 T×H×W×3, masks bool T×H×W).

    Without masks this is an InputError unless ``require_masks=False`` (then all-False masks).
    """
    src = open_source(source)
    if require_masks and not src.has_masks:
        raise InputError("video has no masks", src.spec)
    count = src.num_frames if max_frames is None else min(max_frames, src.num_frames)
    height, width = size if size is not None else (src.height, src.width)
    # Preallocated so memory peaks at the final array, not at a list of frames plus its stack.
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    masks = np.zeros((count, height, width), dtype=bool)
    filled = 0
    for filled, frame in enumerate(src.iter_frames(size), start=1):
        frames[filled - 1] = frame
        if filled == count:
            break
    if filled < count:
        raise InputError(f"only {filled} of {count} frames could be read", src.spec)
    if src.has_masks:
        for index, mask in enumerate(src.iter_masks(size)):
            if index == count:
                break
            masks[index] = mask
    return frames, masks
