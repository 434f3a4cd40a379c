"""One partition's join of late labels to their queries.

The `queries` and `queries.feedback` topics are co-partitioned (both keyed by query id), so a
partition's labels concern its own queries, and each partition joins its own: `Joins` holds the
queries awaiting a label (with what each view predicted when they arrived), the labels read
before their query, and the ids of the queries that left the window unlabelled. It is part of
the partition's state, pickled into its snapshot with the positions of both topics, so that
after kill -9 or a rebalance each label is joined, or rejected, exactly once.

The join window bounds what is kept, by events and by time: a query can be joined until
`window_events` later queries of its partition have been read, and only by a label given at
most `window_s` seconds after it (by the events' own timestamps). A label read before its query
waits for it as long, counted from when it is read, or, while the queries read are older than
the label, from the first query read that is not: the small feedback topic is read far faster
than a backlog of queries, so a label may be read long before the queries of its time are; at
most `window_events` labels wait so per partition. A label outside the window, a label whose
query never comes, one that finds `window_events` others waiting, and a second label for the
same query are rejected, with the reason, for the dead-letter topic (the batch layer, reading
the master dataset, still learns them): the speed layer learns a query's first label only,
while the batch layer, which reads every label from the master dataset, takes the last one, so
a correction reaches the models at the next batch run.
"""

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from models.late_labels import Prediction
from streams.schema import FeedbackEvent


@dataclass(slots=True)
class Awaiting:
    """A query of the window: awaiting its label (`prediction` kept), or labelled (`label`
    set, the prediction let go)."""

    query_id: str
    offset: int
    ts: float
    text: str
    prediction: Prediction | None
    served: str | None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class EarlyLabel:
    """A label read before its query: its event, its offset on the feedback topic, and the
    query offset from which its query can no longer come within the window (None until a
    query not older than the label is read)."""

    event: FeedbackEvent
    offset: int
    due: int | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A label the join will not learn: the event, its offset on the feedback topic, why."""

    event: FeedbackEvent
    offset: int
    reason: str


@dataclass
class Joins:
    """The join state of one partition (see the module).

    Attributes
    ----------
    window_events, window_s
        The join window.
    queries
        Query id -> the query, in offset order: the queries of the window.
    early
        Query id -> its label read before it, in the order they were read.
    expired
        Query id -> offset of the queries that left the window unlabelled, as many as the
        window holds: a label for one is rejected as late, not waited on.
    relearn
        Query offset -> (query id, label) of labels learnt before a re-base whose query comes
        again: the fresh model learns them when it reads the query.
    position, newest_ts
        The next query offset to read, and the newest query timestamp read (Unix time).
    rejected
        Labels rejected since the owner last took them (`take_rejected`).
    """

    window_events: int
    window_s: float
    queries: dict[str, Awaiting] = field(default_factory=dict)
    early: dict[str, EarlyLabel] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    relearn: dict[int, tuple[str, str]] = field(default_factory=dict)
    position: int = 0
    newest_ts: float = float("-inf")
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def awaiting(self) -> int:
        """Queries of the window still awaiting their label."""
        return sum(1 for q in self.queries.values() if q.label is None)

    def advance(self, offset: int, ts: float) -> None:
        """The query at `offset` with timestamp `ts` is being read: queries and early labels
        the window has passed leave it."""
        self.position = offset + 1
        self.newest_ts = max(self.newest_ts, ts)
        self._evict()

    def _evict(self) -> None:
        """Let the queries and early labels the window has passed go: an unlabelled query to
        `expired`, an early label to the rejected."""
        offset = self.position - 1
        oldest_offset, oldest_ts = offset - self.window_events, self.newest_ts - self.window_s
        while self.queries:
            first = next(iter(self.queries.values()))
            if first.offset > oldest_offset and first.ts >= oldest_ts:
                break
            del self.queries[first.query_id]
            if first.label is None:
                self.expired[first.query_id] = first.offset
        while len(self.expired) > self.window_events:
            del self.expired[next(iter(self.expired))]
        while self.early:  # in the order read: a label waits at least as long as those before
            label = next(iter(self.early.values()))
            label_ts = label.event.ts.timestamp()
            if label.due is None and (due := self._due(label_ts)) is not None:
                label = replace(label, due=due)
                self.early[label.event.query_id] = label
            if (label.due is None or label.due > offset) and label_ts >= oldest_ts:
                break
            self._reject_early(
                f"no query {label.event.query_id!r} came within the join window "
                f"({self._window}) of its label"
            )

    def _due(self, label_ts: float) -> int | None:
        """The query offset from which a label given at `label_ts` stops waiting for its query:
        a window from here once the queries read have reached its time, None until then."""
        return self.position + self.window_events if self.newest_ts >= label_ts else None

    def _reject_early(self, reason: str) -> None:
        """Reject the first of the labels waiting for their query."""
        label = self.early.pop(next(iter(self.early)))
        self._reject(label.event, label.offset, reason)

    def is_known(self, query_id: str) -> bool:
        """Whether a query of this id is in the window already: a second event of it is the
        same query."""
        return query_id in self.queries

    def add(self, query: Awaiting) -> FeedbackEvent | None:
        """Keep a query awaiting its label; a label read before it, when within the window, is
        returned to be learnt now (the query then counts as labelled). A second query of the
        same id is the same query: the first is kept."""
        if query.query_id in self.queries:
            return None
        self.queries[query.query_id] = query
        early = self.early.pop(query.query_id, None)
        self._evict()  # a query added late (predicted with others) may be past the window
        if early is None:
            return None
        if not self._in_time(query, early.event):
            self._reject(early.event, early.offset, self._too_late(query, early.event))
            return None
        return early.event

    def label(self, event: FeedbackEvent, offset: int) -> Awaiting | None:
        """A label read from the feedback topic at `offset`: its query, to learn it now (the
        owner then calls `learnt`), or None when it waits for its query or is rejected."""
        query_id = event.query_id
        query = self.queries.get(query_id)
        if query is not None:
            if query.label is not None:
                self._reject(event, offset, self._second(query_id, query.label))
            elif not self._in_time(query, event):
                self._reject(event, offset, self._too_late(query, event))
            else:
                return query
        elif query_id in self.expired:
            self._reject(
                event,
                offset,
                f"past the join window: query {query_id!r} (offset {self.expired[query_id]}) "
                f"left the window ({self._window}) unlabelled before this label came",
            )
        elif query_id in self.early:
            self._reject(event, offset, self._second(query_id, self.early[query_id].event.intent))
        else:
            if len(self.early) == self.window_events:
                self._reject_early(
                    f"its query did not come before {self.window_events} more labels read "
                    "ahead of their queries: the join keeps that many waiting at most"
                )
            self.early[query_id] = EarlyLabel(event, offset, self._due(event.ts.timestamp()))
        return None

    @staticmethod
    def learnt(query: Awaiting, intent: str) -> None:
        """`query`'s label `intent` is learnt: it stays in the window as labelled."""
        query.label = intent
        query.prediction = None

    def take_rejected(self) -> list[Rejected]:
        """The labels rejected since the last call, for the dead-letter topic."""
        rejected, self.rejected = self.rejected, []
        return rejected

    def rebase(self, start: int) -> None:
        """The partition's queries are read again from `start` by a fresh model: the queries
        from there leave the window (they come again), and the labels they had are kept to be
        learnt again when they do (`relearn`)."""
        for query in [q for q in self.queries.values() if q.offset >= start]:
            del self.queries[query.query_id]
            if query.label is not None:
                self.relearn[query.offset] = (query.query_id, query.label)
        self.expired = {q: o for q, o in self.expired.items() if o < start}
        self.position = start

    def relearnt(self, offset: int, query_id: str) -> str | None:
        """The label to learn again for the query read at `offset` after a re-base, if any."""
        found = self.relearn.pop(offset, None) if self.relearn else None
        return found[1] if found is not None and found[0] == query_id else None

    @property
    def _window(self) -> str:
        return f"{self.window_events} events, {self.window_s:g} s"

    def _in_time(self, query: Awaiting, event: FeedbackEvent) -> bool:
        return event.ts.timestamp() - query.ts <= self.window_s

    def _too_late(self, query: Awaiting, event: FeedbackEvent) -> str:
        gap = event.ts.timestamp() - query.ts
        return (
            f"past the join window: the label came {gap:g} s after query {query.query_id!r}, "
            f"over {self.window_s:g} s"
        )

    @staticmethod
    def _second(query_id: str, first: str) -> str:
        return (
            f"a second label for query {query_id!r}: the speed layer learns a query's first "
            f"label only ({first!r}); the batch layer takes the last"
        )

    def _reject(self, event: FeedbackEvent, offset: int, reason: str) -> None:
        self.rejected.append(Rejected(event, offset, reason))

    def __getstate__(self) -> dict[str, Any]:
        """The state with the window's queries laid out in columns: a snapshot pickles a few
        arrays, not an object and two arrays per query."""
        state = self.__dict__.copy()
        state["queries"] = _columns(list(self.queries.values()))
        state["rejected"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.queries = {q.query_id: q for q in _rows(state["queries"])}


def _columns(queries: list[Awaiting]) -> dict[str, Any]:
    """The queries as columns; their predictions' entries end to end, their class lists once
    (a prediction's lists are shared tuples, told apart by identity)."""
    predictions = [q.prediction for q in queries if q.prediction is not None]
    table: list[tuple[Any, ...] | None] = []
    index: dict[int, int] = {}
    rows = []
    for p in predictions:
        for classes in (p.speed_classes, p.batch_classes):
            if id(classes) not in index:
                index[id(classes)] = len(table)
                table.append(classes)
        rows.append(
            (
                index[id(p.speed_classes)],
                index[id(p.batch_classes)],
                *p.lengths,
                len(p.columns),
                p.speed_seen,
                p.batch_seen,
            )
        )
    return {
        "query_id": [q.query_id for q in queries],
        "offset": np.fromiter((q.offset for q in queries), np.int64, len(queries)),
        "ts": np.fromiter((q.ts for q in queries), np.float64, len(queries)),
        "text": [q.text for q in queries],
        "served": [q.served for q in queries],
        "label": [q.label for q in queries],
        "predicted": np.fromiter((q.prediction is not None for q in queries), bool, len(queries)),
        "classes": table,
        "predictions": np.array(rows, dtype=np.int64).reshape(-1, 7),
        "columns": np.concatenate([p.columns for p in predictions] or [np.zeros(0, np.int32)]),
        "values": np.concatenate([p.values for p in predictions] or [np.zeros(0)]),
    }


def _rows(columns: dict[str, Any]) -> list[Awaiting]:
    """`_columns` read back."""
    classes = columns["classes"]
    predictions = []
    start = 0
    for speed, batch, n_speed, n_batch, n, speed_seen, batch_seen in columns[
        "predictions"
    ].tolist():
        end = start + n
        predictions.append(
            Prediction(
                classes[speed],
                classes[batch],
                columns["columns"][start:end],
                columns["values"][start:end],
                (n_speed, n_batch),
                bool(speed_seen),
                bool(batch_seen),
            )
        )
        start = end
    kept = iter(predictions)
    return [
        Awaiting(
            query_id,
            offset,
            ts,
            text,
            next(kept) if predicted else None,
            served,
            label,
        )
        for query_id, offset, ts, text, served, label, predicted in zip(
            columns["query_id"],
            columns["offset"].tolist(),
            columns["ts"].tolist(),
            columns["text"],
            columns["served"],
            columns["label"],
            columns["predicted"].tolist(),
            strict=True,
        )
    ]
