"""Drift scenarios: the order in which a dataset is replayed as a stream of user queries.

A scenario is a pure, seeded function of the examples, so the producer, the offline evaluation
and the tests replay exactly the same stream.
"""

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from streams.dataset import Example
from streams.query_log import QueryLog, apply_query_log

ScenarioName = Literal["shuffle", "new-domain", "popularity-shift"]
SCENARIOS: tuple[ScenarioName, ...] = ("shuffle", "new-domain", "popularity-shift")
DEFAULT_LATE_DOMAINS = ("travel", "utility")


@dataclass(frozen=True)
class Scenario:
    """How to replay: which scenario, how long, where the drift happens, how much is unlabelled.

    `drift_at` is the index of the first event after the drift point. `late_intents` (for
    `new-domain`) never appear before it. `zipf_exponent` (for `popularity-shift`) sets how
    skewed intent frequencies are; the ranking of intents is reshuffled at the drift point.
    `query_log`, when set, keeps that order of intents but reshapes the texts like a query log:
    a Zipf head of popular rows and a tail of generated variants (see `streams.query_log`).
    """

    name: ScenarioName = "shuffle"
    length: int = 0
    seed: int = 42
    drift_at: int = 0
    late_intents: frozenset[str] = field(default_factory=frozenset)
    unlabelled_fraction: float = 0.0
    zipf_exponent: float = 1.1
    query_log: QueryLog | None = None

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; choose one of {SCENARIOS}")
        if self.length < 0 or not 0 <= self.drift_at <= self.length:
            raise ValueError(f"drift_at must lie in [0, length]; got {self.drift_at}/{self.length}")
        if not 0.0 <= self.unlabelled_fraction <= 1.0:
            raise ValueError("unlabelled_fraction must lie in [0, 1]")
        if self.name == "new-domain" and not self.late_intents:
            raise ValueError("new-domain needs at least one late intent")


@dataclass(frozen=True)
class StreamItem:
    """One event to emit: the example, whether its label is revealed to the pipeline, and
    whether its text was generated (a query-log variant) rather than taken from the dataset."""

    example: Example
    labelled: bool
    synthetic: bool = False


class _Deck:
    """Draws examples without replacement, reshuffling when empty: each pass is a permutation."""

    def __init__(self, examples: Sequence[Example], rng: random.Random) -> None:
        if not examples:
            raise ValueError("cannot draw from an empty set of examples")
        self._examples = list(examples)
        self._rng = rng
        self._pending: list[Example] = []

    def __len__(self) -> int:
        return len(self._examples)

    def draw(self) -> Example:
        if not self._pending:
            self._pending = self._examples[:]
            self._rng.shuffle(self._pending)
        return self._pending.pop()


def _zipf_weights(intents: list[str], exponent: float, rng: random.Random) -> list[float]:
    ranked = intents[:]
    rng.shuffle(ranked)
    rank = {intent: r for r, intent in enumerate(ranked, start=1)}
    return [1.0 / rank[intent] ** exponent for intent in intents]


def _shuffle(examples: Sequence[Example], s: Scenario, rng: random.Random) -> Iterator[Example]:
    deck = _Deck(examples, rng)
    for _ in range(s.length):
        yield deck.draw()


def _new_domain(examples: Sequence[Example], s: Scenario, rng: random.Random) -> Iterator[Example]:
    early = _Deck([e for e in examples if e.intent not in s.late_intents], rng)
    late = _Deck([e for e in examples if e.intent in s.late_intents], rng)
    late_share = len(late) / (len(late) + len(early))
    for index in range(s.length):
        after_drift = index >= s.drift_at
        yield late.draw() if after_drift and rng.random() < late_share else early.draw()


def _popularity_shift(
    examples: Sequence[Example], s: Scenario, rng: random.Random
) -> Iterator[Example]:
    by_intent: dict[str, list[Example]] = {}
    for example in examples:
        by_intent.setdefault(example.intent, []).append(example)
    intents = sorted(by_intent)
    decks = {intent: _Deck(rows, rng) for intent, rows in by_intent.items()}
    before = _zipf_weights(intents, s.zipf_exponent, rng)
    after = _zipf_weights(intents, s.zipf_exponent, rng)
    for index in range(s.length):
        weights = after if index >= s.drift_at else before
        yield decks[rng.choices(intents, weights)[0]].draw()


_ORDERS = {"shuffle": _shuffle, "new-domain": _new_domain, "popularity-shift": _popularity_shift}


def replay(examples: Sequence[Example], scenario: Scenario) -> Iterator[StreamItem]:
    """The stream of `scenario.length` items that `scenario` makes of `examples`.

    >>> rows = [Example(f"t{i}", "a" if i % 2 else "b") for i in range(6)]
    >>> s = Scenario("new-domain", length=6, drift_at=3, late_intents=frozenset({"a"}))
    >>> [item.example.intent for item in replay(rows, s)][:3]
    ['b', 'b', 'b']
    """
    unknown = scenario.late_intents - {e.intent for e in examples}
    if unknown:
        raise ValueError(f"late intents not in the dataset: {sorted(unknown)}")
    rng = random.Random(scenario.seed)
    labels_rng = random.Random(scenario.seed + 1)
    items: Iterable[StreamItem] = (
        StreamItem(example, labels_rng.random() >= scenario.unlabelled_fraction)
        for example in _ORDERS[scenario.name](examples, scenario, rng)
    )
    if scenario.query_log is not None:
        # Its own rng, so the order of intents and the labels are those of the plain replay.
        items = apply_query_log(
            items, examples, scenario.query_log, random.Random(scenario.seed + 2)
        )
    yield from items


def late_intents_of_domains(domains: dict[str, list[str]], chosen: Sequence[str]) -> frozenset[str]:
    """The intents of the chosen domains, with a clear error for a domain that does not exist."""
    missing = [d for d in chosen if d not in domains]
    if missing:
        raise ValueError(f"unknown domains {missing}; known: {sorted(domains)}")
    return frozenset(intent for d in chosen for intent in domains[d])
