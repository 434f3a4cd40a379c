"""A partition's join when its labels are read far ahead of their queries, as when the speed
layer works through a backlog: the small feedback topic is read much faster than the queries."""

from datetime import UTC, datetime, timedelta

from pipelines.speed.joins import Awaiting, Joins
from streams.schema import FeedbackEvent

START = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = 5


def at(second: int) -> datetime:
    return START + timedelta(seconds=second)


def label(query: int, second: int) -> FeedbackEvent:
    return FeedbackEvent(query_id=f"q{query}", intent="alarm", ts=at(second))


def read_queries(joins: Joins, first: int, last: int) -> list[str]:
    """Read queries `first` to `last` (query i asked at second i): the ids whose label, read
    before them, is returned to be learnt."""
    joined = []
    for i in range(first, last + 1):
        joins.advance(i, at(i).timestamp())
        early = joins.add(Awaiting(f"q{i}", i, at(i).timestamp(), "wake me up", None, None))
        if early is not None:
            joined.append(early.query_id)
    return joined


def test_a_label_read_before_the_queries_of_its_time_waits_for_them():
    joins = Joins(window_events=WINDOW, window_s=3600)
    for offset, query in enumerate((3, 12, 18)):  # labelled a second after each was asked
        assert joins.label(label(query, query + 1), offset) is None
    assert read_queries(joins, 0, 20) == ["q3", "q12", "q18"]  # far past 5 queries on
    assert not joins.take_rejected() and not joins.early


def test_a_label_whose_query_never_comes_goes_once_the_window_passes_its_time():
    joins = Joins(window_events=WINDOW, window_s=3600)
    joins.label(label(99, 10), 0)  # no query q99 is ever read
    read_queries(joins, 0, 15)  # the queries reach its time at q10, then 5 more go by
    assert "q99" in joins.early and not joins.rejected
    read_queries(joins, 16, 16)
    (rejected,) = joins.take_rejected()
    assert rejected.event.query_id == "q99"
    assert rejected.reason == (
        "no query 'q99' came within the join window (5 events, 3600 s) of its label"
    )


def test_at_most_a_window_of_labels_waits_and_the_first_read_gives_way():
    joins = Joins(window_events=WINDOW, window_s=3600)
    for offset in range(WINDOW + 1):
        joins.label(label(100 + offset, 100 + offset), offset)
    (rejected,) = joins.take_rejected()
    assert (rejected.event.query_id, rejected.offset) == ("q100", 0)
    assert "the join keeps that many waiting at most" in rejected.reason
    assert list(joins.early) == [f"q{100 + i}" for i in range(1, WINDOW + 1)]
