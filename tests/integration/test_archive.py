"""The archiver keeps every event exactly once through kill -9 at random moments."""

import io
import random
import threading

import pyarrow.compute as pc
import pytest
from rich.console import Console

from pipelines.produce import ReplayOptions, run_produce
from streams.master_dataset import _flush_files, history
from tests.integration.cli_processes import cli_env, kill_mid_work, run_to_end

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

EVENTS = 50_000
KILLS = 20
RATE = 400  # events/s: the live replay (125 s) outlasts 20 kill-and-restart cycles with room


def test_kill_9_at_random_points_loses_and_repeats_nothing(kafka, tmp_path, reliability):
    settings = kafka.settings.model_copy(
        update={"topic": kafka.new_topic(partitions=3), "dlq_topic": kafka.new_topic()}
    )
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
