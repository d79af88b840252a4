"""A loopback MLflow tracking server on a SQLite file, for benchmarks and tests that need a real one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class LocalServer:
    """An MLflow tracking server on 127.0.0.1 over ``db`` (default ``root/mlflow.db``) and
    ``root/artifacts``; ``stop()`` kills it (its whole process group) and ``start()`` brings it
    back on the same port and store."""

    def __init__(self, root: str | Path, db: str | Path | None = None) -> None:
        self.root = Path(root)
        self.db, self.artifacts = Path(db) if db else self.root / "mlflow.db", self.root / "artifacts"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, within_s: float = 600.0) -> None:
        """Start and wait for ``/health`` (a loaded 2-core machine takes a minute to import it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
                 "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own process group
            )  # fmt: skip
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the MLflow tracking server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the MLflow tracking server at {self.uri} did not answer /health within {within_s:.0f} s")

    def stop(self) -> None:
        """SIGKILL the server and its workers (as a crashed node would go)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
