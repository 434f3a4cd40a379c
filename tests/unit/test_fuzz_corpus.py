"""The event schema against 10,000 fuzzed events: each verdict and reason is the one expected."""

from collections import Counter

import pytest

from streams.schema import InvalidEvent, parse_event
from tests.fuzz_events import KINDS, fuzz_corpus


@pytest.fixture(scope="module")
def corpus():
    return fuzz_corpus()


def test_the_corpus_has_every_kind_and_no_line_breaks(corpus):
    assert len(corpus) == 10_000
    assert set(Counter(e.kind for e in corpus)) == set(KINDS)
    assert not [e for e in corpus if b"\n" in e.raw or e.raw.endswith(b"\r")]


def test_every_fuzzed_event_gets_the_expected_verdict_and_reason(corpus):
    wrong = []
    for event in corpus:
        try:
            parse_event(event.raw)
        except InvalidEvent as exc:
            if event.valid or event.reason not in exc.reason:
                wrong.append((event.kind, event.raw[:120], exc.reason))
        else:
            if not event.valid:
                wrong.append((event.kind, event.raw[:120], "accepted"))
    assert wrong == []
