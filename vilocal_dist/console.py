"""The console is for people: one line per phase, progress bars, a summary; the rest goes to a file.

``setup`` (called once by the CLI) sends every log record (Python logging, Ray's loggers, library
warnings) to ``<home>/logs/<command>-<timestamp>.log`` and shows on the console only what a user
acts on: this package's INFO lines and anyone's WARNING and above. Python ``warnings`` from
libraries (deprecations, torch.export notes) go to the file only. Without ``--verbose``, Ray Tune's
per-trial tables and the echo of Ray worker output are off (``tune_verbosity``,
``ray_init_options``); the workers' own logs stay in Ray's session folder, named in the log file.

Library code calls ``phase`` and ``bar``; without ``setup`` (tests, notebooks) they still work.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

#: Set by ``setup`` for this process and inherited by subprocesses (Ray workers, `vilocal` children).
VERBOSE_ENV = "VILOCAL_VERBOSE"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STATE: dict[str, Any] = {"log_file": None, "handlers": []}


def is_verbose() -> bool:
    """Whether the user asked for everything (``vilocal --verbose``)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def log_file() -> Path | None:
    """The file this process's full log goes to (None before ``setup``)."""
    return _STATE["log_file"]


#: Logger for the log file only (the console filter drops it).
file_log = logging.getLogger("vilocal.file")


class _ConsoleFilter(logging.Filter):
    """This package's INFO lines, everyone's warnings and errors; not Ray's internal notices
    (token auth on a local head, resource hints) below ERROR: nothing a user acts on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("ray._private") or record.name == "vilocal.file":
            return record.levelno >= logging.ERROR
        return record.levelno >= logging.WARNING or record.name.startswith("vilocal_dist")


def setup(command: str, verbose: bool, log_dir: Path | None) -> Path | None:
    """Route logging for one CLI command. With ``log_dir`` (the long commands) everything also goes
    to ``log_dir/<command>-<time>-<pid>.log``, returned."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    # MLflow draws its own download/upload bars; the console has one bar at a time, ours.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow and Ray attach their own stderr handlers (Ray's with propagate=False): ours instead.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    # Ray 2.60's new Tune output prints its experiment box even at verbose=0; the classic
    # reporter is silent at 0. (Only ours is undone by a later --verbose setup in this process.)
    if not verbose and "RAY_AIR_NEW_OUTPUT" not in os.environ:
        os.environ["RAY_AIR_NEW_OUTPUT"] = _STATE["air_output"] = "0"
    elif verbose and _STATE.pop("air_output", None):
        os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
    root = logging.getLogger()
    for handler in _STATE["handlers"]:  # an earlier setup in this process (tests call main() often)
        root.removeHandler(handler)
        handler.close()
    level = logging.DEBUG if verbose else logging.INFO
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        console.addFilter(_ConsoleFilter())
    handlers: list[logging.Handler] = [console]
    path = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setLevel(level)
        file_handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        handlers.append(file_handler)
        import optuna
        import ray._private.log  # Ray configures its logger on import: do it now, then adopt it

        ray._private.log.generate_logging_config()
        optuna.logging.disable_default_handler()  # "A new study created in memory …" per Tuner
        optuna.logging.enable_propagation()
    root.setLevel(level)
    for handler in handlers:
        root.addHandler(handler)
    _STATE.update(log_file=path, handlers=handlers)
    _adopt_logger("ray")
    _adopt_logger("mlflow")  # when imported before this setup, it has its own stderr handler
    # Library warnings (deprecations, tracing notes) are for developers: in the file, once each.
    logging.captureWarnings(False)  # re-hook: someone (pytest, a notebook) may have replaced showwarning since
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.propagate = False
    for handler in list(warnings_logger.handlers):
        warnings_logger.removeHandler(handler)
    for handler in (handlers if verbose else handlers[1:]) or [logging.NullHandler()]:
        warnings_logger.addHandler(handler)
    file_log.info("vilocal %s", " ".join(sys.argv[1:]))
    return path


def after_ray_init() -> None:
    """Ray's init re-attaches a stderr handler to the ``ray`` logger: route it through ours again,
    and name the folder holding the workers' own logs in the log file."""
    import ray

    if not _STATE["handlers"]:
        return
    _adopt_logger("ray")
    try:
        session = ray._private.worker._global_node.get_session_dir_path()  # absent when attached via Ray Client
        file_log.info("Ray worker logs: %s/logs", session)
    except AttributeError:
        pass


def _adopt_logger(name: str) -> None:
    lib = logging.getLogger(name)
    for handler in list(lib.handlers):
        lib.removeHandler(handler)
    lib.propagate = True
    lib.setLevel(logging.DEBUG if is_verbose() else logging.INFO)


def ray_init_options() -> dict[str, Any]:
    """``ray.init`` keywords: worker output echoed to the console only with ``--verbose`` (or
    when no CLI set up the console: a script or test keeps Ray's default)."""
    return {"log_to_driver": is_verbose() or not _STATE["handlers"]}


def tune_verbosity() -> int | None:
    """``tune.RunConfig(verbose=…)``: silent (the trial bar replaces the tables), Tune's default
    tables with ``--verbose``."""
    return None if is_verbose() else 0


def phase(text: str) -> None:
    """One line saying what starts now (also in the log file)."""
    print(text, flush=True)
    file_log.info("phase: %s", text)


def bar(total: int | None, desc: str, unit: str, initial: int = 0) -> tqdm:
    """A progress bar on stderr with counts and ETA. Redirected output gets a refresh at most
    every 30 s, so a log of a long run stays readable."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 30.0, leave=True)
