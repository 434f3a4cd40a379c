"""Serving reliability against the real `bentoml serve` (two workers) and a real MLflow server.

Hot reloads happen while requests keep coming: many champion promotions and snapshot swaps in a
row, and a reload while MLflow cannot deliver the new champion. Not one request may fail, and
the service must end on the newest models by itself.
"""

import re
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.snapshot import SnapshotStore
from pipelines.services.tracking_server import MlflowLauncher
from tests.integration.conftest import throwaway_mlflow
from tests.integration.live_service import (
    Traffic,
    fit_batch,
    promote_version,
    register,
    running_traffic,
    serving_process,
    training_rows,
    wait_until,
    worker_gauges,
    write_snapshot,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

WORKERS = 2  # as in the live test: reloads happen in each worker on its own
CLIENTS = 2  # sending requests without pause
POLL_S = 0.25
PROMOTIONS = 10
SNAPSHOT_SWAPS = 50
SWAP_SPACING_S = 0.4  # more than a poll interval, so most swaps are seen by the service
SETTLED = 40  # answers per client that must all show the newest models
DOWN_POLLS = 12  # poll intervals that MLflow stays down under traffic
FAILED_LOOKUP = "looking up the batch champion failed"  # the service's warning, MLflow down
# These tests are about reloads, and read every warning of the server's log as one: the query
# log, which would warn that no Kafka takes its messages, is off (test_query_log.py has its own).
NO_QUERY_LOG = {"SERVING_QUERY_LOG": "false"}


@pytest.fixture(scope="module")
def train_rows():
    return training_rows()


def settled_on(traffic: list[Traffic], expected: dict) -> bool:
    """Whether the last `SETTLED` answers of every client show exactly `expected`."""

    def matches(models: dict) -> bool:
        return all(models[key] == value for key, value in expected.items())

    return all(
        len(c.answers) >= SETTLED and all(matches(m) for m in c.latest(SETTLED)) for c in traffic
    )


def workers_on(url: str, version: str, sequence: int | None = None) -> bool:
    """Whether every worker's gauges report champion `version` (and snapshot `sequence`)."""
    gauges = worker_gauges(url)
    return len(gauges) == WORKERS and all(
        g.get("lambda_ml_batch_model_version") == float(version)
        and (sequence is None or g.get("lambda_ml_speed_snapshot_sequence") == float(sequence))
        for g in gauges.values()
    )


def models_since(traffic: list[Traffic], marks: list[int]) -> list[dict]:
    """The models of every answer after `marks` (one answer count per client)."""
    return [m for c, mark in zip(traffic, marks, strict=True) for _, m in c.answers[mark:]]


def warnings_by_worker(log: str, message: str) -> Counter[str]:
    """How many times each worker logged a warning that starts with `message`."""
    pattern = re.compile(rf"\[WARNING\] \[entry_service:\w+:(\d+)\] {re.escape(message)}")
    return Counter(m.group(1) for m in pattern.finditer(log))


def test_many_promotions_and_snapshot_swaps_under_load_fail_no_request(
    mlflow_server: str, tmp_path: Path, train_rows, reliability
):
    """Ten promotions and fifty snapshot swaps, spaced a little more than a poll apart, while
    two clients send requests without pause: each swap replaces the models a request may be
    reading, so a race in the reload shows up as a failed request or a mixed answer."""
    name = f"serving-swaps-{uuid.uuid4().hex[:8]}"
    half = len(train_rows) // 2
    models = [fit_batch(train_rows[:half]), fit_batch(train_rows)]
    snapshots = tmp_path / "snapshots"
    first = register(mlflow_server, name, models[0], {0: 100})
    write_snapshot(snapshots, train_rows[:half], {0: 1000})

    with serving_process(
        mlflow_server, name, snapshots, tmp_path, WORKERS, POLL_S, **NO_QUERY_LOG
    ) as server:
        server.wait_ready(timeout_s=180)
        with running_traffic(server.url, CLIENTS) as traffic:
            wait_until(lambda: settled_on(traffic, {"batch_version": first}))
            marks = [len(c.answers) for c in traffic]
            promoted: list[str] = []
            offsets: list[int] = []
            swaps_started = time.monotonic()
            for swap in range(1, SNAPSHOT_SWAPS + 1):
                offsets.append(1000 + swap)
                write_snapshot(snapshots, train_rows[: half + swap], {0: offsets[-1]})
                if swap % (SNAPSHOT_SWAPS // PROMOTIONS) == 0:
                    cutoff = {0: 100 + len(promoted) + 1}
                    promoted.append(
                        register(mlflow_server, name, models[len(promoted) % 2], cutoff)
                    )
                else:
                    time.sleep(SWAP_SPACING_S)
            last_swap = time.monotonic()
            final = {
                "batch_version": promoted[-1],
                "batch_cutoff_offsets": {"0": 100 + len(promoted)},
                "speed_snapshot_offsets": {"0": offsets[-1]},
            }
            wait_until(lambda: settled_on(traffic, final))
            settle_s = time.monotonic() - last_swap
            final_sequence = SnapshotStore(snapshots).latest_sequence()
            wait_until(lambda: workers_on(server.url, promoted[-1], final_sequence))
        log = server.log_path.read_text() if server.log_path else ""

    answers = models_since(traffic, marks)
    versions_seen = {m["batch_version"] for m in answers} - {first}
    snapshots_seen = {m["speed_snapshot_offsets"]["0"] for m in answers} - {1000}
    failures = [f for c in traffic for f in c.failures]
    sent = sum(len(c.timings) for c in traffic)
    during = [
        seconds
        for c in traffic
        for started, seconds in c.timings
        if swaps_started <= started <= last_swap
    ]
    p99_ms = float(np.percentile(during, 99)) * 1000

    scenario = (
        f"{PROMOTIONS} champion promotions and {SNAPSHOT_SWAPS} snapshot swaps"
        " under steady HTTP load"
    )
    reliability(scenario, "requests sent", sent)
    reliability(scenario, "failed requests", len(failures), "= 0")
    reliability(
        scenario,
        f"promoted versions seen in answers (of {PROMOTIONS})",
        len(versions_seen),
        "includes the last",
    )
    reliability(
        scenario,
        f"swapped snapshots seen in answers (of {SNAPSHOT_SWAPS})",
        len(snapshots_seen),
        "includes the last",
    )
    reliability(scenario, "p99 latency during the swaps (ms)", round(p99_ms, 1))
    reliability(scenario, "seconds from the last swap to all-new answers", round(settle_s, 2))

    assert failures == []
    assert len(set(promoted)) == len(promoted)  # each promotion a new registered version
    assert promoted[-1] in versions_seen and offsets[-1] in snapshots_seen
    # Answers only ever show models that were in use: registered versions and written offsets.
    assert versions_seen <= set(promoted)
    assert snapshots_seen <= set(offsets)
    # A pairing of a champion with the cut-off of another version would be a torn model set.
    assert all(
        m["batch_cutoff_offsets"] == {"0": 100 + promoted.index(m["batch_version"]) + 1}
        for m in answers
        if m["batch_version"] != first
    )
    assert "keeping the models in use" not in log  # no reload failed
    assert not re.search(r"\[(ERROR|CRITICAL)\]", log), log


def logged_with_traceback(log: str) -> list[str]:
    """The log lines followed by a traceback (a chained exception's own traceback follows an
    empty line instead, so one record counts once)."""
    return re.findall(r"^(\S.*)\nTraceback \(most recent call last\)", log, re.MULTILINE)


class ServerLog:
    """The server's log from a mark on, to check what happened in one phase of a test."""

    def __init__(self, path: Path | None) -> None:
        assert path is not None
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self) -> str:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            return handle.read().decode(errors="replace")

    def each_worker_warned(self, message: str, times: int = 1) -> bool:
        counts = warnings_by_worker(self.since_mark(), message)
        return len(counts) == WORKERS and min(counts.values()) >= times


class MlflowOutage:
    """MLflow stopped for at least `DOWN_POLLS` poll intervals under traffic, and what the
    service did meanwhile."""

    def __init__(
        self,
        server: MlflowLauncher,
        url: str,
        traffic: list[Traffic],
        log: ServerLog,
    ) -> None:
        self.server = server
        self.url = url
        self.traffic = traffic
        self.log = log

    def run(self) -> None:
        self.server.down()
        down_at = time.monotonic()
        marks = [len(c.answers) for c in self.traffic]
        failed_before = sum(len(c.failures) for c in self.traffic)
        time.sleep(DOWN_POLLS * POLL_S)
        # Every worker has polled MLflow in vain several times by now.
        wait_until(lambda: self.log.each_worker_warned(FAILED_LOOKUP, DOWN_POLLS // 2))
        self.ready = httpx.get(f"{self.url}/readyz", timeout=10).status_code
        self.gauges = worker_gauges(self.url)
        self.answers = models_since(self.traffic, marks)
        self.failed = sum(len(c.failures) for c in self.traffic) - failed_before
        self.down_s = time.monotonic() - down_at

    @property
    def versions(self) -> list[str]:
        return sorted({m["batch_version"] for m in self.answers})

    @property
    def worker_versions(self) -> list[str]:
        return sorted(f"{g['lambda_ml_batch_model_version']:g}" for g in self.gauges.values())


def test_mlflow_down_during_a_reload_keeps_answering_and_recovers(
    tmp_path: Path, train_rows, reliability
):
    """MLflow fails the service when a new champion is due; requests must not notice.

    1. The alias moves to version 2 while the server cannot deliver its files (its artifact
       folder is moved aside): each worker's download fails. Then the server is stopped, so
       every poll's alias look-up fails too (connection refused). Answers must keep version 1.
    2. With version 2 served again, version 3 is registered and promoted, and the server is
       stopped right after the alias moved: depending on timing, a worker has loaded version 3,
       failed its download, or not seen the alias yet. Answers must be version 2 or 3.

    While MLflow is down (several poll intervals, under traffic) no request may fail, /readyz
    must stay 200, and the failed reloads must be logged as warnings, each run of failures with
    one traceback. When MLflow is back, the service must move to the new champion by itself.
    """
    # Always a server of this test's own: it is stopped mid-test.
    launcher = throwaway_mlflow(tmp_path / "mlflow")
    settings = launcher.settings
    artifacts = launcher.local.home / "artifacts"
    hidden = launcher.local.home / "artifacts.hidden"
    name = f"serving-down-{uuid.uuid4().hex[:8]}"
    snapshots = tmp_path / "snapshots"
    half = len(train_rows) // 2
    assert launcher.up()
    try:
        first = register(settings.uri, name, fit_batch(train_rows), {0: 100})
        write_snapshot(snapshots, train_rows, {0: 110})
        with serving_process(
            settings.uri, name, snapshots, tmp_path, WORKERS, POLL_S, **NO_QUERY_LOG
        ) as server:
            server.wait_ready(timeout_s=180)
            log = ServerLog(server.log_path)
            with running_traffic(server.url, CLIENTS) as traffic:
                wait_until(lambda: settled_on(traffic, {"batch_version": first}))

                second = register(settings.uri, name, fit_batch(train_rows[:half]), {0: 200}, False)
                shutil.move(artifacts, hidden)
                log.mark()
                promote_version(settings.uri, name, second)
                failed_load = f"loading batch champion {name} version {second} failed"
                wait_until(lambda: log.each_worker_warned(failed_load))
                unreachable = MlflowOutage(launcher, server.url, traffic, log)
                unreachable.run()
                shutil.move(hidden, artifacts)
                launcher.up()
                back_at = time.monotonic()
                wait_until(lambda: settled_on(traffic, {"batch_version": second}))
                wait_until(lambda: workers_on(server.url, second))
                second_after_s = time.monotonic() - back_at
                first_phase_log = log.since_mark()

                log.mark()
                third = register(settings.uri, name, fit_batch(train_rows), {0: 300})
                stopped = MlflowOutage(launcher, server.url, traffic, log)
                stopped.run()
                launcher.up()
                back_at = time.monotonic()
                wait_until(lambda: settled_on(traffic, {"batch_version": third}))
                wait_until(lambda: workers_on(server.url, third))
                third_after_s = time.monotonic() - back_at
                second_phase_log = log.since_mark()
            alive_after = server.process is not None and server.process.poll() is None
    finally:
        if hidden.exists() and not artifacts.exists():
            shutil.move(hidden, artifacts)
        launcher.down()

    failures = [f for c in traffic for f in c.failures]
    scenario = "MLflow down during a serving reload (new champion's download failing, then down)"
    reliability(scenario, "seconds MLflow was down under traffic", round(unreachable.down_s, 1))
    reliability(scenario, "requests answered while MLflow was down", len(unreachable.answers))
    reliability(scenario, "failed requests while MLflow was down", unreachable.failed, "= 0")
    reliability(scenario, "version served while down", ",".join(unreachable.versions), f"= {first}")
    reliability(scenario, "/readyz while down", unreachable.ready, "= 200")
    reliability(
        scenario, "seconds to serve version 2 after MLflow returned", round(second_after_s, 2)
    )
    scenario = "MLflow stopped right after the champion alias moved, under traffic"
    reliability(scenario, "seconds MLflow was down under traffic", round(stopped.down_s, 1))
    reliability(scenario, "requests answered while MLflow was down", len(stopped.answers))
    reliability(scenario, "failed requests while MLflow was down", stopped.failed, "= 0")
    reliability(
        scenario,
        "versions served while down",
        ",".join(stopped.versions),
        f"{second} or {third} (if fully loaded)",
    )
    reliability(scenario, "/readyz while down", stopped.ready, "= 200")
    reliability(
        scenario, "seconds to serve version 3 after MLflow returned", round(third_after_s, 2)
    )
    reliability(scenario, "failed requests in the whole test", len(failures), "= 0")

    assert failures == []
    assert alive_after
    assert unreachable.answers and stopped.answers
    assert unreachable.versions == [first]
    assert unreachable.worker_versions == [first] * WORKERS
    assert set(stopped.versions) <= {second, third}
    assert set(stopped.worker_versions) <= {second, third}
    assert len(stopped.worker_versions) == WORKERS
    assert unreachable.ready == stopped.ready == 200
    for phase_log in (first_phase_log, second_phase_log):
        assert not re.search(r"\[(ERROR|CRITICAL)\]", phase_log), phase_log
        assert len(warnings_by_worker(phase_log, FAILED_LOOKUP)) == WORKERS
        # One traceback per worker's run of failures (its first), not one per failed poll.
        with_traceback = logged_with_traceback(phase_log)
        assert len(with_traceback) == WORKERS, with_traceback
        assert all("; 1 in a row)" in line for line in with_traceback), with_traceback
        # Every warning is a failed reload that kept the models in use.
        warnings = [line for line in phase_log.splitlines() if "[WARNING]" in line]
        assert all(line.endswith("keeping the models in use") for line in warnings), warnings
        assert phase_log.count("reading the batch champion works again") == WORKERS
    assert len(warnings_by_worker(first_phase_log, failed_load)) == WORKERS
