"""`lambda-ml produce` with late, partial labels onto the real broker: the queries without their
intent, and on the feedback topic the labels of the chosen share, each on its query's partition,
stamped the delay after it."""

from datetime import datetime, timedelta

import pytest
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.produce import ReplayOptions, replay_messages
from streams.producer import FeedbackMessage
from streams.schema import parse_event, parse_feedback
from tests.integration.kafka_reading import read_all

pytestmark = pytest.mark.integration

QUERIES = 600
DELAY = 50
SHARE = 0.3


@pytest.fixture
def topics(kafka):
    """Settings pointing at fresh topics: queries and labels with three partitions each."""
    return kafka.fresh_settings(partitions=3)


def ts(raw_ts: str) -> datetime:
    return datetime.fromisoformat(raw_ts.replace("Z", "+00:00"))


def test_produce_sends_queries_without_labels_and_the_late_labels_of_a_share(topics):
    options = ReplayOptions(
        limit=QUERIES, label_delay=DELAY, label_share=SHARE, seed=5, run_id="late", span_days=1
    )
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap,
        "KAFKA_TOPIC": topics.topic,
        "KAFKA_FEEDBACK_TOPIC": topics.feedback_topic,
        "KAFKA_DLQ_TOPIC": topics.dlq_topic,
    }
    arguments = ["produce", "--limit", str(QUERIES), "--seed", "5", "--run-id", "late"]
    arguments += ["--span-days", "1", "--label-delay", str(DELAY), "--label-share", str(SHARE)]
    result = CliRunner().invoke(app, arguments, env=env)
    assert result.exit_code == 0, result.output

    planned = list(replay_messages(options)[1])
    planned_labels = [parse_feedback(m) for m in planned if isinstance(m, FeedbackMessage)]
    planned_queries = [parse_event(m) for m in planned if not isinstance(m, FeedbackMessage)]
    order = {query.query_id: n for n, query in enumerate(planned_queries)}
    assert len(order) == QUERIES
    assert f"sent {len(planned)} events to {topics.topic} and {topics.feedback_topic}" in (
        result.output
    )
    assert abs(len(planned_labels) / QUERIES - SHARE) < 0.06

    queries = read_all(topics.bootstrap, topics.topic, QUERIES)
    labels = read_all(topics.bootstrap, topics.feedback_topic, len(planned_labels))
    assert len(queries) == QUERIES and len(labels) == len(planned_labels)
    asked = {parse_event(r.value).query_id: (r, parse_event(r.value)) for r in queries}
    assert set(asked) == set(order)
    assert all(event.intent is None for _, event in asked.values())

    received = {parse_feedback(r.value).query_id: r for r in labels}
    assert {label.query_id: label.intent for label in planned_labels} == {
        query_id: parse_feedback(r.value).intent for query_id, r in received.items()
    }
    step = timedelta(days=1) / QUERIES
    exact = 0
    for query_id, record in received.items():
        query_record, query = asked[query_id]
        assert record.partition == query_record.partition  # keyed alike: on its query's partition
        label = parse_feedback(record.value)
        assert label.source == "replay"
        waited = label.ts - query.ts
        if order[query_id] + DELAY < QUERIES:
            assert abs(waited - DELAY * step) < timedelta(milliseconds=1)
            exact += 1
        else:  # pending when the queries ended: after the last one
            assert timedelta(0) <= waited < DELAY * step
    assert exact > 0
    dead = read_all(topics.bootstrap, topics.dlq_topic, 0, timeout_s=2)
    assert dead == []
