"""A long-lived background service started from the command line and found again later.

The local broker and tracking server outlive the `lambda-ml ... up` that starts them, so they
are tracked by a pid file and a log file in their home directory rather than by a Python
handle: any later command (or another process) can ask whether they run, and stop them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from filelock import FileLock

from common.durable import write_durably


class ServiceError(RuntimeError):
    """An expected failure of a local service (missing tool, busy port, died at start-up).

    `message` is one line for the user; `log_tail` holds the service's last log lines, if any.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n{log_tail}" if log_tail else message)
        self.message = message
        self.log_tail = log_tail


@dataclass(frozen=True)
class ProcessStatus:
    """What `status` reports: whether the service runs, its pid and where it logs."""

    running: bool
    pid: int | None
    log_file: Path


@dataclass(frozen=True)
class LocalProcess:
    """One detached service, named `name`, with its pid and log files in `home`."""

    name: str
    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of the running service, or None; a pid file left by a dead one is removed.

        The pid file also records the process start time, so a recycled pid that now belongs
        to an unrelated process is not mistaken for the service.
        """
        try:
            pid_text, started_text = self.pid_file.read_text().split()
            pid, started = int(pid_text), float(started_text)
        except FileNotFoundError:
            return None
        except ValueError:
            self.pid_file.unlink(missing_ok=True)
            return None
        try:
            process = psutil.Process(pid)
            if _is_alive(process) and abs(process.create_time() - started) < 0.1:
                return pid
        except psutil.Error:
            pass
        self.pid_file.unlink(missing_ok=True)
        return None

    def is_running(self) -> bool:
        return self.pid() is not None

    def status(self) -> ProcessStatus:
        pid = self.pid()
        return ProcessStatus(running=pid is not None, pid=pid, log_file=self.log_file)

    def start(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> int:
        """Start `command` in its own session, logging to `log_file`, and record its pid.

        Its own session means a Ctrl-C in the shell that ran `up` does not reach it, and
        `stop` can signal its whole process group (servers that fork workers). The lock and
        the atomic pid file keep two concurrent starts from both running.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with FileLock(self.home / f"{self.name}.lock"):
            if (pid := self.pid()) is not None:
                raise ServiceError(f"{self.name} is already running (pid {pid})")
            with self.log_file.open("wb") as log:
                process = subprocess.Popen(
                    list(command),
                    cwd=self.home,
                    env={**os.environ, **(env or {})},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started = psutil.Process(process.pid).create_time()
            write_durably(self.pid_file, f"{process.pid} {started!r}\n".encode())
        return process.pid

    def wait_ready(self, probe: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        """Poll `probe` until it returns True; fail early if the service dies, or at `timeout`.

        Both failures carry the end of the service's log, which is where the reason is.
        """
        deadline = time.monotonic() + timeout
        while not probe():
            if not self.is_running():
                raise ServiceError(
                    f"{self.name} exited during start-up; end of {self.log_file}:",
                    self.log_tail(),
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} was not ready after {timeout:g}s; end of {self.log_file}:",
                    self.log_tail(),
                )
            time.sleep(interval)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the service: SIGTERM to its process group, SIGKILL if still alive at `timeout`.

        Returns False if it was not running.
        """
        pid = self.pid()
        if pid is None:
            return False
        try:
            leader = psutil.Process(pid)
            processes = [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(processes, timeout):
            _signal_group(pid, signal.SIGKILL)
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            _wait_gone(processes, 5.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 25) -> str:
        """The last `lines` lines of the log, read from its end (logs can be large)."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `host:port` now (a quick check for a clear error)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie; a zombie child of this process is reaped on the way.

    A child shows as a zombie as soon as its main thread ends, but can only be reaped once
    its other threads have: until then it still counts as alive.
    """
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    try:
        reaped_pid, _ = os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:  # not ours: its parent, or init, reaps it
        return False
    return reaped_pid == 0


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _wait_gone(processes: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_is_alive(process) for process in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
