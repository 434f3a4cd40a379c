"""The event contract: what is valid, what is not, and that the reason says why."""

import json

import pytest

from common.limits import MAX_TEXT_CHARS
from streams.schema import InvalidEvent, QueryEvent, parse_event

VALID = {
    "query_id": "q-1",
    "ts": "2026-11-27T08:00:00Z",
    "text": "wake me up at 7",
    "intent": "alarm",
}


def encode(body) -> bytes:
    return json.dumps(body).encode()


def test_valid_event_round_trips_through_json():
    event = parse_event(encode({**VALID, "user_id": "u1", "locale": "en-US"}))
    assert event.intent == "alarm" and event.user_id == "u1"
    assert parse_event(event.to_json_bytes()) == event


def test_text_is_trimmed_and_timestamp_normalised_to_utc():
    event = parse_event(encode({**VALID, "text": "  hi there ", "ts": "2026-11-27T09:00:00+01:00"}))
    assert event.text == "hi there"
    assert event.ts.isoformat() == "2026-11-27T08:00:00+00:00"


def test_null_intent_means_unlabelled_and_key_falls_back_to_query_id():
    event = parse_event(encode({**VALID, "intent": None}))
    assert event.intent is None
    assert event.key == b"q-1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (encode({k: v for k, v in VALID.items() if k != "text"}), "text: Field required"),
        (encode({**VALID, "text": "   "}), "text: String should have at least 1 character"),
        (encode({**VALID, "text": "x" * (MAX_TEXT_CHARS + 1)}), "text: String should have at most"),
        (encode({**VALID, "intent": 7}), "intent: Input should be a valid string"),
        (encode({**VALID, "ts": "yesterday"}), "ts:"),
        (encode({**VALID, "ts": "2026-11-27T08:00:00"}), "time zone"),
        (encode({**VALID, "colour": "blue"}), "colour: Extra inputs are not permitted"),
        (b"{" + b" " * 20000 + b"}", "over the"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert reason in caught.value.reason


def test_events_are_immutable():
    event = QueryEvent(**VALID)
    with pytest.raises(ValueError):
        event.text = "changed"  # type: ignore[misc]
