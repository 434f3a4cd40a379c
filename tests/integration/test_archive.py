"""The archiver keeps every event exactly once through kill -9 at random moments, and keeps the
feedback topic's labels beside the queries."""

import io
import random
import threading
import uuid

import pyarrow.compute as pc
import pytest
from rich.console import Console

from common.settings import ArchiveSettings
from pipelines.jobs import run_archive
from pipelines.produce import ReplayOptions, run_produce
from streams.master_dataset import (
    Cutoff,
    _flush_files,
    archived_cutoff,
    feedback_history,
    history,
)
from streams.schema import parse_event, parse_feedback
from tests.integration.cli_processes import cli_env, kill_mid_work, run_to_end
from tests.integration.kafka_reading import end_offsets, read_all

pytestmark = pytest.mark.integration

EVENTS = 20_000
KILLS = 8
RATE = 400  # events/s: the live replay (50 s) outlasts 8 kill-and-restart cycles with room


@pytest.mark.reliability
def test_kill_9_at_random_points_loses_and_repeats_nothing(kafka, tmp_path, reliability):
    settings = kafka.fresh_settings(partitions=3)
    options = ReplayOptions(limit=EVENTS, rate=RATE, unlabelled_fraction=0.2, span_days=3)
    producer = threading.Thread(
        target=run_produce, args=(settings, options, Console(file=io.StringIO()))
    )
    master = tmp_path / "master"
    env = cli_env(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap,
        KAFKA_TOPIC=settings.topic,
        KAFKA_DLQ_TOPIC=settings.dlq_topic,
        BATCH_MASTER_DIR=master,
        ARCHIVE_FLUSH_EVERY_EVENTS=1500,
        ARCHIVE_FLUSH_EVERY_S=0.2,
    )
    rng = random.Random(2026)
    kills = 0
    producer.start()  # a live stream: the archiver is killed while events keep arriving
    try:
        for _ in range(2 * KILLS):
            if kills == KILLS or not producer.is_alive():
                break
            flushed = len(_flush_files(master)) if master.exists() else 0
            kills += kill_mid_work(
                ["archive", "--idle-exit", "3"],
                env,
                working=lambda before=flushed: (
                    master.exists() and len(_flush_files(master)) > before
                ),
                rng=rng,
                max_delay_s=0.5,
            )
    finally:
        producer.join()
    scenario = f"archiver kill -9 during a live {EVENTS:,}-event replay"
    reliability(scenario, "kills landed mid-stream", kills, f"= {KILLS}")
    assert kills == KILLS, f"only {kills} kills landed while the stream was live"
    run_to_end(["archive", "--idle-exit", "3"], env)

    table = history(master).to_table(columns=["query_id", "partition", "offset"])
    distinct = pc.count_distinct(table["query_id"]).as_py()
    reliability(scenario, "events lost", EVENTS - distinct, "= 0")
    reliability(scenario, "events duplicated", table.num_rows - distinct, "= 0")
    assert table.num_rows == EVENTS
    assert distinct == EVENTS
    pairs = set(zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True))
    assert len(pairs) == EVENTS


def test_the_archiver_keeps_the_labels_beside_the_queries_and_resumes_each_topic(kafka, tmp_path):
    settings = kafka.fresh_settings(partitions=2)
    archive = ArchiveSettings(
        group_id=f"archive-{uuid.uuid4().hex[:8]}", flush_every_events=300, flush_every_s=0.2
    )
    master = tmp_path / "master"
    for run_id in ("first", "second"):  # the second run resumes where the first stopped
        options = ReplayOptions(limit=2000, label_delay=100, label_share=0.3, run_id=run_id)
        run_produce(settings, options, Console(file=io.StringIO()))
        run_archive(settings, master, archive, threading.Event(), idle_exit_s=2)

    queries = read_all(settings.bootstrap, settings.topic, 4000)
    labels = read_all(settings.bootstrap, settings.feedback_topic, 1)
    assert 1000 < len(labels) < 1400
    cutoff = archived_cutoff(master)
    assert cutoff == Cutoff(
        queries=end_offsets(settings.bootstrap, settings.topic),
        feedback=end_offsets(settings.bootstrap, settings.feedback_topic),
    )
    archived = history(master).to_table(columns=["query_id"])
    assert sorted(archived["query_id"].to_pylist()) == sorted(
        parse_event(r.value).query_id for r in queries
    )
    archived_labels = feedback_history(master).to_table().to_pylist()
    assert len(archived_labels) == len(labels)  # each once
    assert {(r["partition"], r["offset"]) for r in archived_labels} == {
        (r.partition, r.offset) for r in labels
    }
    assert {(r["query_id"], r["intent"]) for r in archived_labels} == {
        (e.query_id, e.intent) for e in (parse_feedback(r.value) for r in labels)
    }
