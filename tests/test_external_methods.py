"""External inpainting methods: the `command` method (any program, once per video) and plugins
(pip-installed packages with a ``vilocal_dist.inpaint_methods`` entry point), down to a forge
through Ray Tune. The container-image form of `command` needs docker or podman and is checked
only as the argv it builds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from vilocal_dist.cli.main import main
from vilocal_dist.data.composed import compose_video
from vilocal_dist.data.manifest import ForgedDataset
from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint import registry
from vilocal_dist.inpaint.base import MethodError
from vilocal_dist.inpaint.command import CommandConfig

PLUGINS = Path(__file__).parent / "plugins"
REPO = Path(__file__).parents[1]
TEMPLATE = f"{sys.executable} {PLUGINS / 'fill_script.py'} {{frames_dir}} {{masks_dir}} {{out_dir}}"
SOURCE = "composed:5:4:32x48"


def command_cfg(**extra) -> dict:
    return {"template": TEMPLATE, **extra}


# ----------------------------------------------------------------------------- command


def test_command_runs_the_program_and_checks_its_output() -> None:
    video = compose_video(5, 4, (32, 48))
    result = registry.get_method("command")(video.frames, video.masks, command_cfg(), progress=False)
    np.testing.assert_array_equal(result.frames[~video.masks], video.frames[~video.masks])
    for t in range(4):  # the script's fill: the mean known colour of that frame
        hole, known = video.masks[t], ~video.masks[t]
        expected = np.rint(video.frames[t][known].mean(axis=0))
        assert np.abs(result.frames[t][hole].astype(float) - expected).max() <= 1
    assert result.metrics == {"command/known_changed": 0.0}
    assert result.config["template"] == TEMPLATE and result.config["method"] == "command"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"env": "FILL_MODE=fail"}, r"exited with status 3; stderr: fill_script: mode fail \| fill_script: model weights missing"),
        ({"env": "FILL_MODE=wrong-size"}, r"00000\.png is 34x48, expected 32x48 \(HxW\)"),
        ({"env": "FILL_MODE=sleep", "timeout_s": 8}, r"ran past timeout_s=8; stderr: fill_script: mode sleep"),
        ({"template": "no-such-program-xyz {out_dir}"}, r"program 'no-such-program-xyz' not found"),
        ({"template": f"{sys.executable} -c pass {{out_dir}}"}, r"has 0 PNG frames, expected 4"),
    ],
)
def test_a_failing_program_is_a_clear_error_and_nothing_is_stored(tmp_path: Path, extra: dict, message: str) -> None:
    from vilocal_dist.engines.forge import forge_video

    with pytest.raises(MethodError, match=message) as caught:
        forge_video(SOURCE, "command", tmp_path, cfg=command_cfg(**extra), split="train")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 2500
    assert ForgedDataset(tmp_path).records() == []
    work = tmp_path / ".work"
    assert [p for p in work.rglob("*") if not p.is_dir()] == []  # the scratch folders are gone


def test_command_options_are_checked_before_anything_runs() -> None:
    check = registry.check_method_config
    with pytest.raises(ConfigError, match="command: template is required"):
        check("command", None)
    with pytest.raises(ConfigError, match=r"must pass \{out_dir\}"):
        check("command", {"template": "fill {frames_dir}"})
    with pytest.raises(ConfigError, match="template: No closing quotation"):
        check("command", {"template": "fill 'a {out_dir}"})
    with pytest.raises(ConfigError, match="env: expected KEY=VALUE words, got 'oops'"):
        check("command", command_cfg(env="A=1 oops"))
    with pytest.raises(ConfigError, match="timeout_s must be >= 0"):
        check("command", command_cfg(timeout_s=-1))


def test_placeholders_are_substituted_per_argument_and_image_is_an_argv_prefix() -> None:
    scratch = Path("/scratch/my video")
    config = CommandConfig(template="fill --in={frames_dir} '{masks_dir}' {out_dir} --seed {seed} '$HOME;ls'",
                           env="OMP_NUM_THREADS=2 NOTE='a b'")  # fmt: skip
    argv = ["fill", "--in=/scratch/my video/frames", "/scratch/my video/masks", "/scratch/my video/out", "--seed", "7", "$HOME;ls"]
    assert config.argv(scratch, 7) == argv
    assert config.environment() == {"OMP_NUM_THREADS": "2", "NOTE": "a b"}
    boxed = CommandConfig(template=config.template, env=config.env, image="ghcr.io/me/inpainter:1", runtime="podman")
    user = f"{os.getuid()}:{os.getgid()}"
    assert boxed.argv(scratch, 7) == [
        "podman", "run", "--rm", "--user", user, "-v", f"{scratch}:{scratch}",
        "-e", "OMP_NUM_THREADS=2", "-e", "NOTE=a b", "ghcr.io/me/inpainter:1", *argv,
    ]  # fmt: skip


def test_cli_inpaint_reports_a_failing_program_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    template = f"template={TEMPLATE}"
    rc = main(["inpaint", SOURCE, "--out", str(out), "--method", "command", "--set", template, "--set", "env=FILL_MODE=fail", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "exited with status 3" in err and "model weights missing" in err
    assert not (out / "result.json").exists()


# ----------------------------------------------------------------------------- plugins


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """The demo plugin pip-installed into a fresh folder, plus two broken plugins beside it."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "demo"
    shutil.copytree(PLUGINS / "vilocal_plugin_demo", source)  # pip builds in the source tree
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, timeout=600)  # fmt: skip
    broken = target / "vilocal_plugin_broken-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: vilocal-plugin-broken\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text(
        "[vilocal_dist.inpaint_methods]\nghost = no_such_module_xyz:METHOD\nnotamethod = os.path:join\ntelea = os.path:join\n"
    )
    return target


@pytest.fixture()
def with_plugins(plugin_dir: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    registry.plugins.cache_clear()
    yield plugin_dir
    registry.plugins.cache_clear()
    sys.modules.pop("vilocal_plugin_demo", None)


def test_plugins_join_the_registry_and_broken_ones_are_one_line_each(with_plugins, capsys) -> None:
    loaded = registry.load_plugins(registry.BUILTIN)
    assert list(loaded.methods) == ["meanfill"]
    assert loaded.broken == {
        "ghost": "inpainting plugin 'ghost' (no_such_module_xyz:METHOD from vilocal-plugin-broken 0.1) failed to load: "
                 "ModuleNotFoundError: No module named 'no_such_module_xyz'",
        "notamethod": "inpainting plugin 'notamethod' (os.path:join from vilocal-plugin-broken 0.1) is a function, "
                      "not a vilocal_dist.inpaint.base.Method",
        "telea": "inpainting plugin 'telea' (os.path:join from vilocal-plugin-broken 0.1) is a function, "
                 "not a vilocal_dist.inpaint.base.Method",
    }  # fmt: skip
    assert {"telea", "ns", "flowprop", "iivi", "intervi", "command", "meanfill"} == set(registry.list_methods())
    assert registry.get_method("telea") is registry.BUILTIN["telea"]  # a plugin cannot shadow a built-in
    with pytest.raises(ConfigError, match="^inpainting plugin 'ghost' .* failed to load"):
        registry.get_method("ghost")

    assert main(["inpaint", "x", "--out", "unused", "--method", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("meanfill ") for line in lines) and sum(line.startswith("(unusable) ") for line in lines) == 3


def test_a_plugin_method_works_like_a_builtin(with_plugins, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match=r"meanfill: shade must be in \[0, 255\], got 300"):
        registry.check_method_config("meanfill", {"shade": 300})
    with pytest.raises(ConfigError, match="did you mean 'shade'"):
        registry.check_method_config("meanfill", {"shad": 3})
    assert main(["inpaint", SOURCE, "--out", str(tmp_path), "--method", "meanfill", "--set", "shade=2", "--quiet"]) == 0
    assert '"shade": 2' in (tmp_path / "result.json").read_text()
    assert main(["inpaint", SOURCE, "--out", str(tmp_path), "--method", "ghost", "--quiet"]) == 2
    assert "'ghost' (no_such_module_xyz:METHOD" in capsys.readouterr().err


# ----------------------------------------------------------------------------- through Ray Tune


@pytest.mark.ray
@pytest.mark.slow
def test_forge_with_a_plugin_and_a_command_through_ray_tune(plugin_dir: Path, tmp_path: Path) -> None:
    """`vilocal forge` in a fresh process whose Ray workers see the plugin only via PYTHONPATH."""
    out = tmp_path / "forged"
    ray_tmp = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(REPO)]), "VILOCAL_HOME": str(tmp_path / "runs"),
           "RAY_ADDRESS": "local", "RAY_TMPDIR": str(ray_tmp)}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("VILOCAL_STORAGE", None)
    cmd = [sys.executable, "-m", "vilocal_dist.cli.main", "forge", "--composed", "1", "--frames", "4", "--size", "32x48", "--methods", "meanfill,command",
           "--set", f"command.template={TEMPLATE}", "--set", "meanfill.shade=1", "--out", str(out),
           "--num-cpus", "2", "--retries", "0"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["method"]: r for r in ForgedDataset(out).records()}
    assert set(records) == {"meanfill", "command"}
    assert records["meanfill"]["config"]["shade"] == 1 and records["command"]["config"]["template"] == TEMPLATE
    for record in records.values():
        assert len(list((out / record["path"] / "frames").glob("*.png"))) == 4


@pytest.mark.ray
def test_a_failing_command_fails_its_forge_trial_and_stores_nothing(ray_local, mlflow_home, tmp_path: Path) -> None:
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs

    out = tmp_path / "forged"
    videos = expand_sources([], composed=1, frames=4, size=(32, 48), seed=5)
    jobs = plan_jobs(videos, ["command"], method_cfgs={"command": command_cfg(env="FILL_MODE=wrong-size")})
    summary = forge(jobs, ForgeOptions(out=str(out), retries=0))
    assert summary.failed == [jobs[0]["id"]] and ForgedDataset(out).records() == []
    errors = "".join(p.read_text() for p in Path(summary.experiment_path).rglob("error.txt"))
    assert "is 34x48, expected 32x48 (HxW)" in errors
