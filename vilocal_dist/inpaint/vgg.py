"""Frozen VGG-16/19 feature extractors for perceptual losses, from a local weights file only.

Weights are a state dict in torchvision's layout (``features.0.weight``, ``features.0.bias``, …;
``classifier.*`` keys are ignored), named by a path or ``$VILOCAL_VGG19_WEIGHTS`` /
``$VILOCAL_VGG16_WEIGHTS``. Nothing is ever downloaded. Without weights the caller must opt into a
fixed-seed random VGG (``random_seed``), which is a different loss from the papers' and should be
recorded as such (``describe()``).

Layer names follow the usual convention: ``conv{block}_{i}``, ``relu{block}_{i}``, ``pool{block}``.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.paths import vgg19_weights

# Output channels per conv, "M" = 2×2 max-pool; the torchvision ``features`` index of every layer
# follows from this list (conv, relu, conv, relu, pool, …), which is what makes the keys match.
_CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_table(arch: str) -> list[tuple[str, int | str]]:
    """``[(name, channels or 'M')]`` in torchvision ``features`` order (index = position)."""
    table: list[tuple[str, int | str]] = []
    block, conv_i = 1, 0
    for item in _CFGS[arch]:
        if item == "M":
            table.append((f"pool{block}", "M"))
            block, conv_i = block + 1, 0
        else:
            conv_i += 1
            table.append((f"conv{block}_{conv_i}", item))
            table.append((f"relu{block}_{conv_i}", item))
    return table


def layer_names(arch: str) -> list[str]:
    """Every feature layer name of ``arch`` in forward order."""
    _check_arch(arch)
    return [name for name, _ in _layer_table(arch)]


def _check_arch(arch: str) -> None:
    if arch not in _CFGS:
        raise ConfigError(f"unknown VGG architecture {arch!r}; known: {sorted(_CFGS)}")


def _expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    in_ch = 3
    for index, (name, item) in enumerate(_layer_table(arch)):
        if name.startswith("conv"):
            assert isinstance(item, int)
            shapes[f"features.{index}.weight"] = (item, in_ch, 3, 3)
            shapes[f"features.{index}.bias"] = (item,)
            in_ch = item
    return shapes


def default_weights(arch: str) -> Path | None:
    """The weights file named by the environment for ``arch``, if any."""
    _check_arch(arch)
    if arch == "vgg19":
        return vgg19_weights()
    env = os.environ.get("VILOCAL_VGG16_WEIGHTS")
    return Path(env).expanduser().resolve() if env else None


def load_vgg_state(arch: str, path: str | Path) -> dict[str, torch.Tensor]:
    """Read and validate a torchvision-layout state dict; errors name the file and the problem."""
    _check_arch(arch)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{arch} weights file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message here is a page advising weights_only=False: never for a weights file from elsewhere.
        raise InputError(f"cannot read {arch} weights: not a torch file of plain tensors (corrupt, or holds "
                         "pickled objects)", path) from None
    except Exception as exc:  # any other format failure is a bad file, not a bug here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot read {arch} weights as a torch state dict ({first})", path) from exc
    if not isinstance(state, dict):
        raise InputError(f"{arch} weights must be a state dict, got {type(state).__name__}", path)
    features = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    expected = _expected_shapes(arch)
    missing = sorted(set(expected) - set(features), key=_key_order)
    unexpected = sorted(set(features) - set(expected), key=_key_order)
    if missing or unexpected:
        raise InputError(
            f"not a torchvision {arch} state dict: missing keys {missing[:4]}{'…' if len(missing) > 4 else ''}, "
            f"unexpected keys {unexpected[:4]}{'…' if len(unexpected) > 4 else ''}",
            path,
        )
    for key, shape in expected.items():
        if not isinstance(features[key], torch.Tensor) or tuple(features[key].shape) != shape:
            got = tuple(features[key].shape) if isinstance(features[key], torch.Tensor) else type(features[key])
            raise InputError(f"{arch} weight {key} has shape {got}, expected {shape}", path)
    return {k: features[k].float() for k in expected}


def _key_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1, key)


class VGGFeatures(nn.Module):
    """Frozen VGG trunk truncated after the deepest requested layer.

    ``forward(x)`` takes images ``(B, 3, H, W)`` in [0, 1] (ImageNet normalisation happens inside)
    and returns ``{layer_name: (B, C, H/s, W/s)}`` for every name in ``layers``.
    Exactly one of ``weights`` (a file) or ``random_seed`` (opt-in random init) is used; with
    neither, the environment's default file is tried, and a ConfigError explains the options.
    """

    def __init__(
        self,
        arch: str = "vgg19",
        layers: tuple[str, ...] = ("relu3_4",),
        *,
        weights: str | Path | None = None,
        random_seed: int | None = None,
    ) -> None:
        super().__init__()
        _check_arch(arch)
        names = layer_names(arch)
        unknown = [n for n in layers if n not in names]
        if not layers or unknown:
            raise ConfigError(f"unknown {arch} layer(s) {unknown or '(none given)'}; known: {', '.join(names)}")
        self.arch, self.layers = arch, tuple(layers)
        depth = max(names.index(n) for n in layers) + 1
        self.features = _build_trunk(arch, depth)
        if weights is None and random_seed is None:
            weights = default_weights(arch)
        if weights is not None:
            state = load_vgg_state(arch, weights)
            key_map = _state_key_map(self.features)
            self.features.load_state_dict({own: state[f"features.{tv}"] for own, tv in key_map.items()})
            self.source = f"file({Path(weights).resolve()})"
        elif random_seed is not None:
            _random_init(self.features, random_seed)
            self.source = f"random(seed={random_seed})"
        else:
            env = "VILOCAL_VGG19_WEIGHTS" if arch == "vgg19" else "VILOCAL_VGG16_WEIGHTS"
            raise ConfigError(
                f"no {arch} weights: give a local torchvision-layout state dict (a weights path option or "
                f"${env}); nothing is downloaded. To run without pretrained weights, opt into a fixed-seed "
                "random VGG (e.g. random_vgg=True), which is not the papers' perceptual loss"
            )
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        # Always eval: the trunk is a fixed loss network, whatever its owner's mode.
        return super().train(False)

    def describe(self) -> str:
        """Provenance string, e.g. ``'random(seed=0)'`` or ``'file(/path/vgg19.pth)'``."""
        return self.source

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        wanted, out = set(self.layers), {}
        for name, layer in self.features.named_children():
            x = layer(x)
            if name in wanted:
                out[name] = x
        return out


def _build_trunk(arch: str, depth: int) -> nn.Sequential:
    """The first ``depth`` layers; child names are the layer names, order = torchvision index."""
    layers: dict[str, nn.Module] = {}
    in_ch = 3
    for name, item in _layer_table(arch)[:depth]:
        if name.startswith("conv"):
            assert isinstance(item, int)
            layers[name] = nn.Conv2d(in_ch, item, 3, padding=1)
            in_ch = item
        elif name.startswith("relu"):
            layers[name] = nn.ReLU(inplace=False)  # not in-place: earlier layers may be returned
        else:
            layers[name] = nn.MaxPool2d(2, 2)
    trunk = nn.Sequential()
    for name, module in layers.items():
        trunk.add_module(name, module)
    return trunk


def _state_key_map(trunk: nn.Sequential) -> dict[str, str]:
    """Our parameter names (``conv1_1.weight``) → torchvision's (``0.weight``, under ``features.``)."""
    return {
        f"{name}.{p}": f"{i}.{p}"
        for i, (name, module) in enumerate(trunk.named_children())
        if isinstance(module, nn.Conv2d)
        for p in ("weight", "bias")
    }


def _random_init(trunk: nn.Sequential, seed: int) -> None:
    """He-normal conv weights, zero bias (torchvision's init) from a private fixed-seed generator."""
    gen = torch.Generator().manual_seed(seed)
    for module in trunk:
        if isinstance(module, nn.Conv2d):
            std = (2.0 / (module.out_channels * 9)) ** 0.5
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                module.bias.zero_()


@functools.lru_cache(maxsize=4)
def _cached(
    arch: str, layers: tuple[str, ...], weights: str | None, mtime: float, seed: int | None, device: str
) -> VGGFeatures:
    return VGGFeatures(arch, layers, weights=weights, random_seed=seed).to(device)


def load_vgg_features(
    arch: str = "vgg19",
    weights: str | Path | None = None,
    random_seed: int | None = None,
    layers: tuple[str, ...] = ("relu3_4",),
    device: str | torch.device = "cpu",
) -> VGGFeatures:
    """A shared (cached per process) frozen ``VGGFeatures``: built once however many losses use it."""
    if weights is None and random_seed is None:
        weights = default_weights(arch)
    path = None if weights is None else str(Path(weights).resolve())
    mtime = Path(path).stat().st_mtime if path and Path(path).is_file() else 0.0
    return _cached(arch, tuple(layers), path, mtime, None if path else random_seed, str(torch.device(device)))

