"""Every registered inpainting method through the one shared interface, on a tiny clip.

As ``test_models.py`` does for the model registry: a new method is covered here as soon as it is
registered; one that needs options to be quick (or at all) adds them to ``TINY``.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vilocal_dist.data.composed import compose_video
from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.base import Fill, Method, MethodConfig, MethodError
from vilocal_dist.inpaint.registry import BUILTIN, check_method_config, get_method, list_methods

FILL_SCRIPT = Path(__file__).parent / "plugins" / "fill_script.py"
TINY = {
    "iivi": {"preset": "tiny", "iters_recon": 2, "iters_reg": 0, "batch": 2},
    "intervi": {"preset": "tiny", "iterations": 2},
    "command": {"template": f"{sys.executable} {FILL_SCRIPT} {{frames_dir}} {{masks_dir}} {{out_dir}}"},
}


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    video = compose_video(0, 4, (32, 48))
    assert video.masks.any() and not video.masks.all()
    return video.frames, video.masks


@pytest.mark.parametrize("name", list_methods())
def test_every_method_fills_a_tiny_clip(name: str, clip, tmp_path: Path) -> None:
    frames, masks = clip
    result = get_method(name)(frames, masks, TINY.get(name), seed=1, progress=False, workdir=tmp_path)
    assert result.frames.shape == frames.shape and result.frames.dtype == np.uint8
    np.testing.assert_array_equal(result.frames[~masks], frames[~masks])  # known pixels untouched
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.metrics.values()), result.metrics
    # The record is the resolved config: every option of the method's config class, plus provenance.
    options = {f.name for f in dataclasses.fields(get_method(name).config_class)}
    assert result.config["method"] == name and result.config["seed"] == 1 and options <= set(result.config)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_has_a_frozen_config_class(name: str) -> None:
    method = get_method(name)
    assert method.name == name and issubclass(method.config_class, MethodConfig)
    config = check_method_config(name, TINY.get(name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.__setattr__(dataclasses.fields(config)[0].name, None)
    assert check_method_config(name, config) is config  # a built config passes through unchanged


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'telea'"):
        get_method("teela")
    with pytest.raises(ConfigError, match="did you mean 'intervi'"):
        check_method_config("intervii", None)
    with pytest.raises(ConfigError, match=r"flowprop: unknown option\(s\) \['radus'\] \(did you mean 'radius'\?\)"):
        check_method_config("flowprop", {"radus": 2})
    with pytest.raises(ConfigError, match="iivi: .*lambda_a"):
        check_method_config("iivi", {"lambda_a": -1})


def test_options_are_coerced_and_presets_sit_below_given_keys() -> None:
    config = check_method_config("intervi", {"preset": "tiny", "iterations": 1e3, "lr": 1})
    assert (config.iterations, config.lr, config.scales) == (1000, 1.0, 3)  # 3 from the tiny preset
    with pytest.raises(ConfigError, match="telea: option radius expects int"):
        check_method_config("telea", {"radius": 2.5})


def test_a_fill_of_the_wrong_shape_is_a_clear_error(clip) -> None:
    frames, masks = clip
    bad = Method("bad", MethodConfig, lambda frames, masks, config, **_: Fill(frames[:, :-1]))
    with pytest.raises(MethodError, match=r"method 'bad' returned uint8 \(4, 31, 48, 3\), expected"):
        bad(frames, masks)


def test_method_modules_do_not_import_the_registry() -> None:
    """No import circle: every built-in method module loads without the registry."""
    modules = sorted({m.fill.__module__ for m in BUILTIN.values()})
    code = f"import sys; {'; '.join(f'import {m}' for m in modules)}; print('vilocal_dist.inpaint.registry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "False" and "vilocal_dist.inpaint.iivi.fit" in modules
