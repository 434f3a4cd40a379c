"""Running `lambda-ml` jobs as real processes, and killing them with SIGKILL mid-work."""

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common.settings import KafkaSettings
from models.snapshot import LocalSnapshotStore
from streams.master_dataset import archived_positions

CLI = [str(Path(sys.executable).parent / "lambda-ml")]


def cli_env(**settings: str | Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MLFLOW_", "SPEED_"))}
    env.update({k: str(v) for k, v in settings.items()})
    return env


def stream_jobs_env(kafka: KafkaSettings, workdir: Path, **settings: str | Path) -> dict[str, str]:
    """The environment of `speed` and `archive` on `kafka`'s topics, keeping their state under
    `workdir` (snapshots/, master/, signals/), snapshotting and flushing every 0.5 s, with an
    unreachable MLflow: the stream must not need it."""
    return cli_env(
        KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
        KAFKA_TOPIC=kafka.topic,
        KAFKA_DLQ_TOPIC=kafka.dlq_topic,
        SPEED_SNAPSHOT_DIR=workdir / "snapshots",
        SPEED_SNAPSHOT_EVERY_S=0.5,
        SPEED_SIGNAL_DIR=workdir / "signals",
        BATCH_MASTER_DIR=workdir / "master",
        ARCHIVE_FLUSH_EVERY_S=0.5,
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES=0,
        **settings,
    )


def run_to_end(args: list[str], env: dict[str, str], timeout_s: float = 180) -> str:
    done = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def kill_mid_work(
    args: list[str],
    env: dict[str, str],
    working: Callable[[], bool],
    rng: random.Random,
    max_delay_s: float,
    timeout_s: float = 60,
) -> bool:
    """Start the job, wait until `working()` says it is busy, then SIGKILL it after a random
    delay. Returns False if the job finished before it could be killed."""
    process = subprocess.Popen(
        CLI + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not working() and process.poll() is None:
            assert time.monotonic() < deadline, "the job never started working"
            time.sleep(0.02)
        time.sleep(rng.uniform(0, max_delay_s))
        if process.poll() is not None:
            return False
        os.kill(process.pid, signal.SIGKILL)
        return True
    finally:
        process.kill()
        process.wait()


class RunningJobs:
    """Long-running `lambda-ml` jobs (name -> args), stopped with SIGTERM on exit.

    `exited()` says which ended on their own (none may, for as long as the stream lasts);
    after the `with` block, `codes` holds each job's exit status and `logs` its stderr tail.
    """

    def __init__(self, jobs: dict[str, list[str]], env: dict[str, str], log_dir: Path) -> None:
        self.jobs = jobs
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.codes: dict[str, int] = {}
        self.logs: dict[str, str] = {}

    def __enter__(self) -> "RunningJobs":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, args in self.jobs.items():
            with (self.log_dir / f"{name}.log").open("wb") as log:
                self.processes[name] = subprocess.Popen(
                    CLI + args, env=self.env, stdout=log, stderr=subprocess.STDOUT
                )
        return self

    def exited(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Poll `condition`; fail if a job exits first or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert not self.exited(), f"jobs exited before {what}: {self.exited()} {self.tails()}"
            assert time.monotonic() < deadline, f"not {what} after {timeout_s:g}s {self.tails()}"
            time.sleep(0.2)

    def wait_for_exit(self, name: str, timeout_s: float) -> int:
        """Wait for a job that ends by itself (a replay); the others must keep running."""
        deadline = time.monotonic() + timeout_s
        while self.processes[name].poll() is None:
            others = {n: c for n, c in self.exited().items() if n != name}
            assert not others, f"jobs exited before {name} ended: {others} {self.tails()}"
            assert time.monotonic() < deadline, f"{name} still running after {timeout_s:g}s"
            time.sleep(0.2)
        self.codes[name] = self.processes.pop(name).returncode
        return self.codes[name]

    def tails(self) -> dict[str, str]:
        return {n: (self.log_dir / f"{n}.log").read_text()[-1500:] for n in self.jobs}

    def __exit__(self, *exc_info) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                self.codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                self.codes[name] = process.wait()
        self.logs = self.tails()


def caught_up(store: LocalSnapshotStore, master: Path, ends: dict[int, int]) -> bool:
    """The speed layer's newest snapshot and the master dataset both reach `ends`."""
    snapshot = store.latest()
    return (
        snapshot is not None
        and snapshot.offsets == ends
        and master.exists()
        and archived_positions(master) == ends
    )
