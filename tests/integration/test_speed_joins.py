"""A speed worker joins late labels from the feedback topic on the real broker, and kill -9 with
labels pending loses and repeats none of them. The join's rules (label before its query, past
the window, orphans, second labels, re-bases) run at one and two workers in
tests/unit/test_speed_layer.py over a group in memory."""

import io
import random

import pytest
from rich.console import Console

from models.snapshot import SnapshotStore, merge_snapshots
from models.speed_model import build_speed_model
from pipelines.produce import ReplayOptions, run_produce
from streams.schema import parse_event, parse_feedback
from tests.integration.cli_processes import kill_mid_work, run_to_end, stream_jobs_env
from tests.integration.kafka_reading import read_all

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

QUERIES = 6000
KILLS = 3


def test_kill_9_with_labels_pending_learns_each_late_label_once(kafka, tmp_path, reliability):
    settings = kafka.fresh_settings(partitions=2)
    options = ReplayOptions(limit=QUERIES, label_delay=300, label_share=0.3, run_id="joins")
    run_produce(settings, options, Console(file=io.StringIO()))
    texts = {
        event.query_id: event.text
        for event in (
            parse_event(r.value) for r in read_all(settings.bootstrap, settings.topic, QUERIES)
        )
    }
    labels = [
        parse_feedback(r.value) for r in read_all(settings.bootstrap, settings.feedback_topic, 1)
    ]
    assert 0.25 * QUERIES < len(labels) < 0.35 * QUERIES and all(
        e.query_id in texts for e in labels
    )

    env = stream_jobs_env(
        settings,
        tmp_path,
        KAFKA_FEEDBACK_TOPIC=settings.feedback_topic,
        SPEED_SNAPSHOT_EVERY_EVENTS=200,
        SPEED_GROUP_ID="joins",
        SPEED_SESSION_TIMEOUT_MS=6000,  # a worker killed keeps its partitions until then
        SPEED_HEARTBEAT_INTERVAL_MS=1000,
    )
    store = SnapshotStore(tmp_path / "snapshots")
    rng = random.Random(5)
    kills = 0
    for _ in range(3 * KILLS):  # a job that ends before its kill is started again
        if kills == KILLS:
            break
        before = sum(store.latest_sequences().values())
        kills += kill_mid_work(
            ["speed", "--idle-exit", "3"],
            env,
            working=lambda before=before: sum(store.latest_sequences().values()) > before,
            rng=rng,
            max_delay_s=0.3,
        )
    run_to_end(["speed", "--idle-exit", "3"], env)

    latest = store.latest_per_partition()
    whole = merge_snapshots(latest)
    single = build_speed_model()
    for label in labels:
        single.learn_one({"text": texts[label.query_id]}, label.intent)
    scenario = "speed worker kill -9 with late labels pending"
    reliability(scenario, "kills landed mid-work", kills, f"= {KILLS}")
    reliability(scenario, "late labels", len(labels))
    reliability(scenario, "labels learnt after restarts", whole.events_learnt, "= late labels")
    assert kills == KILLS, f"only {kills} kills landed mid-work"
    assert whole.events_learnt == len(labels)
    assert whole.model.count_table() == single.count_table()  # each label once, none lost
    assert sum(whole.feedback_offsets.values()) == len(labels)  # every label read
    assert not read_all(settings.bootstrap, settings.dlq_topic, 0)  # and none rejected
