"""Dead letters: cut to size, sent again until acknowledged, dropped only when hopeless."""

from kafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future

from streams.dead_letters import (
    MAX_DEAD_LETTER_BYTES,
    MAX_DEAD_LETTER_KEY_BYTES,
    ORIGINAL_BYTES_HEADER,
    DeadLetters,
    Source,
)
from tests.dead_letter_headers import dead_letter_reason


class ScriptedProducer:
    """A producer whose sends go as scripted: each outcome is None (acknowledged), an error
    the returned future fails with, or ("raise", error) for `send` itself raising it."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.records: list[dict] = []

    def send(self, topic, value, key=None, headers=None):
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, tuple):
            raise outcome[1]
        self.records.append({"topic": topic, "value": value, "key": key, "headers": headers})
        future = Future()
        if outcome is None:
            future.success(None)
        else:
            future.failure(outcome)
        return future

    def flush(self) -> None:
        pass


def test_a_letter_refused_while_the_broker_is_away_is_sent_again_until_acknowledged():
    producer = ScriptedProducer(
        ("raise", KafkaTimeoutError("no metadata")), KafkaConnectionError("gone"), None
    )
    letters = DeadLetters(producer, "dlq", "speed")
    letters.send(b"not json", "not JSON", source=Source("queries", 0, 7))
    letters.flush(retry_every_s=0)
    assert (letters.sent, letters.dropped, producer.outcomes) == (1, 0, [])
    assert [r["value"] for r in producer.records] == [b"not json", b"not json"]
    headers = dead_letter_reason(producer.records[-1]["headers"])
    assert headers == {"dlq.reason": "not JSON", "dlq.stage": "speed", "dlq.source": "queries/0@7"}


def test_a_letter_the_broker_can_never_take_is_dropped_and_counted_not_retried_for_ever():
    producer = ScriptedProducer(("raise", MessageSizeTooLargeError("too big")), None)
    letters = DeadLetters(producer, "dlq", "archive")
    letters.send(b"x", "bad")
    letters.send(b"y", "bad")
    letters.flush(retry_every_s=0)
    assert (letters.sent, letters.dropped) == (2, 1)
    assert [r["value"] for r in producer.records] == [b"y"]


def test_a_huge_message_and_key_are_cut_and_the_original_size_is_kept():
    producer = ScriptedProducer()
    letters = DeadLetters(producer, "dlq", "produce")
    letters.send(b"a" * 1_000_000, "too big", key=b"k" * 5000)
    letters.flush(retry_every_s=0)
    (record,) = producer.records
    assert len(record["value"]) == MAX_DEAD_LETTER_BYTES
    assert len(record["key"]) == MAX_DEAD_LETTER_KEY_BYTES
    assert dead_letter_reason(record["headers"])[ORIGINAL_BYTES_HEADER] == "1000000"
