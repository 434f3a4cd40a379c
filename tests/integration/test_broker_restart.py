"""The broker stopped and restarted mid-stream, twice (SIGTERM, then SIGKILL), under the real
`produce`, `speed` and `archive` jobs: every acknowledged event ends up on the topic, learnt
and archived, and each job carries on by itself once the broker is back.

The test runs a broker of its own (it is the one being stopped), on the same ports and data
directory across restarts, as a broker restarted by an operator would be.
"""

import re
import threading
import time
import uuid
from collections.abc import Iterator

import psutil
import pyarrow.compute as pc
import pytest

from common.settings import KafkaSettings
from models.snapshot import SnapshotStore, merge_snapshots
from pipelines.services.broker import KafkaLauncher
from streams.master_dataset import archived_positions, history
from streams.producer import ProduceStats, make_producer, publish
from streams.schema import parse_event
from tests.integration.cli_processes import RunningJobs, caught_up, stream_jobs_env
from tests.integration.conftest import throwaway_broker
from tests.integration.kafka_reading import end_offsets, read_all

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SCENARIO = "broker stopped and restarted mid-stream"
EVENTS = 32_000
RATE = 400  # events/s: an 80 s stream, longer than two outages (about 20 s each) and recoveries
PARTITIONS = 3
OUTAGE_S = 8.0
RECOVERY_BOUND_S = 30.0


@pytest.fixture
def own_broker(tmp_path) -> Iterator[KafkaLauncher]:
    launcher = throwaway_broker(tmp_path / "kafka", partitions=PARTITIONS)
    with launcher.running():
        yield launcher


def progress(store: SnapshotStore, master, settings: KafkaSettings) -> dict[str, int]:
    """How far each job has got: events on the topic, learnt, archived."""
    snapshots = store.latest_per_partition().values()
    return {
        "produce": sum(end_offsets(settings.bootstrap, settings.topic).values()),
        "speed": sum(sum(s.offsets.values()) for s in snapshots),
        "archive": sum(archived_positions(master).values()) if master.exists() else 0,
    }


def outage(launcher: KafkaLauncher, hard: bool) -> float:
    """Stop the broker (SIGTERM, or SIGKILL to its process and children), wait `OUTAGE_S`,
    start it again; returns the seconds from the stop to the broker answering again (a broker
    stopped cleanly first shuts down in order, a killed one recovers its logs at start)."""
    stopping = time.monotonic()
    if hard:
        pid = launcher.status().pid
        assert pid is not None
        java = psutil.Process(pid)
        tree = [java, *java.children(recursive=True)]
        for process in tree:
            process.kill()
        psutil.wait_procs(tree, timeout=10)
    else:
        launcher.down()
    time.sleep(OUTAGE_S)
    launcher.up()
    return time.monotonic() - stopping


def test_jobs_recover_by_themselves_and_no_acknowledged_event_is_lost(
    own_broker: KafkaLauncher, tmp_path, reliability
):
    settings = own_broker.settings
    run_id = f"restart-{uuid.uuid4().hex[:8]}"
    snapshots, master = tmp_path / "snapshots", tmp_path / "master"
    env = stream_jobs_env(settings, tmp_path)
    produce = ["produce", "--limit", str(EVENTS), "--rate", str(RATE), "--unlabelled", "0.1"]
    jobs_args = {
        "produce": [*produce, "--run-id", run_id],
        "speed": ["speed"],
        "archive": ["archive"],
    }
    store = SnapshotStore(snapshots)
    recoveries: list[dict[str, float]] = []
    outage_s: list[float] = []
    with RunningJobs(jobs_args, env, tmp_path / "logs") as jobs:
        for hard in (False, True):
            before = progress(store, master, settings)
            jobs.wait_until(
                lambda before=before: all(
                    now > before[job] for job, now in progress(store, master, settings).items()
                ),
                "every job working",
                timeout_s=60,
            )
            outage_s.append(outage(own_broker, hard))
            back_at = time.monotonic()
            at_restart = progress(store, master, settings)
            recovered: dict[str, float] = {}

            def all_moved(at_restart=at_restart, recovered=recovered, back_at=back_at) -> bool:
                for job, now in progress(store, master, settings).items():
                    if job not in recovered and now > at_restart[job]:
                        recovered[job] = time.monotonic() - back_at
                return len(recovered) == 3

            jobs.wait_until(all_moved, "every job moving again", timeout_s=RECOVERY_BOUND_S)
            recoveries.append(recovered)
        jobs.wait_for_exit("produce", timeout_s=180)
        ends = end_offsets(settings.bootstrap, settings.topic)
        jobs.wait_until(lambda: caught_up(store, master, ends), "caught up", timeout_s=120)

    produced = (tmp_path / "logs" / "produce.log").read_text()
    sent, failed = map(int, re.search(r"sent (\d+) events .*?; (\d+) failed", produced).groups())
    records = read_all(settings.bootstrap, settings.topic, sum(ends.values()))
    events = [parse_event(r.value) for r in records]
    on_topic = {e.query_id for e in events}
    expected = {str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{i}")) for i in range(EVENTS)}
    archived = history(master).to_table(columns=["query_id"])
    labelled = sum(e.intent is not None for e in events)

    for kind, recovered, down_s in zip(("SIGTERM", "SIGKILL"), recoveries, outage_s, strict=True):
        reliability(SCENARIO, f"broker away, {kind} to answering again (s)", down_s)
        for job, seconds in recovered.items():
            reliability(SCENARIO, f"{job} moving again after {kind} restart (s)", seconds, "< 30")
    reliability(SCENARIO, "events acknowledged to the producer", sent, f"{EVENTS:,} sent")
    reliability(SCENARIO, "sends failed", failed, "= 0")
    reliability(
        SCENARIO, "acknowledged events lost from the topic", len(expected - on_topic), "= 0"
    )
    reliability(SCENARIO, "duplicates on the topic", len(events) - len(on_topic), "= 0")
    reliability(SCENARIO, "events archived", archived.num_rows, f"= {len(events):,} on topic")
    learnt = merge_snapshots(store.latest_per_partition()).events_learnt
    reliability(SCENARIO, "events learnt", learnt, f"= {labelled:,} labelled")
    reliability(SCENARIO, "jobs' exit codes after SIGTERM", str(sorted(jobs.codes.values())))
    assert (sent, failed) == (EVENTS, 0)
    assert on_topic == expected
    assert len(events) == len(on_topic)
    assert archived.num_rows == len(events)
    assert pc.count_distinct(archived["query_id"]).as_py() == len(on_topic)
    assert learnt == labelled
    assert jobs.codes == {"produce": 0, "speed": 0, "archive": 0}, jobs.logs


def test_a_replay_waits_for_a_broker_that_is_away_longer_than_the_producer_blocks(
    own_broker: KafkaLauncher, reliability
):
    """The producer gives up taking a record after `max_block_ms` (60 s by default; 0.5 s
    here): `publish` must wait for the broker instead of failing the replay."""
    settings = own_broker.settings
    messages = [
        f'{{"query_id":"away-{i}","ts":"2026-11-27T10:00:00Z","text":"set an alarm"}}'.encode()
        for i in range(200)
    ]
    producer = make_producer(settings, max_block_ms=500)
    own_broker.down()
    outcome: list[ProduceStats] = []
    replay = threading.Thread(target=lambda: outcome.append(publish(producer, settings, messages)))
    replay.start()
    time.sleep(OUTAGE_S / 2)
    own_broker.up()
    replay.join(60)
    producer.close()
    assert not replay.is_alive(), "the replay never finished"
    records = read_all(settings.bootstrap, settings.topic, len(messages))
    stats = outcome[0]
    reliability(SCENARIO, "replay started with the broker away: events sent", stats.sent, "= 200")
    reliability(SCENARIO, "replay started with the broker away: sends failed", stats.failed, "= 0")
    assert (stats.sent, stats.failed) == (len(messages), 0)
    assert sorted(r.value for r in records) == sorted(messages)
