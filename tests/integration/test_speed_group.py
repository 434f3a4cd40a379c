"""Two speed workers in one consumer group share a 4-partition topic: every labelled event is
learnt exactly once, by its partition's model, and the per-partition snapshots add up to the
model of the whole topic, with the snapshots on the S3-compatible server (as workers on two
machines share them), and in a local folder after one worker is killed with SIGKILL."""

import io
import os
import signal
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from rich.console import Console

from common.processes import ChildProcess
from models.snapshot import SnapshotStore, merge_snapshots
from pipelines.produce import ReplayOptions, run_produce
from tests.integration.cli_processes import CLI, storage_env, stream_jobs_env
from tests.integration.kafka_reading import end_offsets, labelled_per_partition

pytestmark = pytest.mark.integration

EVENTS = 40_000
PARTITIONS = 4
SESSION_TIMEOUT_MS = 6000


@pytest.fixture(scope="module")
def stream(kafka):
    """A 4-partition replay with unlabelled events, and what one model learns from all of it."""
    settings = kafka.fresh_settings(partitions=PARTITIONS)
    run_produce(
        settings,
        ReplayOptions(limit=EVENTS, unlabelled_fraction=0.1, run_id="group"),
        Console(file=io.StringIO()),
    )
    labelled, single = labelled_per_partition(settings.bootstrap, settings.topic, EVENTS)
    return settings, single, labelled


def group_env(settings, workdir: Path, **more: str) -> dict[str, str]:
    return stream_jobs_env(
        settings,
        workdir,
        SPEED_SNAPSHOT_EVERY_EVENTS=500,
        SPEED_PEER_REFRESH_S=1,
        SPEED_SESSION_TIMEOUT_MS=SESSION_TIMEOUT_MS,
        SPEED_HEARTBEAT_INTERVAL_MS=1000,
        **more,
    )


def wait(condition, what: str, timeout_s: float, jobs=()) -> float:
    start = time.monotonic()
    while not condition():
        for job in jobs:
            assert job.poll() is None, f"{job.name} exited: {job.log_tail()}"
        assert time.monotonic() - start < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def owned_by(log_path: Path) -> list[str]:
    return [line for line in log_path.read_text().splitlines() if "assigned partitions" in line]


def check_exact(store: SnapshotStore, single, labelled: Counter) -> None:
    latest = store.latest_per_partition()
    for partition, snapshot in latest.items():
        assert snapshot.partition == partition
        assert snapshot.events_learnt == labelled[partition], partition
    merged = merge_snapshots(latest)
    assert merged.events_learnt == sum(labelled.values())
    assert merged.model.count_table() == single.count_table()


def start_workers(stack: ExitStack, env, log_dir: Path, names) -> dict[str, ChildProcess]:
    return {
        name: stack.enter_context(
            ChildProcess(name, CLI + ["speed"], env=env, log_path=log_dir / f"{name}.log")
        )
        for name in names
    }


def test_two_workers_in_one_group_learn_every_event_once_and_merge_exactly(
    stream, object_store, tmp_path
):
    settings, single, labelled = stream
    shared = object_store.new_url()
    env = group_env(
        settings,
        tmp_path,
        SPEED_SNAPSHOT_DIR=f"{shared}/snapshots",
        SPEED_SIGNAL_DIR=f"{shared}/signals",
        **storage_env(object_store),
    )
    store = SnapshotStore(f"{shared}/snapshots", storage=object_store.settings)
    ends = end_offsets(settings.bootstrap, settings.topic)
    with ExitStack() as stack:
        jobs = start_workers(stack, env, tmp_path, ("a", "b"))
        wait(lambda: store.reached(ends), "both workers to reach the end", 120, jobs.values())
        for job in jobs.values():
            job.send_signal(signal.SIGTERM)
            assert job.wait(30) == 0, job.log_tail()
    assert owned_by(tmp_path / "a.log") and owned_by(tmp_path / "b.log")
    check_exact(store, single, labelled)


@pytest.mark.reliability
def test_a_killed_worker_s_partitions_are_taken_over_and_the_merge_stays_exact(
    stream, tmp_path, reliability
):
    settings, single, labelled = stream
    env = group_env(settings, tmp_path)
    store = SnapshotStore(tmp_path / "snapshots")
    ends = end_offsets(settings.bootstrap, settings.topic)
    with ExitStack() as stack:
        jobs = start_workers(stack, env, tmp_path, ("survivor", "victim"))

        def victim_working() -> bool:
            # The victim owns partitions and has made some of its progress durable.
            return (
                len(store.latest_sequences()) == PARTITIONS
                and any(
                    "partition" in line and "assigned partitions [" in line and "[]" not in line
                    for line in (tmp_path / "victim.log").read_text().splitlines()
                )
                and not store.reached(ends)
            )

        wait(victim_working, "the victim to work", 90, jobs.values())
        jobs["victim"].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assigned_before = len(owned_by(tmp_path / "survivor.log"))
        wait(
            lambda: len(owned_by(tmp_path / "survivor.log")) > assigned_before,
            "the survivor to take the victim's partitions",
            SESSION_TIMEOUT_MS / 1000 + 5,
            [jobs["survivor"]],
        )
        takeover_s = time.monotonic() - killed_at
        wait(lambda: store.reached(ends), "the survivor to reach the end", 120)
        jobs["survivor"].send_signal(signal.SIGTERM)
        assert jobs["survivor"].wait(30) == 0, jobs["survivor"].log_tail()
    scenario = "speed worker of a group killed with SIGKILL"
    reliability(scenario, "seconds until the survivor took over", round(takeover_s, 1))
    check_exact(store, single, labelled)
    assert os.path.exists(tmp_path / "victim.log")
