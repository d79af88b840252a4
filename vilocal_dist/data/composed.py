"""Built-in composed videos: real photographs, a moving camera, real-shaped moving objects.

Each video is a photograph shipped with scikit-image, filmed by a smooth random camera (pan,
zoom, small rotation), with one or two objects cut from *other* photographs along object-shaped
silhouettes (scikit-image's horse, or a smooth random blob) gliding along smooth paths. The
objects are the "holes" (masks); the clean camera view of every frame is kept as ground truth,
so removing the objects by inpainting can be scored. Everything is a function of the seed.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vilocal_dist.video.io import write_png_folder

#: skimage.data photographs used as scenes and as object textures (all bundled, no download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "motorcycle")
COVERAGE = (0.04, 0.12)  # total object area per frame, as a fraction of the frame
_MAX_ROTATION_DEG = 3.0
_MAX_ZOOM = 0.06
_MARGIN = 1.4  # the scene photo is this much larger than the view, leaving room to pan


@dataclass(frozen=True)
class ComposedVideo:
    """frames/backgrounds uint8 T×H×W×3 RGB, masks bool T×H×W (True = object = hole)."""

    frames: np.ndarray
    masks: np.ndarray
    backgrounds: np.ndarray
    name: str
    meta: dict


#: The bundled files behind those skimage.data functions. Read directly with OpenCV because
#: importing skimage.data/skimage.io costs about a second (SciPy), longer than composing a video.
_PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "immunohistochemistry": "ihc.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "motorcycle": "motorcycle_left.png",
    "horse": "horse.png",
}


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scikit-image is required for the built-in composed videos")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as uint8 H×W×3 RGB (the same pixels skimage.data returns)."""
    path = _skimage_data_dir() / _PHOTO_FILES[name]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"scikit-image data file missing: {path}")
    image = np.ascontiguousarray(image[..., ::-1])
    image.setflags(write=False)
    return image


@lru_cache(maxsize=1)
def _horse() -> np.ndarray:
    """skimage.data.horse's silhouette (uint8 0/1, the horse = 1), cropped to its bounding box."""
    shape = (cv2.cvtColor(_photo("horse"), cv2.COLOR_RGB2GRAY) < 128).astype(np.uint8)  # black horse on white
    rows, cols = np.nonzero(shape)
    return shape[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _blob(rng: np.random.Generator, resolution: int = 192) -> np.ndarray:
    """A smooth star-shaped random silhouette (uint8 0/1): radius = low-order Fourier series."""
    angles = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    radius = np.ones_like(angles)
    for order in range(2, 6):
        radius += rng.uniform(0, 0.35 / order) * np.cos(order * angles + rng.uniform(0, 2 * np.pi))
    radius *= rng.uniform(0.6, 1.0) ** np.abs(np.sin(angles))  # random elongation
    radius = np.maximum(radius, 0.3) * resolution * 0.45
    points = np.stack([resolution / 2 + radius * np.cos(angles), resolution / 2 + radius * np.sin(angles)], axis=1)
    canvas = np.zeros((resolution, resolution), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    rows, cols = np.nonzero(canvas)
    return canvas[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _smooth_path(rng: np.random.Generator, num_frames: int, amplitude: float) -> np.ndarray:
    """A smooth random 1-D signal in [-amplitude, amplitude]: two slow sinusoids over the video."""
    s = np.linspace(0.0, 1.0, num_frames)
    signal = np.zeros(num_frames)
    for _ in range(2):
        signal += np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * s + rng.uniform(0, 2 * np.pi))
    return amplitude * signal / 2


def _resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    shrinking = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _camera(
    rng: np.random.Generator, scene_hw: tuple[int, int], size: tuple[int, int], num_frames: int
) -> list[np.ndarray]:
    """Per-frame 2×3 affine maps from output pixels to scene pixels (pan, zoom, rotation)."""
    (sh, sw), (h, w) = scene_hw, size
    pan_x = _smooth_path(rng, num_frames, 0.35 * (sw - w) / 2)
    pan_y = _smooth_path(rng, num_frames, 0.35 * (sh - h) / 2)
    zoom = 1.0 + _smooth_path(rng, num_frames, _MAX_ZOOM)
    angle = np.deg2rad(_smooth_path(rng, num_frames, _MAX_ROTATION_DEG))
    maps = []
    for t in range(num_frames):
        cos, sin = np.cos(angle[t]) / zoom[t], np.sin(angle[t]) / zoom[t]
        linear = np.array([[cos, -sin], [sin, cos]])
        centre = np.array([sw / 2 + pan_x[t], sh / 2 + pan_y[t]])
        maps.append(np.hstack([linear, (centre - linear @ np.array([w / 2, h / 2]))[:, None]]))
    return maps


def _object_track(
    rng: np.random.Generator, shape_hw: tuple[int, int], scale: float, size: tuple[int, int], num_frames: int
) -> list[np.ndarray]:
    """Per-frame 2×3 affine maps from object-canvas pixels to output pixels along a smooth path."""
    h, w = size
    # Keep the whole object inside the frame whatever its rotation: bound by its half-diagonal.
    reach = 0.5 * scale * float(np.hypot(*shape_hw))
    low = np.array([min(reach, w / 2), min(reach, h / 2)])
    high = np.array([w, h]) - low
    start, end = rng.uniform(low, high), rng.uniform(low, high)
    bend = _smooth_path(rng, num_frames, 0.15 * min(h, w))
    s = np.linspace(0.0, 1.0, num_frames)
    direction = end - start
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-9)
    angle = np.deg2rad(rng.uniform(-20, 20) + _smooth_path(rng, num_frames, 8.0))
    maps = []
    for t in range(num_frames):
        centre = np.clip(start + s[t] * direction + bend[t] * np.sin(np.pi * s[t]) * normal, low, high)
        cos, sin = scale * np.cos(angle[t]), scale * np.sin(angle[t])
        linear = np.array([[cos, -sin], [sin, cos]])
        origin = np.array([shape_hw[1] / 2, shape_hw[0] / 2])
        maps.append(np.hstack([linear, (centre - linear @ origin)[:, None]]))
    return maps


def compose_video(
    seed: int | Sequence[int], num_frames: int, size: tuple[int, int] = (240, 432), *, name: str | None = None
) -> ComposedVideo:
    """One composed video, a pure function of ``seed`` (an int or a tuple of ints).

    Objects cover about 4–12 % of each frame; ``frames`` equals ``backgrounds`` outside ``masks``.
    """
    if num_frames < 1 or min(size) < 16:
        raise ValueError(f"need at least one frame of at least 16×16 pixels, got {num_frames} of {size}")
    h, w = size
    rng = np.random.default_rng(seed)
    scene_name, *texture_names = (PHOTOS[i] for i in rng.permutation(len(PHOTOS))[:3])
    photo = _photo(scene_name)
    fit = _MARGIN * max(h / photo.shape[0], w / photo.shape[1])
    scene = _resize_to(photo, round(photo.shape[0] * fit), round(photo.shape[1] * fit))
    camera = _camera(rng, scene.shape[:2], size, num_frames)

    num_objects = int(rng.integers(1, 3))
    coverage = rng.uniform(*COVERAGE)
    objects = []
    for index in range(num_objects):
        shape = _horse() if rng.random() < 0.5 else _blob(rng)
        if rng.random() < 0.5:
            shape = shape[:, ::-1]
        share = coverage / num_objects
        scale = float(np.sqrt(share * h * w / shape.sum()))
        texture_photo = _photo(texture_names[index])
        # The texture is a random window of another photograph at the silhouette's aspect ratio.
        aspect = shape.shape[1] / shape.shape[0]  # width / height
        crop_h = int(min(texture_photo.shape[0], texture_photo.shape[1] / aspect) * rng.uniform(0.5, 1.0))
        crop_w = max(1, round(crop_h * aspect))
        top = int(rng.integers(0, texture_photo.shape[0] - crop_h + 1))
        left = int(rng.integers(0, texture_photo.shape[1] - crop_w + 1))
        texture = _resize_to(texture_photo[top : top + crop_h, left : left + crop_w], *shape.shape)
        track = _object_track(rng, shape.shape, scale, size, num_frames)
        objects.append((np.ascontiguousarray(shape) * 255, texture, track))

    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    backgrounds = np.empty_like(frames)
    masks = np.zeros((num_frames, h, w), dtype=bool)
    for t in range(num_frames):
        backgrounds[t] = cv2.warpAffine(
            scene, camera[t], (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101
        )
        frame = backgrounds[t].copy()
        for shape, texture, track in objects:
            inside = cv2.warpAffine(shape, track[t], (w, h), flags=cv2.INTER_LINEAR) >= 128
            moved = cv2.warpAffine(texture, track[t], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            frame[inside] = moved[inside]
            masks[t] |= inside
        frames[t] = frame
    seeds = np.atleast_1d(seed).tolist()
    meta = {"seed": seeds, "scene": scene_name, "objects": num_objects, "coverage": round(coverage, 4)}
    return ComposedVideo(frames, masks, backgrounds, name or f"composed-{'-'.join(str(s) for s in seeds)}", meta)


def write_composed_dataset(
    out: str | Path,
    videos: int,
    frames: int,
    size: tuple[int, int] = (240, 432),
    seed: int = 0,
    *,
    progress: bool = True,
) -> list[Path]:
    """Write ``videos`` composed videos in DAVIS layout under ``out``; returns their frame folders.

    Layout (folder name ``480p`` kept for DAVIS compatibility whatever the size):
    ``JPEGImages/480p/<seq>/00000.png`` (lossless PNG, not jpg), ``Annotations/480p/<seq>`` (0/255
    masks), ``Backgrounds/480p/<seq>`` (clean frames), ``composed.json`` (parameters). Same
    arguments give byte-identical files.
    """
    out = Path(out)
    written = []
    index_entries = []
    for index in tqdm(range(videos), desc="compose", unit="video", disable=not progress):
        name = f"composed-s{seed}-{index:03d}"
        video = compose_video((seed, index), frames, size, name=name)
        write_png_folder(out / "Annotations" / "480p" / name, video.masks)
        write_png_folder(out / "Backgrounds" / "480p" / name, video.backgrounds)
        # Frames last: a sequence counts as present once its JPEGImages folder exists.
        written.append(write_png_folder(out / "JPEGImages" / "480p" / name, video.frames))
        index_entries.append({"name": name, **video.meta})
    listing = {"seed": seed, "videos": videos, "frames": frames, "size": list(size), "sequences": index_entries}
    tmp = out / ".composed.json.tmp"
    tmp.write_text(json.dumps(listing, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / "composed.json")
    return written


__all__ = ["ComposedVideo", "PHOTOS", "compose_video", "write_composed_dataset"]
