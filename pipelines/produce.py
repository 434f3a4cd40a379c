"""The `produce` and `publish` jobs: a dataset replayed, or a file of raw events, onto the
`queries` topic as a stream of user queries (or a file of labels onto the feedback topic).

A replay's labels travel inside their queries by default; with a label delay or share
(`streams.labels`), its queries go out without them and the labels follow on the feedback
topic, in the same stream.
"""

import json
import random
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from common.settings import KafkaSettings
from pipelines.services.broker import topic_partitions
from streams.dataset import CLINC150_DATA, BadLine, load_dataset, load_domains
from streams.labels import Label, Labelling, delayed_labels
from streams.producer import FeedbackMessage, ProduceStats, make_producer, publish
from streams.query_log import QueryLog
from streams.scenarios import (
    DEFAULT_LATE_DOMAINS,
    Scenario,
    ScenarioName,
    StreamItem,
    late_intents_of_domains,
    replay,
)
from streams.schema import TS_FORMAT


@dataclass(frozen=True)
class Timeline:
    """Event timestamps: wall-clock time by default, or spread evenly over the past `span`
    (so a fast replay still yields a history over several days for the batch layer)."""

    span: timedelta = timedelta(0)
    start: datetime | None = None

    def stamper(self, length: int) -> Callable[[int], datetime]:
        if not self.span or length == 0:
            return lambda _index: datetime.now(UTC)
        start = self.start or datetime.now(UTC) - self.span
        step = self.span / length
        return lambda index: start + step * index


def event_messages(
    items: Iterable[StreamItem],
    length: int,
    run_id: str,
    seed: int,
    timeline: Timeline,
    labelling: Labelling,
) -> Iterator[bytes]:
    """Serialised events for replayed examples, with stable ids (`run_id` + position) and users,
    and their labels as `labelling` gives them (a late label as a `FeedbackMessage`, stamped
    with the time of the query it follows).

    Built as plain JSON rather than through `QueryEvent`: `publish` validates every message
    anyway, and building models twice would halve the replay rate.
    """
    stamp = timeline.stamper(length)
    users = random.Random(seed)
    for event in delayed_labels(items, labelling):
        if isinstance(event, Label):
            label = {
                "query_id": _query_id(run_id, event.index),
                "intent": event.intent,
                "ts": stamp(event.after).strftime(TS_FORMAT),
                "source": "replay",
            }
            yield FeedbackMessage(_json(label))
            continue
        body = {
            "query_id": _query_id(run_id, event.index),
            "ts": stamp(event.index).strftime(TS_FORMAT),
            "text": event.item.example.text,
            "intent": event.intent,
            "user_id": f"user-{users.randrange(5000):04d}",
            "locale": "en-US",
        }
        yield _json(body)


def _query_id(run_id: str, index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{index}"))


def _json(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how; the CLI's `produce` options, one to one.

    `tail_fraction` set shapes the replay like a query log (see `streams.query_log.QueryLog`):
    that share of events are generated variants, the rest a Zipf head of the dataset's rows
    skewed by `head_exponent`. None replays the dataset's rows as they are.

    `label_delay` and `label_share` say when labels come (`streams.labels.Labelling`, seeded by
    `seed`): the defaults keep them inside their queries.
    """

    data: Path = CLINC150_DATA
    scenario: ScenarioName = "shuffle"
    limit: int | None = None
    repeat: int = 1
    rate: float = 0.0
    unlabelled_fraction: float = 0.0
    drift_fraction: float = 0.5
    late_domains: tuple[str, ...] = DEFAULT_LATE_DOMAINS
    late_intents: tuple[str, ...] = ()
    seed: int = 42
    run_id: str = "replay"
    span_days: float = 0.0
    splits: frozenset[str] | None = field(default=None)
    tail_fraction: float | None = None
    head_exponent: float = 1.1
    label_delay: int = 0
    label_share: float = 1.0

    @property
    def labelling(self) -> Labelling:
        return Labelling(self.label_delay, self.label_share, self.seed)


def late_intents_for(options: ReplayOptions) -> frozenset[str]:
    """Named intents win; otherwise the intents of the named CLINC150 domains."""
    if options.late_intents:
        return frozenset(options.late_intents)
    return late_intents_of_domains(load_domains(), options.late_domains)


def scenario_for(options: ReplayOptions, dataset_size: int) -> Scenario:
    length = options.limit if options.limit is not None else dataset_size * options.repeat
    return Scenario(
        name=options.scenario,
        length=length,
        seed=options.seed,
        drift_at=int(length * options.drift_fraction),
        late_intents=late_intents_for(options) if options.scenario == "new-domain" else frozenset(),
        unlabelled_fraction=options.unlabelled_fraction,
        query_log=(
            QueryLog(options.tail_fraction, options.head_exponent)
            if options.tail_fraction is not None
            else None
        ),
    )


def replay_messages(options: ReplayOptions) -> tuple[int, Iterator[bytes], list[BadLine]]:
    """The serialised events of a replay (queries, and late labels as `FeedbackMessage`s), the
    number of queries, and the input lines that were skipped."""
    dataset = load_dataset(options.data, options.splits)
    scenario = scenario_for(options, len(dataset.examples))
    timeline = Timeline(span=timedelta(days=options.span_days))
    messages = event_messages(
        replay(dataset.examples, scenario),
        scenario.length,
        options.run_id,
        options.seed,
        timeline,
        options.labelling,
    )
    return scenario.length, messages, dataset.bad_lines


def report_bad_lines(
    console: Console, path: Path, bad_lines: list[BadLine], shown: int = 20
) -> None:
    if not bad_lines:
        return
    console.print(f"[yellow]skipped {len(bad_lines)} bad line(s) in {path}:[/yellow]")
    for bad in bad_lines[:shown]:
        console.print(f"  line {bad.line_number}: {bad.reason}")
    if len(bad_lines) > shown:
        console.print(f"  ... and {len(bad_lines) - shown} more")


def run_produce(settings: KafkaSettings, options: ReplayOptions, console: Console) -> ProduceStats:
    """Replay with a progress bar (of the queries); bad input lines are reported and skipped,
    never fatal."""
    length, messages, bad_lines = replay_messages(options)
    report_bad_lines(console, options.data, bad_lines)
    late = not options.labelling.inline
    return _publish_with_progress(settings, length, messages, options.rate, console, late=late)


def raw_event_lines(path: Path) -> list[bytes]:
    """The lines of a file of raw events, as bytes: nothing is decoded or checked here, so a
    bad line reaches the dead-letter topic as it was, less its line ending (`\n` or `\r\n`; a
    final newline ends the last line and does not start an empty one)."""
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines]


def run_publish_file(
    settings: KafkaSettings, path: Path, rate: float, console: Console, feedback: bool = False
) -> ProduceStats:
    """Publish a file of events as they are: valid lines to the topic (labels, with `feedback`,
    to the feedback topic), the others to the dead-letter topic with their reason."""
    lines = raw_event_lines(path)
    return _publish_with_progress(settings, len(lines), iter(lines), rate, console, feedback)


def _publish_with_progress(
    settings: KafkaSettings,
    length: int,
    messages: Iterator[bytes],
    rate: float,
    console: Console,
    feedback: bool = False,
    late: bool = False,
) -> ProduceStats:
    """`publish` with a progress bar of `length` messages, late labels (`late`) not counted,
    once the topics it writes exist."""
    topics = {settings.feedback_topic if feedback else settings.topic, settings.dlq_topic}
    if late:
        topics.add(settings.feedback_topic)
    missing = topics - set(topic_partitions(settings.bootstrap))
    if missing:
        raise ValueError(
            f"topics {sorted(missing)} do not exist on {settings.bootstrap}: "
            "`lambda-ml kafka up` creates them"
        )
    producer = make_producer(settings)
    columns = (
        TextColumn("producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("produce", total=length, rate="")
            return publish(
                producer,
                settings,
                messages,
                rate=rate,
                on_sent=lambda raw: (
                    None if isinstance(raw, FeedbackMessage) else progress.advance(task)
                ),
                feedback=feedback,
            )
    finally:
        producer.close()
