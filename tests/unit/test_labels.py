"""Delayed labels: each label exactly `delay` queries after its own, for a seeded `share` of the
queries, and exactly today's inline labels with the defaults."""

import pytest

from streams.dataset import Example
from streams.labels import Label, Labelling, Query, delayed_labels
from streams.scenarios import StreamItem


def stream(length, unlabelled_every=0):
    return [
        StreamItem(
            Example(f"text {n}", f"intent-{n % 7}"),
            labelled=not (unlabelled_every and n % unlabelled_every == 0),
        )
        for n in range(length)
    ]


def test_the_defaults_are_inline_labels_as_replays_always_had():
    items = stream(50, unlabelled_every=4)
    events = list(delayed_labels(items, Labelling()))
    assert Labelling().inline
    assert events == [
        Query(n, item, item.example.intent if item.labelled else None)
        for n, item in enumerate(items)
    ]


@pytest.mark.parametrize("delay", [0, 1, 7, 100])
def test_each_label_comes_exactly_delay_queries_after_its_own(delay):
    items = stream(1_000)
    events = list(delayed_labels(items, Labelling(delay=delay, share=0.5, seed=3)))
    queries = [e for e in events if isinstance(e, Query)]
    assert [q.item for q in queries] == items and all(q.intent is None for q in queries)
    seen = 0  # queries emitted so far
    for event in events:
        if isinstance(event, Query):
            seen += 1
            continue
        assert event.intent == items[event.index].example.intent
        if event.index + delay < len(items):
            assert event.after == event.index + delay
            assert seen - 1 - event.index == delay  # the queries between it and its label
        else:  # pending at the end of the stream: after the last query
            assert event.after == len(items) - 1 and seen == len(items)


def test_labels_pending_at_the_end_follow_the_last_query_in_order():
    events = list(delayed_labels(stream(5), Labelling(delay=10)))
    assert [type(e) for e in events] == [Query] * 5 + [Label] * 5
    assert [(e.index, e.after) for e in events[5:]] == [(n, 4) for n in range(5)]


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3, 1.0])
def test_a_share_of_the_queries_gets_a_label_and_never_an_unlabelled_one(share):
    items = stream(20_000, unlabelled_every=5)
    labels = [
        e
        for e in delayed_labels(items, Labelling(delay=3, share=share, seed=1))
        if isinstance(e, Label)
    ]
    labelled = sum(item.labelled for item in items)
    assert all(items[label.index].labelled for label in labels)
    assert len({label.index for label in labels}) == len(labels)  # one label per query at most
    assert abs(len(labels) / labelled - share) < 0.01


def test_which_queries_get_a_label_depends_on_the_seed_alone():
    items = stream(2_000)

    def chosen(delay, seed):
        return [
            e.index
            for e in delayed_labels(items, Labelling(delay=delay, share=0.3, seed=seed))
            if isinstance(e, Label)
        ]

    assert chosen(5, seed=7) == chosen(5, seed=7)
    assert chosen(5, seed=7) == chosen(500, seed=7)  # the delay moves labels, not choices
    assert chosen(5, seed=7) != chosen(5, seed=8)
    assert chosen(0, seed=7) == chosen(5, seed=7)  # delay 0 with a share: labels apart


def test_a_delay_of_zero_with_a_share_sends_each_label_right_after_its_query():
    events = list(delayed_labels(stream(200), Labelling(delay=0, share=0.5, seed=2)))
    for before, event in zip(events, events[1:], strict=False):
        if isinstance(event, Label):
            assert isinstance(before, Query) and before.index == event.index == event.after


@pytest.mark.parametrize(
    ("delay", "share", "message"),
    [(-1, 1.0, "0 or more"), (0, 1.5, r"\[0, 1\]"), (0, -0.1, r"\[0, 1\]")],
)
def test_a_bad_delay_or_share_is_refused_with_the_reason(delay, share, message):
    with pytest.raises(ValueError, match=message):
        Labelling(delay=delay, share=share)
