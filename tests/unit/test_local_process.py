"""A detached service is found again by its pid file, stopped with its children, and its
start-up failures carry the end of its log."""

import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from streams.local_process import LocalProcess, ServiceError, port_is_free


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


SLEEPER = python("import time; print('sleeper up', flush=True); time.sleep(60)")


@pytest.fixture
def service(tmp_path: Path):
    """A LocalProcess in a fresh home, stopped at the end whatever the test did."""
    process = LocalProcess("sleeper", tmp_path / "home")
    yield process
    process.stop(timeout=2.0)


def log_says(process: LocalProcess, text: str):
    return lambda: process.log_file.exists() and text in process.log_file.read_text()


def test_start_stop_round_trip(service: LocalProcess):
    pid = service.start(SLEEPER)
    service.wait_ready(log_says(service, "sleeper up"), timeout=10)

    assert service.is_running() and service.pid() == pid
    assert service.status().running and service.status().pid == pid
    assert service.pid_file.read_text().split()[0] == str(pid)

    assert service.stop() is True
    assert not service.is_running() and not service.pid_file.exists()
    assert not psutil.pid_exists(pid)  # stopped and reaped, no zombie left
    assert service.stop() is False


def test_a_second_start_is_refused_while_running(service: LocalProcess):
    service.start(SLEEPER)
    with pytest.raises(ServiceError, match="already running"):
        service.start(SLEEPER)


def test_stale_pid_file_of_a_dead_process_is_removed(service: LocalProcess):
    dead = subprocess.Popen(python("pass"))
    dead.wait()
    service.home.mkdir(parents=True)
    service.pid_file.write_text(f"{dead.pid} 1.0\n")

    assert not service.is_running()
    assert not service.pid_file.exists()


def test_pid_file_naming_a_recycled_pid_is_stale(service: LocalProcess):
    """A live process with another start time is not the service (pid reuse)."""
    service.home.mkdir(parents=True)
    service.pid_file.write_text(f"{psutil.Process().pid} 1.0\n")

    assert service.pid() is None
    assert not service.pid_file.exists()


def test_garbled_pid_file_is_removed(service: LocalProcess):
    service.home.mkdir(parents=True)
    service.pid_file.write_text("not a pid\n")

    assert service.pid() is None and not service.pid_file.exists()


def test_readiness_timeout_shows_the_log_tail(service: LocalProcess):
    service.start(python("import time; print('still booting', flush=True); time.sleep(60)"))

    with pytest.raises(ServiceError, match="not ready after 0.5s") as raised:
        service.wait_ready(lambda: False, timeout=0.5, interval=0.05)
    assert "still booting" in raised.value.log_tail


def test_death_during_start_up_shows_the_log_tail(service: LocalProcess):
    service.start(python("print('bad config: no port', flush=True); raise SystemExit(3)"))

    with pytest.raises(ServiceError, match="exited during start-up") as raised:
        service.wait_ready(lambda: False, timeout=30)
    assert "bad config: no port" in raised.value.log_tail
    assert not service.pid_file.exists()


def test_stop_kills_a_process_that_ignores_sigterm(service: LocalProcess):
    stubborn = python(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )
    pid = service.start(stubborn)
    service.wait_ready(log_says(service, "ignoring"), timeout=10)

    assert service.stop(timeout=0.5) is True
    assert not psutil.pid_exists(pid)


def test_stop_also_stops_the_children(service: LocalProcess):
    """Servers that fork workers (uvicorn) must not leave them behind."""
    parent = python(
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('child', child.pid, flush=True); time.sleep(60)"
    )
    service.start(parent)
    service.wait_ready(log_says(service, "child"), timeout=10)
    child_pid = int(service.log_file.read_text().split()[1])

    service.stop(timeout=5)
    assert not psutil.pid_exists(child_pid) or (
        psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    )


def test_log_tail_keeps_the_last_lines(service: LocalProcess):
    service.home.mkdir(parents=True)
    service.log_file.write_text("".join(f"line {n}\n" for n in range(1000)))

    assert service.log_tail(3) == "line 997\nline 998\nline 999"


def test_port_is_free_sees_a_listening_socket():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])
