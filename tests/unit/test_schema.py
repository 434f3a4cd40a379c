"""The event contract of both topics: what is valid, what is not, and that the reason says why.

Fields a reader does not know are ignored (a producer may add one); required fields, types and
limits stay strict.
"""

import json

import pytest

from common.limits import MAX_TEXT_CHARS
from streams.schema import FeedbackEvent, InvalidEvent, QueryEvent, parse_event, parse_feedback

VALID = {
    "query_id": "q-1",
    "ts": "2026-11-27T08:00:00Z",
    "text": "wake me up at 7",
    "intent": "alarm",
}
SERVED = {
    "intent": "alarm",
    "confidence": 0.8,
    "source": "blend",
    "top_k": [{"intent": "alarm", "p": 0.8}, {"intent": "timer", "p": 0.15}],
    "batch_weight": 0.4,
    "speed_weight": 0.6,
    "batch_version": "7",
    "speed_offsets": {"0": 130, "1": 95},
}
LABEL = {"query_id": "q-1", "intent": "alarm", "ts": "2026-11-27T08:00:05Z"}


def encode(body) -> bytes:
    return json.dumps(body).encode()


def test_valid_event_round_trips_through_json():
    event = parse_event(encode({**VALID, "user_id": "u1", "locale": "en-US"}))
    assert event.intent == "alarm" and event.user_id == "u1"
    assert parse_event(event.to_json_bytes()) == event


def test_an_answered_query_carries_what_was_served_and_no_label():
    body = {k: v for k, v in VALID.items() if k != "intent"}
    event = parse_event(encode({**body, "served": SERVED}))
    assert event.intent is None
    assert event.served is not None
    assert (event.served.intent, event.served.source) == ("alarm", "blend")
    assert [(s.intent, s.p) for s in event.served.top_k] == [("alarm", 0.8), ("timer", 0.15)]
    assert event.served.speed_offsets == {0: 130, 1: 95}
    assert parse_event(event.to_json_bytes()) == event


def test_text_is_trimmed_and_timestamp_normalised_to_utc():
    event = parse_event(encode({**VALID, "text": "  hi there ", "ts": "2026-11-27T09:00:00+01:00"}))
    assert event.text == "hi there"
    assert event.ts.isoformat() == "2026-11-27T08:00:00+00:00"


def test_null_intent_means_unlabelled():
    assert parse_event(encode({**VALID, "intent": None})).intent is None


def test_queries_and_labels_are_keyed_by_query_id_so_that_they_share_a_partition():
    query = parse_event(encode({**VALID, "user_id": "u1"}))
    label = parse_feedback(encode(LABEL))
    assert query.key == label.key == b"q-1"


@pytest.mark.parametrize(
    "extra",
    [
        {"colour": "blue"},
        {"device": {"kind": "speaker", "model": 3}},
        {"Text": "ignored: field names are case-sensitive"},
        {"served": {**SERVED, "latency_ms": 3.2}},
        {"served": {**SERVED, "top_k": [{"intent": "alarm", "p": 0.8, "rank": 1}]}},
    ],
)
def test_unknown_fields_are_ignored_not_fatal(extra):
    event = parse_event(encode({**VALID, **extra}))
    assert event.text == VALID["text"]
    assert b"colour" not in event.to_json_bytes() and b"latency_ms" not in event.to_json_bytes()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (encode({k: v for k, v in VALID.items() if k != "text"}), "text: Field required"),
        (encode({"Text": "hi", **{k: v for k, v in VALID.items() if k != "text"}}), "text: Field"),
        (encode({**VALID, "text": "   "}), "text: String should have at least 1 character"),
        (encode({**VALID, "text": "x" * (MAX_TEXT_CHARS + 1)}), "text: String should have at most"),
        (encode({**VALID, "intent": 7}), "intent: Input should be a valid string"),
        (encode({**VALID, "ts": "yesterday"}), "ts:"),
        (encode({**VALID, "ts": "2026-11-27T08:00:00"}), "time zone"),
        (encode({**VALID, "served": "alarm"}), "served: Input should be an object"),
        (encode({**VALID, "served": {**SERVED, "confidence": "high"}}), "served.confidence:"),
        (encode({**VALID, "served": {**SERVED, "intent": ""}}), "served.intent: String should"),
        (encode({**VALID, "served": {k: v for k, v in SERVED.items() if k != "top_k"}}), "top_k"),
        (encode({**VALID, "extra": "x" * 20000}), "over the"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert reason in caught.value.reason


def test_a_label_parses_with_its_source_and_ignores_unknown_fields():
    label = parse_feedback(encode({**LABEL, "source": "annotation-tool", "reviewer": "ann"}))
    assert (label.query_id, label.intent, label.source) == ("q-1", "alarm", "annotation-tool")
    assert label.ts.isoformat() == "2026-11-27T08:00:05+00:00"
    assert parse_feedback(label.to_json_bytes()) == label


def test_a_label_may_name_an_intent_never_seen_before():
    assert parse_feedback(encode({**LABEL, "intent": "book_a_spaceship"})).intent == (
        "book_a_spaceship"
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"null", "not a JSON object"),
        (encode({k: v for k, v in LABEL.items() if k != "intent"}), "intent: Field required"),
        (encode({k: v for k, v in LABEL.items() if k != "query_id"}), "query_id: Field required"),
        (encode({k: v for k, v in LABEL.items() if k != "ts"}), "ts: Field required"),
        (encode({**LABEL, "intent": " "}), "intent: String should have at least 1 character"),
        (encode({**LABEL, "intent": "x" * 201}), "intent: String should have at most 200"),
        (encode({**LABEL, "ts": "2026-11-27T08:00:05"}), "time zone"),
        (encode({**LABEL, "source": 3}), "source: Input should be a valid string"),
    ],
)
def test_invalid_labels_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent) as caught:
        parse_feedback(raw)
    assert reason in caught.value.reason


def test_a_query_event_is_not_a_label_and_the_reverse():
    with pytest.raises(InvalidEvent, match="text: Field required"):
        parse_event(encode(LABEL))
    with pytest.raises(InvalidEvent, match="intent: Field required"):
        parse_feedback(encode({k: v for k, v in VALID.items() if k != "intent"}))


def test_events_are_immutable():
    event = QueryEvent(**VALID)
    with pytest.raises(ValueError):
        event.text = "changed"  # type: ignore[misc]
    label = FeedbackEvent(**LABEL)
    with pytest.raises(ValueError):
        label.intent = "changed"  # type: ignore[misc]
