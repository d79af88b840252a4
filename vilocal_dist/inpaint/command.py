"""The ``command`` method: inpaint with any external program, run once per video.

The program gets the video as two folders of PNGs and writes its result into a third:

* ``{frames_dir}/00000.png …``: the frames, 8-bit RGB;
* ``{masks_dir}/00000.png …``: the masks, 8-bit gray, 255 = hole to fill, 0 = known;
* ``{out_dir}``: empty; the program writes exactly one 8-bit RGB PNG per frame, same size, in
  frame order by file name (``00000.png …`` is simplest).

``template`` is split like a shell would (``shlex``) but no shell runs: each argument gets the
placeholders ``{frames_dir}``, ``{masks_dir}``, ``{out_dir}`` and ``{seed}`` replaced, so paths
with spaces stay one argument and nothing is interpreted. ``env`` adds ``KEY=VALUE`` words to
the program's environment. ``image`` runs the program in a container instead: the argv gets the
prefix ``RUNTIME run --rm --user UID:GID -v DIR:DIR -e KEY=VALUE … IMAGE``, where DIR is the
video's scratch folder mounted at the same path, so the placeholders stay valid inside.

The result is composited like every method's (the shared wrapper puts the known pixels back), so
a program that touches known pixels cannot change the forged video outside the mask; the metric
``command/known_changed`` is the fraction of known pixels it did change, for the record. A
non-zero exit, a timeout, or output of the wrong count, size or pixel type is a ``MethodError``
quoting the tail of the program's stderr; nothing is returned, so nothing is stored.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vilocal_dist.errors import InputError
from vilocal_dist.inpaint.base import Fill, Method, MethodConfig, MethodError
from vilocal_dist.video.io import image_header, read_image, write_png_folder

PLACEHOLDERS = ("{frames_dir}", "{masks_dir}", "{out_dir}", "{seed}")
RUNTIMES = ("docker", "podman")
STDERR_TAIL = 1500  # characters of the program's stderr quoted in an error


@dataclass(frozen=True)
class CommandConfig(MethodConfig):
    """An external program and how to run it (flat strings, so Tune and MLflow take them)."""

    template: str = ""  # e.g. "python /opt/fill.py {frames_dir} {masks_dir} {out_dir}"
    env: str = ""  # extra environment, "KEY=VALUE KEY2='a b'" (shell-style words)
    image: str = ""  # container image; "" = run the program directly
    runtime: str = "docker"  # container runtime used with image: docker | podman
    timeout_s: float = 0.0  # seconds before the program is killed; 0 = no limit

    def problems(self) -> list[str]:
        problems = []
        try:
            if not shlex.split(self.template):
                problems.append("template is required, e.g. template='python /abs/fill.py {frames_dir} {masks_dir} {out_dir}'")
            elif "{out_dir}" not in self.template:
                problems.append("template must pass {out_dir}, where the program writes its frames")
        except ValueError as exc:
            problems.append(f"template: {exc}")
        try:
            self.environment()
        except ValueError as exc:
            problems.append(f"env: {exc}")
        if self.runtime not in RUNTIMES:
            problems.append(f"runtime must be one of {list(RUNTIMES)}, got {self.runtime!r}")
        if self.timeout_s < 0:
            problems.append(f"timeout_s must be >= 0 (0 = no limit), got {self.timeout_s}")
        return problems

    def environment(self) -> dict[str, str]:
        """``env`` as a mapping; ValueError for a word that is not KEY=VALUE."""
        out = {}
        for word in shlex.split(self.env):
            key, sep, value = word.partition("=")
            if not sep or not key.isidentifier():
                raise ValueError(f"expected KEY=VALUE words, got {word!r}")
            out[key] = value
        return out

    def argv(self, scratch: Path, seed: int) -> list[str]:
        """The program's argv for one video in ``scratch`` (frames/, masks/, out/ inside)."""
        values = dict(zip(PLACEHOLDERS, (str(scratch / "frames"), str(scratch / "masks"), str(scratch / "out"), str(seed))))
        args = []
        for arg in shlex.split(self.template):
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            args.append(arg)
        if not self.image:
            return args
        # Same path inside the container, so the substituted placeholders stay valid there;
        # --user keeps the written files owned by us, so the scratch folder can be removed.
        prefix = [self.runtime, "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{scratch}:{scratch}"]
        for key, value in self.environment().items():
            prefix += ["-e", f"{key}={value}"]
        return [*prefix, self.image, *args]


def _tail(path: Path) -> str:
    """The end of the program's stderr on one line (lines joined by " | ")."""
    text = path.read_text(errors="replace").strip() if path.is_file() else ""
    text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return ("…" + text[-STDERR_TAIL:]) if len(text) > STDERR_TAIL else (text or "(no stderr)")


def _run(argv: list[str], config: CommandConfig, scratch: Path) -> None:
    """Run the program; a MethodError naming it and quoting its stderr when it fails."""
    env = None if config.image else {**os.environ, **config.environment()}
    stderr = scratch / "stderr.txt"
    with open(scratch / "stdout.txt", "wb") as out, open(stderr, "wb") as err:
        try:
            # Its own process group, so a timeout or an interrupted trial also ends its children.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True)
        except FileNotFoundError:
            raise MethodError(f"command: program {argv[0]!r} not found (template {config.template!r})") from None
        try:
            code = proc.wait(timeout=config.timeout_s or None)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):  # it may have ended just now
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise MethodError(f"command: {argv[0]!r} ran past timeout_s={config.timeout_s:g}; "
                                  f"stderr: {_tail(stderr)}") from None  # fmt: skip
            raise
    if code != 0:
        raise MethodError(f"command: {shlex.join(argv)} exited with status {code}; stderr: {_tail(stderr)}")


def _read_output(out_dir: Path, frames: np.ndarray, stderr: Path) -> np.ndarray:
    """The program's frames, checked against the input: count, size, 8-bit RGB."""
    files = sorted(out_dir.glob("*.png"))
    others = sorted(p.name for p in out_dir.iterdir() if p.suffix != ".png")
    where = "the program's output in {out_dir}"
    if len(files) != len(frames):
        extra = f" (and other files: {others[:3]})" if others else ""
        raise MethodError(f"command: {where} has {len(files)} PNG frames{extra}, expected {len(frames)}; "
                          f"stderr: {_tail(stderr)}")  # fmt: skip
    out = []
    for file in files:
        try:
            height, width, mode = image_header(file)
            frame = read_image(file)
        except InputError as exc:
            raise MethodError(f"command: {where}: {exc}") from None
        if (height, width) != frames.shape[1:3]:
            raise MethodError(f"command: {where}: {file.name} is {height}x{width}, expected "
                              f"{frames.shape[1]}x{frames.shape[2]} (HxW) like the input")  # fmt: skip
        if mode != "RGB":
            raise MethodError(f"command: {where}: {file.name} has pixel mode {mode}, expected 8-bit RGB")
        out.append(frame)
    return np.stack(out)


def _fill(frames: np.ndarray, masks: np.ndarray, config: CommandConfig, *, seed: int, progress: bool,
          workdir: Path | None) -> Fill:  # fmt: skip
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="vilocal-command-", dir=workdir)).resolve()
    try:
        write_png_folder(scratch / "frames", iter(frames))
        write_png_folder(scratch / "masks", iter(masks))
        (scratch / "out").mkdir()
        _run(config.argv(scratch, seed), config, scratch)
        pred = _read_output(scratch / "out", frames, scratch / "stderr.txt")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    known = ~masks
    changed = np.any(pred != frames, axis=-1) & known
    return Fill(pred, metrics={"command/known_changed": float(changed.sum() / max(int(known.sum()), 1))})


COMMAND = Method("command", CommandConfig, _fill, "any external program, once per video (--set template=…)")
