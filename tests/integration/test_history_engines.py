"""The two engines of the history pass on the same master dataset, with Spark running for real
in local mode on this machine's Java: the same distinct rows with the same counts, the same
lineage and the same holdout; labels of the feedback topic joined to their queries by the same
rule (inline labels, late ones, second ones, labels without a query, queries without a label,
repeated query ids); a retrain on Spark registers and meets the promotion gate like any other;
and the spark engine reads a master dataset on S3 in place, through s3a."""

import random
import uuid
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from mlflow import MlflowClient

from common.settings import BatchSettings, MlflowSettings
from models.registry import (
    CHALLENGER,
    CHAMPION,
    CUTOFF_TAG,
    FEEDBACK_CUTOFF_TAG,
    decode_offsets,
    fetch_alias,
)
from pipelines.batch.counts import NoData, split_counts
from pipelines.batch.history import count_history_local
from pipelines.batch.history_spark import count_history_spark
from pipelines.batch.retrain import NothingNew, retrain
from streams.archiver import write_flush
from streams.consumer import Consumed
from streams.dataset import CLINC150_DATA, load_dataset
from streams.master_dataset import FEEDBACK, Cutoff, archived_cutoff, archived_positions
from streams.master_dataset import write_flush as archive
from streams.schema import FeedbackEvent, QueryEvent
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


def local_and_spark(root, cutoff):
    """Both engines' counts of `root` up to `cutoff`, checked identical (rows, counts and every
    lineage figure but the engine's own); the local engine's."""
    local = count_history_local(root, cutoff)
    spark = count_history_spark(root, cutoff, None, SPARK, {})
    assert local.texts == spark.texts and local.intents == spark.intents
    assert np.array_equal(local.counts, spark.counts)
    own = {"engine", "spark_master", "spark_application_id", "aggregate_bytes"}
    assert {k: v for k, v in spark.lineage.items() if k not in own} == {
        k: v for k, v in local.lineage.items() if k != "engine"
    }
    return local


def archive_at(root, partition, first, events):
    """`events` (QueryEvent or FeedbackEvent) as one flush of `partition` from offset `first`."""
    topic = {"topic": FEEDBACK} if isinstance(events[0], FeedbackEvent) else {}
    located = [Consumed(e, partition, first + n) for n, e in enumerate(events)]
    archive(root, partition, first, first + len(events) - 1, located, **topic)


def test_labels_join_their_queries_by_the_same_rule_on_both_engines(tmp_path):
    """Every case of the join, by hand: the counted rows and each lineage figure."""
    ts = datetime(2026, 11, 2, 9, tzinfo=UTC)

    def query(query_id, text, intent=None, minutes=0):
        return QueryEvent(
            query_id=query_id, ts=ts + timedelta(minutes=minutes), text=text, intent=intent
        )

    def label(query_id, intent):
        return FeedbackEvent(query_id=query_id, intent=intent, ts=ts, source="test")

    archive_at(
        tmp_path,
        0,
        0,
        [
            query("inline", "wake me at six", "alarm", minutes=1),
            query("late", "what is the weather", minutes=2),
            query("relabelled", "play jazz", "weather", minutes=3),
            query("twice", "set a timer", minutes=4),
            query("unlabelled", "hello there", minutes=5),
            query("late", "what is the weather", "alarm", minutes=6),  # a repeat: dropped
            query("beyond", "cut off", "alarm", minutes=7),  # past the queries' cut-off
        ],
    )
    archive_at(tmp_path, 1, 0, [query("resent", "turn on the lights", minutes=8)])
    archive_at(
        tmp_path,
        0,
        0,
        [
            label("late", "weather"),
            label("relabelled", "music"),
            label("twice", "alarm"),
            label("never-asked", "music"),  # no such query
            label("twice", "timer"),  # the second label wins
            label("beyond", "music"),  # its query is past the cut-off
            label("inline", "music"),  # past the feedback cut-off
        ],
    )
    archive_at(tmp_path, 1, 0, [label("resent", "lights")])
    archive_at(tmp_path, 2, 0, [query("resent", "turn on the lights", "alarm")])  # a repeat
    cutoff = Cutoff(queries={0: 6, 1: 1, 2: 1}, feedback={0: 6, 1: 1})

    counts = local_and_spark(tmp_path, cutoff)

    assert list(zip(counts.texts, counts.intents, counts.counts.tolist(), strict=True)) == [
        ("play jazz", "music", 1.0),
        ("set a timer", "timer", 1.0),
        ("turn on the lights", "lights", 1.0),
        ("wake me at six", "alarm", 1.0),
        ("what is the weather", "weather", 1.0),
    ]
    figures = {
        k: counts.lineage[k]
        for k in (
            "queries",
            "duplicates_dropped",
            "rows",
            "queries_without_label",
            "labels_inline",
            "labels_joined",
            "labels_superseded",
            "labels_without_query",
            "feedback_labels",
            "ts_min",
            "ts_max",
            "cutoff_offsets",
            "cutoff_feedback_offsets",
        )
    }
    assert figures == {
        "queries": "6",
        "duplicates_dropped": "2",
        "rows": "5",
        "queries_without_label": "1",
        "labels_inline": "1",
        "labels_joined": "4",
        "labels_superseded": "2",  # relabelled's inline label, twice's first label
        "labels_without_query": "2",  # never-asked, and beyond (its query is past the cut-off)
        "feedback_labels": "7",
        "ts_min": "2026-11-02T09:01:00+00:00",
        "ts_max": "2026-11-02T09:08:00+00:00",
        "cutoff_offsets": '{"0": 6, "1": 1, "2": 1}',
        "cutoff_feedback_offsets": '{"0": 6, "1": 1}',
    }
    # A cut-off of queries offsets alone (a record made before labels had a topic): inline only.
    inline_only = local_and_spark(tmp_path, cutoff.queries)
    assert list(zip(inline_only.texts, inline_only.intents, strict=True)) == [
        ("play jazz", "weather"),
        ("wake me at six", "alarm"),
    ]
    assert inline_only.lineage["feedback_labels"] == "0"
    assert inline_only.lineage["queries_without_label"] == "4"


def late_labels(events, share: float, seed: int):
    """Labels for `events` (query id, text, intent): for a `share` of the query ids, one or two
    labels (the second one another intent), and labels for query ids that were never asked."""
    rng = random.Random(seed)
    intents = sorted({intent for _, _, intent in events if intent})
    made = []
    for query_id in sorted({query_id for query_id, _, _ in events}):
        if rng.random() < share:
            made.append((query_id, rng.choice(intents)))
            if rng.random() < 0.2:
                made.append((query_id, rng.choice(intents)))
        if rng.random() < 0.03:
            made.append((f"never-{query_id}", rng.choice(intents)))
    rng.shuffle(made)
    return made


def expected_join(queries, labels) -> tuple[Counter, dict[str, int]]:
    """What both engines must count, worked out directly from the join rule: `queries` as
    (partition, offset, query id, text, intent) and `labels` as (partition, offset, query id,
    intent) below the cut-off."""
    first: dict[str, tuple[str, str | None]] = {}
    for _, _, query_id, text, intent in sorted(queries):
        first.setdefault(query_id, (text, intent))
    last: dict[str, str] = {}
    for _, _, query_id, intent in sorted(labels):
        last[query_id] = intent
    counts: Counter = Counter()
    for query_id, (text, intent) in first.items():
        if query_id in last or intent is not None:
            counts[(text, last.get(query_id, intent))] += 1
    of_a_query = sum(query_id in first for _, _, query_id, _ in labels)
    replaced_inline = sum(first[q][1] is not None for q in last if q in first)
    joined = sum(q in first for q in last)
    figures = {
        "queries": len(first),
        "duplicates_dropped": len(queries) - len(first),
        "rows": sum(counts.values()),
        "labels_joined": joined,
        "labels_inline": sum(i is not None for _, i in first.values()) - replaced_inline,
        "labels_superseded": of_a_query - joined + replaced_inline,
        "labels_without_query": len(labels) - of_a_query,
    }
    return counts, figures


def test_late_labels_of_a_stream_are_joined_alike_by_both_engines(tmp_path):
    """A stream whose queries are labelled inline, late, twice, or never, with repeats and
    labels for queries never asked, archived in several flushes, read up to a cut-off that
    leaves out the last flush of a partition of each topic."""
    rows = labelled_rows(intents=8, per_intent=30)
    events = stream(rows, 900, seed=11)
    events = [(q, t, i if n % 3 else None) for n, (q, t, i) in enumerate(events)]  # a third late
    ends = archive_events(tmp_path, events, {p: 0 for p in range(PARTITIONS)}, flushes=3)
    partition_of = {q: n % PARTITIONS for n, (q, _, _) in enumerate(events)}
    labels = late_labels(events, share=0.5, seed=12)
    label_ends = {p: 0 for p in range(PARTITIONS)}
    archived_labels = []
    for partition in range(PARTITIONS):
        mine = [
            (q, i)
            for q, i in labels
            if partition_of.get(q, zlib.crc32(q.encode()) % PARTITIONS) == partition
        ]
        for chunk in (mine[: len(mine) // 2], mine[len(mine) // 2 :]):
            first = label_ends[partition]
            archive_at(
                tmp_path,
                partition,
                first,
                [
                    FeedbackEvent(query_id=q, intent=i, ts=datetime(2026, 11, 5, tzinfo=UTC))
                    for q, i in chunk
                ],
            )
            archived_labels += [(partition, first + n, q, i) for n, (q, i) in enumerate(chunk)]
            label_ends[partition] = first + len(chunk)
    assert archived_cutoff(tmp_path) == Cutoff(ends, label_ends)
    cutoff = Cutoff(queries=ends | {0: ends[0] - 50}, feedback=label_ends | {1: label_ends[1] // 2})
    queries = [
        (n % PARTITIONS, n // PARTITIONS, q, t, i)
        for n, (q, t, i) in enumerate(events)
        if n // PARTITIONS < cutoff.queries[n % PARTITIONS]
    ]
    below = [x for x in archived_labels if x[1] < cutoff.feedback[x[0]]]
    expected, figures = expected_join(queries, below)

    counts = local_and_spark(tmp_path, cutoff)

    pairs = zip(counts.texts, counts.intents, strict=True)
    assert dict(zip(pairs, counts.counts.tolist(), strict=True)) == expected
    assert {k: int(counts.lineage[k]) for k in figures} == figures
    assert all(figures[k] > 0 for k in figures)  # every case of the join occurred
    assert int(counts.lineage["feedback_labels"]) == len(below)
    assert int(counts.lineage["queries_without_label"]) == figures["queries"] - figures["rows"]


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


def test_a_retrain_joins_late_labels_and_new_labels_alone_are_something_new(
    mlflow_server, tmp_path
):
    """A third of the queries labelled on the feedback topic only: the run trains on them and
    records the cut-off of both topics, on the run and on the version; labels archived since
    (second labels, nothing else) make the next run something new, and then nothing is."""
    rows = labelled_rows(intents=15, per_intent=60)
    events = stream(rows, 2000, seed=21)
    late = {q: i for n, (q, _, i) in enumerate(events) if n % 3 == 0 and i is not None}
    events = [(q, t, None if q in late else i) for q, t, i in events]
    archive_events(tmp_path, events, {p: 0 for p in range(PARTITIONS)})
    partition_of = {q: n % PARTITIONS for n, (q, _, _) in enumerate(events)}
    labels_of = {
        p: [(q, i) for q, i in late.items() if partition_of[q] == p] for p in range(PARTITIONS)
    }
    stamp = datetime(2026, 11, 20, tzinfo=UTC)
    for partition, labels in labels_of.items():
        archive_at(
            tmp_path,
            partition,
            0,
            [FeedbackEvent(query_id=q, intent=i, ts=stamp) for q, i in labels],
        )
    tracking = settings_for(mlflow_server)
    batch = BatchSettings(master_dir=tmp_path)
    client = MlflowClient(mlflow_server)

    first = retrain(batch, tracking, "queries")
    cutoff = archived_cutoff(tmp_path)
    assert cutoff.feedback == {p: len(labels) for p, labels in labels_of.items()}
    run = client.get_run(first.run_id).data.tags
    assert int(run["lineage.labels_joined"]) == len(late)
    assert run["lineage.labels_without_query"] == "0"
    assert decode_offsets(run["lineage.cutoff_feedback_offsets"]) == cutoff.feedback
    version = client.get_model_version(tracking.registered_model, first.version).tags
    assert decode_offsets(version[CUTOFF_TAG]) == cutoff.queries
    assert decode_offsets(version[FEEDBACK_CUTOFF_TAG]) == cutoff.feedback

    seconds = labels_of[0][:20]
    archive_at(
        tmp_path,
        0,
        cutoff.feedback[0],
        [FeedbackEvent(query_id=q, intent=i, ts=stamp) for q, i in seconds],
    )
    second = retrain(batch, tracking, "queries")
    assert second.version != first.version
    assert int(second.lineage["labels_superseded"]) == len(seconds)
    with pytest.raises(NothingNew):
        retrain(batch, tracking, "queries")


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
