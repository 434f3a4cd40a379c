"""Running `lambda-ml` jobs as real processes, and killing them with SIGKILL mid-work."""

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from common.processes import ChildProcess, ProcessGroup, ServiceError
from common.settings import KafkaSettings
from models.snapshot import SnapshotStore
from streams.master_dataset import archived_positions

CLI = [str(Path(sys.executable).parent / "lambda-ml")]


# Jobs of a test run side by side (two schedulers, two speed workers): no metrics endpoint unless
# a test asks for one on a port of its own.
NO_METRICS_ENDPOINTS = {f"METRICS_{job}_PORT": "0" for job in ("SPEED", "ARCHIVE", "SCHEDULE")}


def cli_env(**settings: str | Path) -> dict[str, str]:
    prefixes = ("KAFKA_", "MLFLOW_", "SPEED_", "METRICS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(NO_METRICS_ENDPOINTS | {k: str(v) for k, v in settings.items()})
    return env


def stream_jobs_env(kafka: KafkaSettings, workdir: Path, **settings: str | Path) -> dict[str, str]:
    """The environment of `speed` and `archive` on `kafka`'s topics, keeping their state under
    `workdir` (snapshots/, master/, signals/), snapshotting and flushing every 0.5 s, with an
    unreachable MLflow: the stream must not need it. `settings` add to these or replace them.

    Each call names consumer groups of its own: the archiver is a static member named after its
    group, so tests sharing the default group on the session's broker would share its
    membership too, and one test's archiver could hold up the next one's join."""
    unique = uuid.uuid4().hex[:8]
    defaults: dict[str, str | Path] = {
        "ARCHIVE_GROUP_ID": f"archiver-{unique}",
        "SPEED_GROUP_ID": f"speed-{unique}",
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KAFKA_TOPIC": kafka.topic,
        "KAFKA_DLQ_TOPIC": kafka.dlq_topic,
        "KAFKA_FEEDBACK_TOPIC": kafka.feedback_topic,
        "SPEED_SNAPSHOT_DIR": workdir / "snapshots",
        "SPEED_SNAPSHOT_EVERY_S": "0.5",
        "SPEED_SIGNAL_DIR": workdir / "signals",
        "BATCH_MASTER_DIR": workdir / "master",
        "ARCHIVE_FLUSH_EVERY_S": "0.5",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    return cli_env(**(defaults | settings))


def storage_env(object_store) -> dict[str, str]:
    """The `STORAGE_*` settings of the test session's S3-compatible server."""
    s = object_store.settings
    return {
        "STORAGE_ENDPOINT_URL": s.endpoint,
        "STORAGE_ACCESS_KEY": s.access_key,
        "STORAGE_SECRET_KEY": s.secret_key,
        "STORAGE_BUCKET": s.bucket,
    }


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
    with ChildProcess(args[0], CLI + args, env=env, log_path=Path(os.devnull)) as job:
        deadline = time.monotonic() + timeout_s
        while not working() and job.poll() is None:
            assert time.monotonic() < deadline, "the job never started working"
            time.sleep(0.02)
        time.sleep(rng.uniform(0, max_delay_s))
        if job.poll() is not None:
            return False
        job.send_signal(signal.SIGKILL)
        return True


class RunningJobs:
    """Long-running `lambda-ml` jobs (name -> args) of one test, stopped with SIGTERM on exit.

    A `ProcessGroup` whose failures become assertions carrying every job's log tail. After the
    `with` block, `codes` holds each job's exit status and `logs` its log tail.
    """

    def __init__(self, jobs: dict[str, list[str]], env: dict[str, str], log_dir: Path) -> None:
        self.jobs = jobs
        self.log_dir = log_dir
        self.group = ProcessGroup(log_dir, env=env)
        self.codes: dict[str, int] = {}
        self.logs: dict[str, str] = {}

    def __enter__(self) -> "RunningJobs":
        for name, args in self.jobs.items():
            self.group.start(name, CLI + args)
        return self

    def exited(self) -> dict[str, int]:
        return self.group.exited()

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Poll `condition`; fail if a job exits first or the time runs out."""
        try:
            self.group.wait_until(condition, what, timeout_s)
        except ServiceError as exc:
            raise AssertionError(f"{exc.message} {self.tails()}") from None

    def wait_for_exit(self, name: str, timeout_s: float) -> int:
        """Wait for a job that ends by itself (a replay) with status 0; the others must keep
        running."""
        try:
            self.group.wait_for(name, timeout_s)
        except ServiceError as exc:
            raise AssertionError(f"{exc.message} {self.tails()}") from None
        self.codes[name] = 0
        return 0

    def tails(self) -> dict[str, str]:
        return {n: (self.log_dir / f"{n}.log").read_text()[-1500:] for n in self.jobs}

    def __exit__(self, *exc_info) -> None:
        self.codes = self.group.stop(timeout_s=30)
        self.logs = self.tails()


def caught_up(store: SnapshotStore, master: Path, ends: dict[int, int]) -> bool:
    """Every partition's newest speed snapshot and the master dataset both reach `ends`."""
    return store.reached(ends) and master.exists() and archived_positions(master) == ends
