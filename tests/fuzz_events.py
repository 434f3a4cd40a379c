"""A seeded corpus of raw query events, valid and broken in every way the pipeline must survive.

Each event carries its kind and whether the event schema should accept it, decided here from how
it was built (never by asking `parse_event`), so the tests check the schema rather than echo it.
A field the schema does not know is valid (ignored); a known field of the wrong type is not.
No raw event contains a newline or ends in a carriage return: the corpus is also a file of one
event per line for `lambda-ml publish`.
"""

import json
import random
import uuid
from dataclasses import dataclass

from streams.dataset import CLINC150_DATA, load_dataset

ONE_MB = 1_000_000


@dataclass(frozen=True)
class FuzzEvent:
    kind: str
    raw: bytes
    valid: bool
    labelled: bool = False
    reason: str = ""  # a phrase the dead-letter reason of an invalid event must contain


# kind -> (weight, valid)
KINDS: dict[str, tuple[int, bool]] = {
    "valid": (300, True),
    "unlabelled": (60, True),
    "unknown intent": (40, True),
    "duplicate query id": (40, True),
    "non-ASCII text": (20, True),
    "extra field": (60, True),
    "answered": (40, True),
    "invalid JSON": (60, False),
    "invalid UTF-8": (60, False),
    "not an object": (30, False),
    "missing field": (80, False),
    "wrong type": (100, False),
    "wrong served field": (30, False),
    "1 MB text": (2, False),
    "text over 1000 characters": (20, False),
    "empty text": (30, False),
    "empty message": (8, False),
    "time without zone": (20, False),
}

_WRONG_VALUES = {
    "query_id": [7, None, [], {"id": 1}, True],
    "ts": ["yesterday", "2026-13-45T99:00:00Z", [], {}, None],
    "text": [123, 4.5, None, ["set an alarm"], {"text": "hi"}, False],
    "intent": [3, ["alarm"], {"name": "alarm"}, 1.5],
    "user_id": [42, ["u"], {}],
    "locale": [1, [], {"tag": "en"}],
    "served": ["alarm", 3, ["alarm", 0.9]],
}
# A field of what was served, and a value of the wrong type or out of its limits.
_WRONG_SERVED = {
    "intent": ["", 5, None],
    "confidence": ["high", None, []],
    "source": ["", {}, 2],
    "top_k": ["alarm", [["alarm", "high"]], [{"intent": "alarm"}]],
    "speed_offsets": [{"zero": 1}, [0, 1], "0:1"],
}


def _served(intent: str) -> dict:
    return {
        "intent": intent,
        "confidence": 0.9,
        "source": "blend",
        "top_k": [{"intent": intent, "p": 0.9}, {"intent": "oos", "p": 0.05}],
        "batch_weight": 0.5,
        "speed_weight": 0.5,
        "batch_version": "3",
        "speed_offsets": {"0": 120, "1": 98},
    }


def _dumps(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        examples = load_dataset(CLINC150_DATA, frozenset({"train"})).examples
        self.examples = [e for e in examples if e.intent != "oos"]
        self.ids: list[str] = []

    def body(self) -> dict:
        example = self.rng.choice(self.examples)
        query_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        return {
            "query_id": query_id,
            "ts": f"2026-11-{self.rng.randint(1, 26):02d}T{self.rng.randint(0, 23):02d}:00:00Z",
            "text": example.text,
            "intent": example.intent,
            "user_id": f"user-{self.rng.randrange(500):03d}",
            "locale": "en-US",
        }

    def event(self, kind: str) -> FuzzEvent:
        body = self.body()
        valid = KINDS[kind][1]
        raw, reason = getattr(self, "_" + kind.replace(" ", "_").replace("-", "_").lower())(body)
        if valid:
            self.ids.append(body["query_id"])
        labelled = valid and body.get("intent") is not None
        return FuzzEvent(kind, raw, valid, labelled, reason)

    def _valid(self, body: dict) -> tuple[bytes, str]:
        return _dumps(body), ""

    def _unlabelled(self, body: dict) -> tuple[bytes, str]:
        del body["intent"]
        return _dumps(body), ""

    def _unknown_intent(self, body: dict) -> tuple[bytes, str]:
        body["intent"] = f"fuzz_intent_{self.rng.randrange(5)}"
        return _dumps(body), ""

    def _duplicate_query_id(self, body: dict) -> tuple[bytes, str]:
        if self.ids:
            body["query_id"] = self.rng.choice(self.ids)
        return _dumps(body), ""

    def _non_ascii_text(self, body: dict) -> tuple[bytes, str]:
        body["text"] = self.rng.choice(["réveille-moi à 7h", "明天天气怎么样", "timer ⏰ 5 min"])
        return _dumps(body), ""

    def _invalid_json(self, body: dict) -> tuple[bytes, str]:
        raw = _dumps(body)
        choice = self.rng.randrange(3)
        if choice == 0:
            broken = raw[: self.rng.randrange(1, len(raw) - 1)]  # cut short
        elif choice == 1:
            broken = raw.replace(b'":', b'"', 1)  # a missing colon
        else:  # a single quote first: never JSON, whatever follows
            noise = self.rng.choices(b"{}[]:,'abc 019\t", k=self.rng.randint(0, 60))
            broken = b"{'" + bytes(noise)
        return broken, "not JSON"

    def _invalid_utf_8(self, body: dict) -> tuple[bytes, str]:
        raw = _dumps(body)
        at = raw.index(b'"text":"') + len(b'"text":"')
        bad = self.rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"])
        return raw[:at] + bad + raw[at:], "not UTF-8"

    def _not_an_object(self, body: dict) -> tuple[bytes, str]:
        raw = self.rng.choice([_dumps([body]), b"42", b"null", b'"set an alarm"', b"true"])
        return raw, "not a JSON object"

    def _missing_field(self, body: dict) -> tuple[bytes, str]:
        field = self.rng.choice(["query_id", "ts", "text"])
        del body[field]
        return _dumps(body), f"{field}: Field required"

    def _extra_field(self, body: dict) -> tuple[bytes, str]:
        field = self.rng.choice(["device", "Text", "confidence", "_id", "app_version"])
        body[field] = self.rng.choice(["x", 3, {"kind": "speaker"}, [1, 2], None])
        return _dumps(body), ""

    def _answered(self, body: dict) -> tuple[bytes, str]:
        body["served"] = _served(body.pop("intent"))
        return _dumps(body), ""

    def _wrong_type(self, body: dict) -> tuple[bytes, str]:
        field = self.rng.choice(sorted(_WRONG_VALUES))
        body[field] = self.rng.choice(_WRONG_VALUES[field])
        return _dumps(body), f"{field}: "

    def _wrong_served_field(self, body: dict) -> tuple[bytes, str]:
        body["served"] = _served(body.pop("intent"))
        field = self.rng.choice(sorted(_WRONG_SERVED))
        body["served"][field] = self.rng.choice(_WRONG_SERVED[field])
        return _dumps(body), f"served.{field}"

    def _1_mb_text(self, body: dict) -> tuple[bytes, str]:
        body["text"] = "play some music " * (ONE_MB // 16)
        return _dumps(body), "bytes, over the"

    def _text_over_1000_characters(self, body: dict) -> tuple[bytes, str]:
        body["text"] = "x" * self.rng.randint(1001, 5000)
        return _dumps(body), "text: String should have at most 1000 characters"

    def _empty_text(self, body: dict) -> tuple[bytes, str]:
        body["text"] = self.rng.choice(["", "   ", "\t"])
        return _dumps(body), "text: String should have at least 1 character"

    def _empty_message(self, body: dict) -> tuple[bytes, str]:
        return b"", "empty message"

    def _time_without_zone(self, body: dict) -> tuple[bytes, str]:
        body["ts"] = body["ts"].removesuffix("Z")
        return _dumps(body), "ts: Value error, ts must carry a time zone"


def fuzz_corpus(size: int = 10_000, seed: int = 7) -> list[FuzzEvent]:
    """`size` events drawn by the weights of `KINDS`, with at least one of every kind."""
    builder = _Builder(seed)
    kinds = list(KINDS)
    drawn = kinds + builder.rng.choices(kinds, [KINDS[k][0] for k in kinds], k=size - len(kinds))
    builder.rng.shuffle(drawn)
    return [builder.event(kind) for kind in drawn]
