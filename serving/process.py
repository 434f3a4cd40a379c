"""Running a server as a child process: `lambda-ml serve`, the benchmark and the live tests.

`bentoml serve` forks an arbiter and its workers; the child starts a new session so that
stopping it stops the whole group it made, and nothing else.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

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

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL if it has not exited in time."""
        if self.process is None or self.process.poll() is not None:
            return
        group = self.process.pid  # the leader of the session it started
        try:
            os.killpg(group, signal.SIGTERM)
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        finally:
            self._reap_group(group)

    @staticmethod
    def _reap_group(group: int) -> None:
        """Kill what is left of the group: workers outlive an arbiter that was killed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
