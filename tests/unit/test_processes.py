"""Process supervision: a child or a group of them is stopped with everything it started, even
when it ignores SIGTERM; a job that exits is named with its log; a detached service is found again
by its pid file; start-up failures carry the end of the log."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from common.processes import (
    ChildProcess,
    DetachedService,
    ProcessGroup,
    ServiceError,
    free_port,
    free_ports,
    http_ready,
    port_is_free,
)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


SLEEPER = python("import time; print('sleeper up', flush=True); time.sleep(60)")


@pytest.fixture
def service(tmp_path: Path):
    """A DetachedService in a fresh home, stopped at the end whatever the test did."""
    process = DetachedService("sleeper", tmp_path / "home")
    yield process
    process.stop(timeout_s=2.0)


def log_says(process: DetachedService, text: str):
    return lambda: process.log_file.exists() and text in process.log_file.read_text()


def test_start_stop_round_trip(service: DetachedService):
    pid = service.start(SLEEPER)
    service.wait_ready(log_says(service, "sleeper up"), timeout_s=10)

    assert service.is_running() and service.pid() == pid
    assert service.status().running and service.status().pid == pid
    assert service.pid_file.read_text().split()[0] == str(pid)

    assert service.stop() is True
    assert not service.is_running() and not service.pid_file.exists()
    assert not psutil.pid_exists(pid)  # stopped and reaped, no zombie left
    assert service.stop() is False


def test_a_second_start_is_refused_while_running(service: DetachedService):
    service.start(SLEEPER)
    with pytest.raises(ServiceError, match="already running"):
        service.start(SLEEPER)


def test_stale_pid_file_of_a_dead_process_is_removed(service: DetachedService):
    dead = subprocess.Popen(python("pass"))
    dead.wait()
    service.home.mkdir(parents=True)
    service.pid_file.write_text(f"{dead.pid} 1.0\n")

    assert not service.is_running()
    assert not service.pid_file.exists()


def test_pid_file_naming_a_recycled_pid_is_stale(service: DetachedService):
    """A live process with another start time is not the service (pid reuse)."""
    service.home.mkdir(parents=True)
    service.pid_file.write_text(f"{psutil.Process().pid} 1.0\n")

    assert service.pid() is None
    assert not service.pid_file.exists()


def test_garbled_pid_file_is_removed(service: DetachedService):
    service.home.mkdir(parents=True)
    service.pid_file.write_text("not a pid\n")

    assert service.pid() is None and not service.pid_file.exists()


def test_readiness_timeout_shows_the_log_tail(service: DetachedService):
    service.start(python("import time; print('still booting', flush=True); time.sleep(60)"))

    with pytest.raises(ServiceError, match="not ready after 0.5s") as raised:
        service.wait_ready(lambda: False, timeout_s=0.5, interval_s=0.05)
    assert "still booting" in raised.value.log_tail


def test_death_during_start_up_shows_the_log_tail(service: DetachedService):
    service.start(python("print('bad config: no port', flush=True); raise SystemExit(3)"))

    with pytest.raises(ServiceError, match="exited during start-up") as raised:
        service.wait_ready(lambda: False, timeout_s=30)
    assert "bad config: no port" in raised.value.log_tail
    assert not service.pid_file.exists()


def test_stop_kills_a_process_that_ignores_sigterm(service: DetachedService):
    stubborn = python(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )
    pid = service.start(stubborn)
    service.wait_ready(log_says(service, "ignoring"), timeout_s=10)

    assert service.stop(timeout_s=0.5) is True
    assert not psutil.pid_exists(pid)


def test_stop_also_stops_the_children(service: DetachedService):
    """Servers that fork workers (uvicorn) must not leave them behind."""
    parent = python(
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('child', child.pid, flush=True); time.sleep(60)"
    )
    service.start(parent)
    service.wait_ready(log_says(service, "child"), timeout_s=10)
    child_pid = int(service.log_file.read_text().split()[1])

    service.stop(timeout_s=5)
    assert not psutil.pid_exists(child_pid) or (
        psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    )


def test_log_tail_keeps_the_last_lines(service: DetachedService):
    service.home.mkdir(parents=True)
    service.log_file.write_text("".join(f"line {n}\n" for n in range(1000)))

    assert service.log_tail(3) == "line 997\nline 998\nline 999"


def test_port_is_free_sees_a_listening_socket():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


def test_free_ports_are_distinct_and_free():
    ports = free_ports(5)

    assert len(set(ports)) == 5
    assert all(port_is_free(port) for port in [*ports, free_port()])


# --- ChildProcess -------------------------------------------------------------------------

STUBBORN = python(
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring', flush=True); time.sleep(60)"
)


def child(tmp_path: Path, argv: list[str], name: str = "child", **kwargs) -> ChildProcess:
    return ChildProcess(name, argv, log_path=tmp_path / f"{name}.log", **kwargs)


def log_shows(process: ChildProcess, text: str):
    assert process.log_path is not None
    return lambda: process.log_path.exists() and text in process.log_path.read_text()


def started_worker(process: ChildProcess) -> int:
    """The pid of the worker `process` started, once it has printed `worker <pid>`."""
    process.wait_ready(log_shows(process, "worker"), timeout_s=10)
    assert process.log_path is not None
    return int(process.log_path.read_text().split()[1])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_child_that_ignores_sigterm_is_killed_at_the_timeout(tmp_path: Path):
    with child(tmp_path, STUBBORN) as process:
        process.wait_ready(log_shows(process, "ignoring"), timeout_s=10)
        pid = process.pid
        assert pid is not None

        assert process.stop(timeout_s=0.5) == -9  # SIGKILL
    assert not psutil.pid_exists(pid)


def test_child_stop_returns_the_status_the_child_exits_with(tmp_path: Path):
    """The child's own exit status, not one lost because something else reaped it."""
    graceful = python(
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(7)); "
        "print('up', flush=True); time.sleep(60)"
    )
    with child(tmp_path, graceful) as process:
        process.wait_ready(log_shows(process, "up"), timeout_s=10)

        assert process.stop() == 7
        assert process.returncode == 7


def test_child_stop_stops_grandchildren_in_sessions_of_their_own(tmp_path: Path):
    """Like BentoML's workers: out of the child's process group, and here ignoring SIGTERM."""
    parent = python(
        "import subprocess, sys, time; "
        "code = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "time.sleep(60)'; "
        "worker = subprocess.Popen([sys.executable, '-c', code], start_new_session=True); "
        "print('worker', worker.pid, flush=True); time.sleep(60)"
    )
    with child(tmp_path, parent) as process:
        worker_pid = started_worker(process)
        assert {p.pid for p in process.processes()} == {process.pid, worker_pid}

        process.stop(timeout_s=1.0)
    assert gone(worker_pid)


def test_grandchildren_left_behind_are_stopped_without_waiting_for_the_timeout(tmp_path: Path):
    """A worker its parent did not stop gets SIGTERM once the parent is gone, not SIGKILL
    at the end of a long timeout."""
    parent = python(
        "import subprocess, sys, time; "
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True); print('worker', worker.pid, flush=True); time.sleep(60)"
    )
    with child(tmp_path, parent) as process:
        worker_pid = started_worker(process)

        started = time.monotonic()
        process.stop(timeout_s=30.0)
        assert time.monotonic() - started < 10.0
    assert gone(worker_pid)


def test_child_wait_ready_raises_with_the_log_tail_when_it_exits(tmp_path: Path):
    failing = python("print('bad config: no port', flush=True); raise SystemExit(3)")
    with child(tmp_path, failing) as process, pytest.raises(ServiceError) as raised:
        process.wait_ready(lambda: False, timeout_s=30)
    assert raised.value.message.startswith("child exited with status 3 during start-up")
    assert str(tmp_path / "child.log") in raised.value.message
    assert "bad config: no port" in raised.value.log_tail


def test_child_wait_ready_raises_with_the_log_tail_at_the_timeout(tmp_path: Path):
    booting = python("import time; print('still booting', flush=True); time.sleep(60)")
    with (
        child(tmp_path, booting) as process,
        pytest.raises(ServiceError, match="child was not ready after 0.5s") as raised,
    ):
        process.wait_ready(lambda: False, timeout_s=0.5, interval_s=0.05)
    assert "still booting" in raised.value.log_tail


def test_child_wait_ready_polls_the_http_readiness_path_by_default(tmp_path: Path):
    port = free_port()
    server = python(
        "import http.server, sys; "
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), "
        "http.server.SimpleHTTPRequestHandler).serve_forever()"
    )
    (tmp_path / "readyz").write_text("ok")
    with child(tmp_path, [*server, str(port)], port=port, cwd=tmp_path) as process:
        assert not http_ready(f"{process.url}/nowhere")()
        process.wait_ready(timeout_s=20)
        assert http_ready(f"{process.url}/readyz")()


def test_http_ready_is_false_when_nothing_listens():
    assert not http_ready(f"http://127.0.0.1:{free_port()}/readyz", timeout_s=0.5)()


def test_a_child_is_stopped_when_its_block_raises(tmp_path: Path):
    with pytest.raises(RuntimeError, match="demo failed"), child(tmp_path, SLEEPER) as process:
        pid = process.pid
        raise RuntimeError("demo failed")
    assert pid is not None and not psutil.pid_exists(pid)


def test_a_running_child_is_not_started_twice(tmp_path: Path):
    with child(tmp_path, SLEEPER) as process, pytest.raises(ServiceError, match="already"):
        process.start()


# --- ProcessGroup -------------------------------------------------------------------------


def test_check_names_the_job_that_exited_and_shows_its_log(tmp_path: Path):
    with ProcessGroup(tmp_path / "logs") as jobs:
        jobs.start("speed", SLEEPER)
        jobs.start("archive", python("print('archive broke', flush=True); raise SystemExit(2)"))
        jobs["archive"].wait(timeout_s=30)

        with pytest.raises(ServiceError, match="the archive job exited with status 2") as raised:
            jobs.check()
    assert "archive broke" in raised.value.log_tail
    assert str(tmp_path / "logs" / "archive.log") in raised.value.message
    assert jobs.exited() == {"speed": -15, "archive": 2}


def test_a_finishing_job_may_end_with_status_0_but_not_fail(tmp_path: Path):
    with ProcessGroup(tmp_path) as jobs:
        jobs.start("speed", SLEEPER)
        jobs.start("report", python("pass"), finishes=True)
        jobs.wait_for("report", timeout_s=30)
        jobs.check()  # the report ended as it should

        jobs.start("evaluate", python("raise SystemExit(1)"), finishes=True)
        with pytest.raises(ServiceError, match="the evaluate job exited with status 1"):
            jobs.wait_for("evaluate", timeout_s=30)


def test_waiting_fails_as_soon_as_another_job_exits(tmp_path: Path):
    with ProcessGroup(tmp_path) as jobs:
        jobs.start("replay", SLEEPER)
        jobs.start("speed", python("import time; time.sleep(0.3)"))
        started = time.monotonic()

        with pytest.raises(ServiceError, match="the speed job exited with status 0"):
            jobs.wait_until(lambda: False, "the replay to be seen", timeout_s=60)
        with pytest.raises(ServiceError, match="the speed job exited"):
            jobs.wait_for("replay", timeout_s=60)
        assert time.monotonic() - started < 30


def test_wait_until_times_out_naming_what_it_waited_for(tmp_path: Path):
    with ProcessGroup(tmp_path) as jobs:
        jobs.start("speed", SLEEPER)
        with pytest.raises(ServiceError, match="after 0.3s waiting for the service"):
            jobs.wait_until(lambda: False, "the service", timeout_s=0.3, interval_s=0.05)


def test_group_stop_stops_every_job_at_once_and_kills_the_stubborn(tmp_path: Path):
    jobs = ProcessGroup(tmp_path)
    for name in ("speed", "archive", "schedule"):
        jobs.start(name, STUBBORN)
    jobs.start("serve", SLEEPER)
    for name in ("speed", "archive", "schedule"):
        jobs[name].wait_ready(log_shows(jobs[name], "ignoring"), timeout_s=10)
    pids = [c.pid for c in jobs.children.values()]

    started = time.monotonic()
    codes = jobs.stop(timeout_s=1.0)

    assert time.monotonic() - started < 3.0  # one timeout for all, not one each
    assert codes == {"speed": -9, "archive": -9, "schedule": -9, "serve": -15}
    assert not any(pid is not None and psutil.pid_exists(pid) for pid in pids)


def test_a_group_is_stopped_when_its_block_raises(tmp_path: Path):
    with pytest.raises(RuntimeError, match="replay failed"), ProcessGroup(tmp_path) as jobs:
        jobs.start("speed", SLEEPER)
        jobs.start("evaluate", SLEEPER, finishes=True)
        raise RuntimeError("replay failed")
    assert jobs.exited() == {"speed": -15, "evaluate": -15}


def test_job_names_are_unique(tmp_path: Path):
    with ProcessGroup(tmp_path) as jobs:
        jobs.start("speed", SLEEPER)
        with pytest.raises(ValueError, match="already"):
            jobs.start("speed", SLEEPER)
