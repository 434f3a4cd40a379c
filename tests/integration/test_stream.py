"""The producer and the dead-letter path against the real broker."""

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.produce import ReplayOptions, replay_messages, run_produce
from streams.consumer import EventReader, make_consumer
from streams.producer import make_producer, publish
from streams.schema import parse_event
from tests.dead_letter_headers import dead_letter_reason
from tests.integration.kafka_reading import read_all

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka):
    """Settings pointing at a fresh topic and a fresh dead-letter topic."""
    return kafka.fresh_settings(partitions=3)


def test_a_replay_is_read_back_whole_with_its_offsets(topics):
    options = ReplayOptions(scenario="new-domain", limit=3000, unlabelled_fraction=0.1, seed=7)
    stats = run_produce(topics, options, Console(file=io.StringIO()))
    assert (stats.sent, stats.failed, stats.dead_lettered) == (3000, 0, 0)

    records = read_all(topics.bootstrap, topics.topic, 3000)
    assert len(records) == 3000
    by_partition: dict[int, list[int]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record.offset)
    assert len(by_partition) == 3
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))

    expected = {}
    for raw in replay_messages(options)[1]:
        event = parse_event(raw)
        expected[event.query_id] = (event.text, event.intent)
    received = {e.query_id: (e.text, e.intent) for e in (parse_event(r.value) for r in records)}
    assert received == expected
    assert sum(intent is None for _, intent in received.values()) == pytest.approx(300, abs=60)


def test_invalid_messages_go_to_the_dead_letter_topic_with_reason_and_bytes(topics):
    good = json.dumps({"query_id": "ok-1", "ts": "2026-11-27T08:00:00Z", "text": "hello"}).encode()
    bad = [
        b"{not json",
        b"\xff\xfe",
        json.dumps({"query_id": "x", "ts": "2026-11-27T08:00:00Z"}).encode(),
    ]
    producer = make_producer(topics)
    try:
        stats = publish(producer, topics, [good, *bad])
    finally:
        producer.close()
    assert (stats.sent, stats.dead_lettered) == (1, 3)
    dead = read_all(topics.bootstrap, topics.dlq_topic, 3)
    assert sorted(r.value for r in dead) == sorted(bad)
    reasons = {r.value: dead_letter_reason(r.headers) for r in dead}
    assert reasons[b"{not json"]["dlq.reason"].startswith("not JSON")
    assert reasons[b"\xff\xfe"]["dlq.reason"].startswith("not UTF-8")
    assert "text: Field required" in reasons[bad[2]]["dlq.reason"]
    assert {h["dlq.stage"] for h in reasons.values()} == {"produce"}


def test_the_reader_dead_letters_bad_messages_and_keeps_going(topics):
    raw = make_producer(topics)
    good = [
        json.dumps({"query_id": f"g{i}", "ts": "2026-11-27T08:00:00Z", "text": f"t{i}"}).encode()
        for i in range(5)
    ]
    for value in [good[0], b"garbage", good[1], b'{"text": 5}', *good[2:]]:
        raw.send(topics.topic, value=value, partition=0)
    raw.flush()
    consumer = make_consumer(topics, "test-reader")
    try:
        reader = EventReader(consumer, raw, topics, stage="speed")
        seen = []
        for _ in range(20):
            seen.extend(reader.poll(timeout_ms=300))
            if len(seen) == 5:
                break
        reader.flush_dead_letters()
        assert [c.event.query_id for c in seen] == [f"g{i}" for i in range(5)]
        assert reader.positions[0] == 7 and reader.dead_lettered == 2
    finally:
        consumer.close()
        raw.close()
    dead = read_all(topics.bootstrap, topics.dlq_topic, 2)
    assert sorted(dead_letter_reason(r.headers)["dlq.source"] for r in dead) == [
        f"{topics.topic}/0@1",
        f"{topics.topic}/0@3",
    ]


def test_produce_cli_reports_bad_input_lines_and_goes_on(topics, tmp_path):
    lines = [
        json.dumps({"text": f"play song number {i}", "intent": "play_music"}) for i in range(40)
    ]
    for position in range(0, 40, 4):
        lines.insert(position, "{broken" if position % 8 else json.dumps({"intent": "no_text"}))
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap,
        "KAFKA_TOPIC": topics.topic,
        "KAFKA_DLQ_TOPIC": topics.dlq_topic,
    }
    result = CliRunner().invoke(app, ["produce", "--data", str(data)], env=env)
    assert result.exit_code == 0, result.output
    assert "skipped 10 bad line(s)" in result.output
    assert result.output.count("  line ") == 10
    assert "sent 40 events" in result.output
    assert len(read_all(topics.bootstrap, topics.topic, 40)) == 40
