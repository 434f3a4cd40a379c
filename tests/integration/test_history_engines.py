"""The two engines of the history pass on the same master dataset, with Spark running for real
in local mode on this machine's Java: the same distinct rows with the same counts, the same
lineage and the same holdout; a retrain on Spark registers and meets the promotion gate like
any other; and the spark engine reads a master dataset on S3 in place, through s3a."""

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from mlflow import MlflowClient

from common.settings import BatchSettings, MlflowSettings
from models.registry import CHALLENGER, CHAMPION, fetch_alias
from pipelines.batch.counts import NoData, split_counts
from pipelines.batch.history import count_history_local
from pipelines.batch.history_spark import count_history_spark
from pipelines.batch.retrain import retrain
from streams.archiver import write_flush
from streams.consumer import Consumed
from streams.dataset import CLINC150_DATA, load_dataset
from streams.master_dataset import archived_positions
from streams.schema import QueryEvent
from tests.integration.cli_processes import cli_env, run_to_end, storage_env

pytestmark = pytest.mark.integration

PARTITIONS = 3
SPARK = "local[2]"


def labelled_rows(intents: int, per_intent: int) -> list[tuple[str, str]]:
    examples = load_dataset(CLINC150_DATA).examples
    chosen = sorted({e.intent for e in examples if e.intent != "oos"})[:intents]
    return [
        (e.text, e.intent)
        for intent in chosen
        for e in [x for x in examples if x.intent == intent][:per_intent]
    ]


def stream(
    rows: list[tuple[str, str]], events: int, seed: int
) -> list[tuple[str, str, str | None]]:
    """`events` (query id, text, intent) events: texts repeat (a skewed draw of `rows`), a tenth
    is unlabelled, and a twentieth re-sends an earlier event under its query id, some of
    them after an unlabelled event of the same id."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(rows))]
    drawn = rng.choices(rows, weights, k=events)
    made: list[tuple[str, str, str | None]] = []
    for n, (text, intent) in enumerate(drawn):
        if made and rng.random() < 0.05:
            made.append(made[rng.randrange(len(made))])  # a re-send: the same event again
        elif rng.random() < 0.1:
            made.append((f"q{seed}-{n}", text, None))
        else:
            made.append((f"q{seed}-{n}", text, intent))
    return made


def archive_events(root, events, start: dict[int, int], flushes: int = 2, settings=None):
    """`events` round-robin over the partitions after `start`, in `flushes` flushes a partition
    over several days, as the archiver writes them; the next offset of each partition."""
    offsets = dict(start)
    day0 = datetime(2026, 11, 1, tzinfo=UTC)
    for partition in range(PARTITIONS):
        mine = events[partition::PARTITIONS]
        size = -(-len(mine) // flushes)
        for chunk in (mine[i : i + size] for i in range(0, len(mine), size)):
            first = offsets[partition]
            consumed = [
                Consumed(
                    QueryEvent(
                        query_id=query_id,
                        ts=day0 + timedelta(minutes=20 * (first + n)),
                        text=text,
                        intent=intent,
                    ),
                    partition,
                    first + n,
                )
                for n, (query_id, text, intent) in enumerate(chunk)
            ]
            write_flush(root, partition, first, first + len(chunk) - 1, consumed, settings)
            offsets[partition] = first + len(chunk)
    return offsets


def expected_counts(events) -> Counter:
    """What both engines must count, worked out directly: the first labelled event of each
    query id among `events`, in (partition, offset) order."""
    seen, counts = set(), Counter()
    for query_id, text, intent in events:
        if intent is None or query_id in seen:
            continue
        seen.add(query_id)
        counts[(text, intent)] += 1
    return counts


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """Two archive rounds over three partitions; the cut-off leaves out the last flush of
    partition 0 and every event of partition 2."""
    root = tmp_path_factory.mktemp("engines-master")
    rows = labelled_rows(intents=12, per_intent=40)
    first = stream(rows, 1500, seed=1)
    middle = archive_events(root, first, {p: 0 for p in range(PARTITIONS)})
    second = stream(rows, 600, seed=2)
    second += first[:50]  # re-sends of the first round's events, in the second round
    archived = archive_events(root, second, middle)
    cutoff = {0: middle[0], 1: archived[1]}
    below = first[0::PARTITIONS] + first[1::PARTITIONS] + second[1::PARTITIONS]
    return root, cutoff, expected_counts(below)


def test_both_engines_count_the_same_rows_and_hold_out_the_same_texts(master):
    root, cutoff, expected = master
    local = count_history_local(root, cutoff)
    spark = count_history_spark(root, cutoff, None, SPARK, {})

    assert (
        dict(zip(zip(local.texts, local.intents, strict=True), local.counts, strict=True))
        == expected
    )
    assert local.texts == spark.texts and local.intents == spark.intents
    assert np.array_equal(local.counts, spark.counts)
    assert int(local.lineage["duplicates_dropped"]) > 0
    same = ("rows", "duplicates_dropped", "ts_min", "ts_max", "cutoff_offsets", "content_hash")
    assert {k: local.lineage[k] for k in same} == {k: spark.lineage[k] for k in same}
    assert (local.lineage["engine"], spark.lineage["engine"]) == ("local", "spark")
    assert spark.lineage["spark_application_id"].startswith("local-")
    assert int(spark.lineage["aggregate_bytes"]) > 0

    local_split, spark_split = split_counts(local, 0.2), split_counts(spark, 0.2)
    assert local_split.holdout_texts and local_split.holdout_texts == spark_split.holdout_texts
    assert np.array_equal(local_split.holdout_weights, spark_split.holdout_weights)
    assert local_split.texts == spark_split.texts


def test_the_spark_engine_finds_nothing_before_the_first_offset(master):
    root, _, _ = master
    with pytest.raises(NoData):
        count_history_spark(root, {0: 0, 1: 0}, None, SPARK, {})


def settings_for(uri: str) -> MlflowSettings:
    name = f"test-{uuid.uuid4().hex[:8]}"
    return MlflowSettings(tracking_uri=uri, registered_model=name, experiment=name)


def test_a_spark_retrain_registers_and_meets_the_gate_like_any_other(mlflow_server, tmp_path):
    rows = labelled_rows(intents=15, per_intent=60)
    archived = archive_events(
        tmp_path, stream(rows, 2000, seed=3), {p: 0 for p in range(PARTITIONS)}
    )
    tracking = settings_for(mlflow_server)
    local = retrain(BatchSettings(master_dir=tmp_path), tracking, "queries")
    assert local.promoted and local.lineage["engine"] == "local"

    archive_events(tmp_path, stream(rows, 600, seed=4), archived)
    spark = BatchSettings(master_dir=tmp_path, engine="spark", spark_master=SPARK)
    result = retrain(spark, tracking, "queries", label_shuffle_seed=7)
    assert not result.promoted and result.champion_scores is not None
    client = MlflowClient(mlflow_server)
    tags = client.get_run(result.run_id).data.tags
    assert tags["lineage.engine"] == "spark" and tags["compared_with_version"] == local.version
    assert tags["lineage.spark_application_id"].startswith("local-")
    assert int(tags["lineage.aggregate_rows"]) == int(tags["lineage.distinct_train_texts"]) + int(
        tags["lineage.distinct_holdout_texts"]
    )
    assert tags["lineage.sample.applied"] == "false"
    name = tracking.registered_model
    assert fetch_alias(client, name, CHALLENGER).version == result.version
    assert fetch_alias(client, name, CHAMPION).version == local.version


def test_retrain_engine_spark_reads_a_master_dataset_on_s3(mlflow_server, object_store):
    """End to end through the CLI, in a process of its own (s3a loads with its first Spark
    session): the master dataset on the session's S3Proxy, read in place by Spark."""
    url = f"{object_store.new_url()}/master"
    rows = labelled_rows(intents=10, per_intent=40)
    archive_events(
        url,
        stream(rows, 1200, seed=5),
        {p: 0 for p in range(PARTITIONS)},
        settings=object_store.settings,
    )
    tracking = settings_for(mlflow_server)
    env = cli_env(
        **storage_env(object_store),
        BATCH_MASTER_DIR=url,
        BATCH_LOCK_PATH=f"{url}-locks/retrain.lock",
        BATCH_SPARK_MASTER=SPARK,
        MLFLOW_TRACKING_URI=mlflow_server,
        MLFLOW_EXPERIMENT=tracking.experiment,
        MLFLOW_REGISTERED_MODEL=tracking.registered_model,
    )
    output = run_to_end(["retrain", "--engine", "spark"], env, timeout_s=900)
    assert "champion" in output, output
    client = MlflowClient(mlflow_server)
    champion = fetch_alias(client, tracking.registered_model, CHAMPION)
    tags = client.get_run(champion.run_id).data.tags
    assert tags["lineage.engine"] == "spark"
    local = count_history_local(
        url, archived_positions(url, object_store.settings), object_store.settings
    )
    assert int(tags["lineage.rows"]) == int(local.lineage["rows"])
    assert tags["lineage.content_hash"] == local.lineage["content_hash"]
    assert int(tags["lineage.aggregate_rows"]) == len(local.texts)
