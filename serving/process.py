"""Running a server as a child process, for the benchmark and the live tests.

`bentoml serve` starts an arbiter that starts the workers; stopping the server stops that whole
tree of processes, and nothing else. The child gets a session of its own, so a Ctrl-C in the
terminal reaches only the parent, which then stops the server in order.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil

SERVICE_NAME = "IntentClassifier"
SERVICE_TARGET = f"serving.service:{SERVICE_NAME}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bentoml_overrides(
    service_name: str, workers: int, access_log: bool = False, metrics: bool = True
) -> str:
    """`BENTOML_CONFIG_OVERRIDES` JSON that sets a service's workers, access log and metrics."""
    config = {
        "workers": workers,
        "logging": {"access": {"enabled": access_log}},
        "metrics": {"enabled": metrics},
    }
    return json.dumps({"services": {service_name: config}})


def bentoml_argv(target: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port)]


class ServerProcess:
    """A server started with `argv` in `cwd`, with `env` added to this process's environment.

    Its output goes to `log_path` (or is inherited when None). Use it as a context manager.
    """

    def __init__(
        self,
        argv: list[str],
        port: int,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.argv = argv
        self.port = port
        self.env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", **(env or {})}
        self.cwd = cwd
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        output = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
            )
        finally:
            if output is not None:
                output.close()
        return self

    def wait_ready(self, timeout_s: float = 120.0, path: str = "/readyz") -> None:
        """Block until `path` answers 200; raise if the server exits or the time runs out."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.argv} exited with {self.process.returncode}")
                try:
                    if client.get(self.url + path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{self.url}{path} not ready after {timeout_s:g}s")

    def wait(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.wait()

    def processes(self) -> list[psutil.Process]:
        """The server and every process it started (BentoML's workers run in sessions of
        their own, so its process group does not hold them all)."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the server, which stops its workers; SIGKILL to whatever is left then."""
        tree = self.processes()
        if not tree:
            return
        assert self.process is not None
        self.process.terminate()
        _, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        self.process.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
