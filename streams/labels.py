"""Labels that come late, or never: a replay's queries with their labels on a delay.

A deployed assistant learns a query's intent, if ever, some time after answering it (from the
user's feedback, or an annotator), and for a share of its queries only. `delayed_labels` turns
a replay's stream into that: every query, and for a `share` of them a label `delay` query
events later. With the defaults (delay 0, share 1) the labels travel inside their queries, as
replays always did. It is a pure function of the stream and a seed, so `produce` (onto the two
topics) and the offline evaluation replay exactly the same labels.
"""

import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from streams.scenarios import StreamItem


@dataclass(frozen=True)
class Labelling:
    """When labels arrive: `delay` query events after their query (0: right after it), for a
    `share` of the queries, chosen by `seed` alone (the same queries whatever the delay).

    A query the scenario leaves unlabelled (`StreamItem.labelled` false) never gets one.
    """

    delay: int = 0
    share: float = 1.0
    seed: int = 42

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError(f"the label delay is a number of events, 0 or more; got {self.delay}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"the label share must lie in [0, 1]; got {self.share}")

    @property
    def inline(self) -> bool:
        """Whether every label travels inside its query: no delay, every query labelled."""
        return self.delay == 0 and self.share == 1.0


@dataclass(frozen=True, slots=True)
class Query:
    """The query at position `index` of the stream, carrying its label as `intent` when the
    labels are inline (None otherwise, or when it has none)."""

    index: int
    item: StreamItem
    intent: str | None


@dataclass(frozen=True, slots=True)
class Label:
    """The label of the query at position `index`, emitted after the query at `after`
    (`index + delay`, or the stream's last query for a label still pending at its end)."""

    index: int
    intent: str
    after: int


def delayed_labels(items: Iterable[StreamItem], labelling: Labelling) -> Iterator[Query | Label]:
    """Every item of `items` as a `Query`, in order, and the labels `labelling` gives them:
    inline (`Labelling.inline`), or each as a `Label` right after the query `delay` positions
    later. Labels still pending when the queries end follow the last one, in query order.

    >>> from streams.dataset import Example
    >>> items = [StreamItem(Example(f"t{i}", f"i{i}"), labelled=True) for i in range(3)]
    >>> [type(e).__name__[0] + str(e.index) for e in delayed_labels(items, Labelling(delay=1))]
    ['Q0', 'Q1', 'L0', 'Q2', 'L1', 'L2']
    """
    if labelling.inline:
        for index, item in enumerate(items):
            yield Query(index, item, item.example.intent if item.labelled else None)
        return
    chooser = random.Random(f"label-share/{labelling.seed}")
    pending: deque[tuple[int, str]] = deque()
    last = -1
    for index, item in enumerate(items):
        yield Query(index, item, None)
        # One draw per query, labelled or not, so which queries get one depends on the seed and
        # their positions alone.
        if chooser.random() < labelling.share and item.labelled:
            pending.append((index, item.example.intent))
        while pending and pending[0][0] + labelling.delay <= index:
            labelled, intent = pending.popleft()
            yield Label(labelled, intent, index)
        last = index
    for labelled, intent in pending:
        yield Label(labelled, intent, last)
