"""Supervising the project's child processes: the one way they are started, watched and stopped.

Every process is started in a session of its own, with its output in a log file: a Ctrl-C in
the terminal then reaches only the parent, which stops its children in order, and a child's
whole process group can be signalled. Stopping sends SIGTERM to the group, then to whatever the
leader left behind (servers whose workers run in sessions of their own), and SIGKILL to what is
still alive at the timeout. Failures carry the end of the log, which is where the reason is.

- `ChildProcess`: one child owned by this process (a server, a job), for as long as it runs.
- `ProcessGroup`: named children started and stopped together, none of which may exit.
- `DetachedService`: a service that outlives the command that started it (Kafka, S3Proxy and
  MLflow, run by `pipelines.services`), found again through its pid file.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psutil
from filelock import FileLock

from common.durable import write_durably

Probe = Callable[[], bool]
_LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """An expected failure of a supervised process (missing tool, busy port, died at start-up).

    `message` is one line for the user; `log_tail` holds the process's last log lines, if any.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n{log_tail}" if log_tail else message)
        self.message = message
        self.log_tail = log_tail


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (the OS picks them; all held open together, so distinct)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((_LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    """One port nothing listens on now."""
    (port,) = free_ports(1)
    return port


def port_is_free(port: int, host: str = _LOOPBACK) -> bool:
    """Whether a server could bind `host:port` now (a quick check for a clear error)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_ready(url: str, timeout_s: float = 2.0) -> Probe:
    """A probe that is True once GET `url` answers 200, such as a server's readiness endpoint.

    It goes to the server directly: a proxy from the environment must not answer for it.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def probe() -> bool:
        try:
            with opener.open(url, timeout=timeout_s) as response:
                return response.status == 200
        except (OSError, http.client.HTTPException):  # refused, timed out, an error status
            return False

    return probe


class ChildProcess:
    """`argv`, named `name`, run as a child of this process in `cwd`, with output to `log_path`.

    `env` is the child's whole environment (None: this process's). Output is appended to
    `log_path`, so a restarted child keeps its history, or inherited when it is None. `port`
    is where a server child listens, for `url` and the default readiness probe. Use it as a
    context manager to have it stopped whatever happens.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        port: int | None = None,
        ready_path: str = "/readyz",
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = log_path
        self.port = port
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ValueError(f"{self.name} was given no port")
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> Self:
        if self.process is not None and self.process.poll() is None:
            raise ServiceError(f"{self.name} is already running (pid {self.process.pid})")
        self.process = _spawn(self.argv, self.log_path, self.env, self.cwd, append=True)
        return self

    def poll(self) -> int | None:
        """The exit status once the child has ended (reaping it), else None."""
        return self._started().poll()

    @property
    def returncode(self) -> int | None:
        return self.poll() if self.process is not None else None

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the child to end by itself; its exit status (TimeoutExpired at timeout)."""
        return self._started().wait(timeout_s)

    def send_signal(self, signum: int) -> None:
        """Signal the child alone, not what it started (SIGKILL here simulates a crash)."""
        if self.poll() is None:
            self._started().send_signal(signum)

    def processes(self) -> list[psutil.Process]:
        """The child and every process it started, while it runs (BentoML's workers run in
        sessions of their own, so the child's process group does not hold them all)."""
        if self.process is None or self.process.poll() is not None:
            return []
        return _tree_of(self.process.pid)

    def wait_ready(
        self, probe: Probe | None = None, timeout_s: float = 120.0, interval_s: float = 0.2
    ) -> None:
        """Poll `probe` (by default: `ready_path` at `url` answers 200) until it is True.

        Raises ServiceError, with the end of the log, if the child exits first or at timeout.
        """
        self._started()
        check = probe or http_ready(self.url + self.ready_path)
        _wait_ready(self.name, check, self._ended, self.log_path, timeout_s, interval_s)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """Stop the child and what it started (SIGTERM, SIGKILL at `timeout_s`), and reap it.

        Returns its exit status; None if it was never started.
        """
        if self.process is None:
            return None
        _stop_trees([self._tree()], timeout_s)
        return self.process.wait()

    def log_tail(self, lines: int = 25) -> str:
        return _log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"{self.name}: start() first")
        return self.process

    def _ended(self) -> str | None:
        code = self.poll()
        return None if code is None else f"exited with status {code}"

    def _tree(self) -> _Tree:
        process = self._started()
        if process.poll() is not None:
            return _Tree(process.pid, [], lambda: False)
        return _Tree(process.pid, _tree_of(process.pid)[1:], lambda: process.poll() is None)


@dataclass
class ProcessGroup:
    """Named children, each logging to `log_dir`/<name>.log, started and stopped together.

    Each runs until stopped, unless started with `finishes=True` (a report, a replay): then it
    may end by itself, with status 0. `check` and the waits raise ServiceError, naming the job
    and showing the end of its log, as soon as a job breaks that. `env` and `cwd` are those of
    every job. Use it as a context manager to have every job stopped whatever happens.
    """

    log_dir: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    children: dict[str, ChildProcess] = field(default_factory=dict, init=False)
    _finishing: set[str] = field(default_factory=set, init=False)

    def start(self, name: str, argv: Sequence[str], *, finishes: bool = False) -> ChildProcess:
        if name in self.children:
            raise ValueError(f"a job named {name} is already in the group")
        log_path = self.log_dir / f"{name}.log"
        child = ChildProcess(name, argv, env=self.env, cwd=self.cwd, log_path=log_path).start()
        self.children[name] = child
        if finishes:
            self._finishing.add(name)
        return child

    def __getitem__(self, name: str) -> ChildProcess:
        return self.children[name]

    def exited(self) -> dict[str, int]:
        """The jobs that have ended, with their exit status."""
        codes = {name: child.poll() for name, child in self.children.items()}
        return {name: code for name, code in codes.items() if code is not None}

    def check(self) -> None:
        """Raise ServiceError if a job has exited when it should run, or ended with a failure."""
        for name, code in self.exited().items():
            if code != 0 or name not in self._finishing:
                raise self._failure(name, f"exited with status {code}")

    def wait_until(
        self, condition: Probe, what: str, timeout_s: float, interval_s: float = 0.2
    ) -> None:
        """Poll `condition` until it is True, checking the jobs each time (see `check`)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise ServiceError(f"timed out after {timeout_s:g}s waiting for {what}")
            time.sleep(interval_s)

    def wait_for(self, name: str, timeout_s: float | None = None) -> None:
        """Wait for the job `name` to end by itself with status 0, while the others run on."""
        self._finishing.add(name)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.children[name].poll() is None:
            self.check()
            if deadline is not None and time.monotonic() > deadline:
                raise self._failure(name, f"was still running after {timeout_s:g}s")
            time.sleep(0.2)
        self.check()

    def stop(self, timeout_s: float = 20.0) -> dict[str, int]:
        """Stop every job at once (SIGTERM, SIGKILL at `timeout_s`); each job's exit status."""
        _stop_trees([child._tree() for child in self.children.values()], timeout_s)
        return {name: child._started().wait() for name, child in self.children.items()}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _failure(self, name: str, what: str) -> ServiceError:
        return _failure(f"the {name} job", what, self.children[name].log_path)


@dataclass(frozen=True)
class ProcessStatus:
    """What `DetachedService.status` reports: whether it runs, its pid and where it logs."""

    running: bool
    pid: int | None
    log_file: Path


@dataclass(frozen=True)
class DetachedService:
    """One detached service, named `name`, with its pid and log files in `home`.

    It outlives the command that started it, so it is tracked by a pid file rather than by a
    Python handle: any later command (or another process) can ask whether it runs, and stop it.
    """

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
        """Start `command` in `home`, logging to `log_file` afresh, and record its pid.

        `env` is its whole environment (None: this process's). The lock and the atomic pid
        file keep two concurrent starts from both running.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with FileLock(self.home / f"{self.name}.lock"):
            if (pid := self.pid()) is not None:
                raise ServiceError(f"{self.name} is already running (pid {pid})")
            process = _spawn(command, self.log_file, env, self.home, append=False)
            started = psutil.Process(process.pid).create_time()
            write_durably(self.pid_file, f"{process.pid} {started!r}\n".encode())
        return process.pid

    def wait_ready(self, probe: Probe, timeout_s: float, interval_s: float = 0.2) -> None:
        """Poll `probe` until it returns True; ServiceError if the service dies or at timeout."""

        def ended() -> str | None:
            return None if self.is_running() else "exited"

        _wait_ready(self.name, probe, ended, self.log_file, timeout_s, interval_s)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the service and its children (SIGTERM, SIGKILL at `timeout_s`).

        Returns False if it was not running.
        """
        pid = self.pid()
        if pid is None:
            return False
        tree = _tree_of(pid)
        if tree:
            leader = tree[0]
            _stop_trees([_Tree(pid, tree[1:], lambda: _is_alive(leader))], timeout_s)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 25) -> str:
        """The last `lines` lines of the log, read from its end (logs can be large)."""
        return _log_tail(self.log_file, lines)


# --- what every kind of process shares --------------------------------------------------------


@dataclass(frozen=True)
class _Tree:
    """A process group's leader and its descendants when asked, to be stopped together.

    `leader_alive` is asked rather than psutil: the exit status of a child of this process
    belongs to its Popen, which must reap it itself.
    """

    leader: int
    descendants: list[psutil.Process]
    leader_alive: Callable[[], bool]


def _spawn(
    argv: Sequence[str],
    log_path: Path | None,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    append: bool,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own, stdin closed, output to `log_path` (or inherited)."""
    output = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        output = log_path.open("ab" if append else "wb")
    try:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
        )
    finally:
        if output is not None:
            output.close()


def _tree_of(pid: int) -> list[psutil.Process]:
    """The process `pid` and all its descendants, or nothing if it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop_trees(trees: Sequence[_Tree], timeout_s: float) -> None:
    """SIGTERM to each tree's process group and, once the leaders are gone, to what they left
    behind outside it; SIGKILL to whatever is still alive at `timeout_s`. The trees share the
    time, so they stop at once."""
    for tree in trees:
        if tree.leader_alive():
            _signal_group(tree.leader, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    _poll(lambda: not any(tree.leader_alive() for tree in trees), deadline)
    for process in _outside_the_group(trees):
        with contextlib.suppress(psutil.Error):
            process.terminate()
    if _poll(lambda: not _alive(trees), deadline):
        return
    for tree in trees:
        if tree.leader_alive():
            _signal_group(tree.leader, signal.SIGKILL)
    for process in _left(trees):
        with contextlib.suppress(psutil.Error):
            process.kill()
    _poll(lambda: not _alive(trees), time.monotonic() + 5.0)


def _outside_the_group(trees: Sequence[_Tree]) -> list[psutil.Process]:
    """The live descendants that the SIGTERM to their leader's group did not reach."""
    outside = []
    for tree in trees:
        for process in tree.descendants:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(process.pid) != tree.leader and _is_alive(process):
                    outside.append(process)
    return outside


def _left(trees: Sequence[_Tree]) -> list[psutil.Process]:
    return [p for tree in trees for p in tree.descendants if _is_alive(p)]


def _alive(trees: Sequence[_Tree]) -> bool:
    return any(tree.leader_alive() for tree in trees) or bool(_left(trees))


def _poll(condition: Probe, deadline: float) -> bool:
    """Wait until `condition` holds (True) or `deadline` passes (False)."""
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _wait_ready(
    name: str,
    probe: Probe,
    ended: Callable[[], str | None],
    log_path: Path | None,
    timeout_s: float,
    interval_s: float,
) -> None:
    """Poll `probe` until True; `ended` says how the process ended, or None while it runs."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        if (how := ended()) is not None:
            raise _failure(name, f"{how} during start-up", log_path)
        if time.monotonic() > deadline:
            raise _failure(name, f"was not ready after {timeout_s:g}s", log_path)
        time.sleep(interval_s)


def _failure(name: str, what: str, log_path: Path | None) -> ServiceError:
    if log_path is None:
        return ServiceError(f"{name} {what}")
    return ServiceError(f"{name} {what}; end of {log_path}:", _log_tail(log_path))


def _log_tail(path: Path | None, lines: int = 25) -> str:
    """The last `lines` lines of the log at `path`, read from its end (logs can be large)."""
    if path is None:
        return ""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


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
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
