"""Speed-layer benchmark, end to end from Kafka: the speed layer with a batch champion against
a tuned River loop in its steady state, and consumer groups of one and more workers.

The champion is `build_batch_model()` fitted on CLINC150's own training rows (`train` and
`oos_train`, in-scope and out-of-scope as the dataset has them), given to the speed layer in
process with the texts it trained on. Both contenders then read the same query-log replay (a
share of the events are generated variants seen about once, the rest repeat dataset rows) from
the same one-partition topic on the real broker, each repeat with a fresh consumer group of one
through the same `event_reader`, so throughput includes consuming and validating (the clocks
start once the group has given the reader its partition: joining is not throughput):

- the speed layer (one worker owning the one partition) predicts each poll with the champion,
  scores the speed, batch and blend views, teaches the blender and the speed model, watches the
  champion's error with ADWIN and snapshots as in production;
- the River loop (`bench.river_baseline`) predicts, scores and learns each event.

Both models start cold on the stream. Their smoothing is tuned the same way, by prequential
accuracy over one alpha grid on a tuning replay with another seed than the measured one, and
each then runs with its chosen alpha. Accuracy is split into texts the model had not trained on
(first seen) and repeats; the blend's first-seen figure counts texts that neither the champion
nor the speed model had trained on. CPU time is the process's (`time.process_time()`: every
thread, Kafka clients included). Repeats alternate River and speed layer so drift of the machine
hits both alike; throughput figures are medians over repeats, the ratio the median of the
per-repeat ratios.

Freshness is measured separately on a live stream: events produced at a steady rate while the
speed layer runs, timed from produce to the snapshot that holds them.

The labels of a deployment come late, for some queries, on the feedback topic: the speed layer
then predicts every query with every view as it arrives and keeps the predictions until the
query's label comes (`pipelines.speed.joins`). That phase replays the measured seed's queries
without their labels, and the labels of `FEEDBACK_SHARE` of them `FEEDBACK_DELAY` queries later
on a one-partition feedback topic, and counts the labels the layer learns per second with the
champion (`speed_run` with `feedback`: `speed_events_per_s_feedback_topic`), each repeat with a
fresh group.

The consumer-group half runs a group of each of `--workers` on a 4-partition topic of the same
replay, each worker its own process with the champion loaded, against one worker of the same
code in the same run. Every worker count reads the same replay with a fresh group and a fresh
snapshot folder, twice: from a topic filled beforehand (the workers as fast as they go:
throughput, and the worst case for accuracy, since peers' snapshots are then many events old),
and from a topic the replay is produced onto live at `LIVE_RATE` (peers' snapshots as old as at
a steady rate). Repeats alternate the counts so drift of the machine hits each alike. A worker
is `SpeedLayer` over the job's `event_reader`, started from a spawned process (nothing shared
with the parent but a pickled champion file); the parent only watches the snapshots until every
partition's newest one holds the topic's end, then stops the workers.

- labelled events/s: every worker's labelled events over the span from the first event any
  worker learnt to the last (rebalances included), median over repeats; the ratio is the
  median of the per-repeat ratios to one worker; the cores the workers and the local broker
  used over that span say what the machine had left;
- the merge: every partition's newest snapshot added up (`merge_snapshots`) against one model
  that learnt the whole replay in process, count for count;
- prequential accuracy of the merged view, on first-seen texts (texts neither the view nor
  the champion had trained on) and on repeats, summed over partitions (a revoked partition's
  scores are kept by the worker that scored them).

The serving part starts two services on one champion: one whose speed snapshot is a single
model of the training split, one with the same split as four partitions' snapshots that it
merges on load, and loads them in turn (`bench.serve.load`) for the added p99 of merging.

The benchmark stops the broker if it started it and deletes the topics and consumer groups it
created; writes `bench/results/speed.json`.

    lambda-ml bench speed [--repeats 3] [--workers 1,2]
"""

import io
import json
import multiprocessing
import pickle
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from rich.console import Console

from bench import save_figures
from bench.river_baseline import (
    ALPHA_GRID,
    LabelledText,
    river_baseline,
    score_then_learn,
    tune_alpha,
)
from bench.serve import BENCH_DIR, blend_server, load, make_models
from common.settings import KafkaSettings, Settings, SpeedSettings
from models.batch.recipe import build_batch_model, fit_on_counts
from models.metrics import SplitScore, WindowScore
from models.registry import ChampionInfo, ChampionModel
from models.snapshot import SnapshotStore, SpeedSnapshot, merge_snapshots
from models.speed_model import build_speed_model
from models.texts import TextMemory
from pipelines.batch.counts import count_examples_from_pairs
from pipelines.jobs import event_reader
from pipelines.produce import ReplayOptions, replay_messages, run_produce
from pipelines.services.broker import KafkaLauncher, end_offsets, ensure_topics
from pipelines.speed.layer import SpeedLayer
from streams.consumer import Consumed, EventReader
from streams.dataset import CLINC150_DATA, load_dataset
from streams.producer import FeedbackMessage
from streams.schema import QueryEvent, parse_event

EVENTS = 40_000
SPEED_MODEL = "models.speed_model:build_speed_model"  # measured whatever SPEED_MODEL says
MEASURED_SEED = 7
TUNING_SEED = 8
TAIL_FRACTION = 0.3
HISTORY_SPLITS = frozenset({"train", "oos_train"})
GOAL_EVENTS_PER_S = 5_000
GOAL_RATIO = 10.0
FRESHNESS_RATE = 2000.0
FRESHNESS_SECONDS = 15.0
FEEDBACK_SHARE = 0.3
FEEDBACK_DELAY = 1_000
JOIN_TIMEOUT_S = 60.0
IDLE_EXIT_S = 60.0  # a run whose topic has nothing left to give it ends (and says how far it got)
PARTITIONS = 4
GOAL_GROUP_RATIO = 1.7
GOAL_FIRST_SEEN_GAP_POINTS = 0.5
GOAL_P99_RATIO = 1.1
WAIT_S = 600.0
SNAPSHOT_EVERY_S = 1.0
PEER_REFRESH_S = 1.0
LIVE_RATE = 2_000.0
LIVE = f"_live_{LIVE_RATE:g}_per_s"
"""The suffix of the group figures measured over the replay produced live at `LIVE_RATE`."""
GROUP_HEADLINES = (
    "ratio_2_workers_vs_1",
    "merged_equals_single",
    "first_seen_accuracy_gap_2_vs_1_points",
    "p99_ratio_4_partitions_vs_1",
)


@dataclass(frozen=True)
class Run:
    """One contender's pass over the topic."""

    events: int
    seconds: float
    cpu_seconds: float
    scores: SplitScore
    # The speed layer's snapshot of partition 0 at the end of its run, taken while the reader
    # still owns the partition (None for the River loop).
    snapshot: SpeedSnapshot | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_s_per_event(self) -> float:
        return self.cpu_seconds / self.events


class _Cluster:
    """The bench's topics and consumer groups, to delete when it is done."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.topics: list[str] = []
        self.groups: list[str] = []

    def fresh_topic(self, name: str, partitions: int, feedback: bool = False) -> KafkaSettings:
        """A fresh topic and its dead-letter topic (and, with `feedback`, its feedback topic
        of as many partitions)."""
        stream = self.kafka.on_topic(f"bench-{name}-{time.time_ns()}")
        created = {stream.topic: partitions, stream.dlq_topic: 1}
        if feedback:
            created[stream.feedback_topic] = partitions
        self.topics += list(created)
        ensure_topics(self.kafka.bootstrap, created)
        return stream

    def fresh_group(self, name: str) -> str:
        group = f"bench-{name}-{time.time_ns()}"
        self.groups.append(group)
        return group

    def delete_all(self) -> None:
        """Delete what was created; a failure is reported, not raised (it must not hide the
        benchmark's own error)."""
        if not self.topics and not self.groups:
            return
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.kafka.bootstrap, client_id="lambda-ml-bench-cleanup"
            )
        except KafkaError as exc:
            print(f"could not connect to delete the bench's topics: {exc}")
            return
        try:
            existing = set(admin.list_topics())
            topics = [topic for topic in self.topics if topic in existing]
            if topics:
                admin.delete_topics(topics, timeout_ms=30_000)
            if self.groups:
                # Groups that never committed do not exist; their errors are expected.
                admin.delete_groups(self.groups)
        except KafkaError as exc:
            print(f"could not delete the bench's topics {self.topics}: {exc}")
        finally:
            admin.close()


def labelled_replay(options: ReplayOptions) -> list[LabelledText]:
    """The (text, intent) pairs of a replay's labelled events, decoded as the layers see them."""
    _, messages, _ = replay_messages(options)
    events = (parse_event(raw) for raw in messages)
    return [(event.text, event.intent) for event in events if event.intent is not None]


def train_champion() -> tuple[ChampionModel, int, float]:
    """The batch champion on CLINC150's training rows: (champion, rows, seconds to fit)."""
    history = load_dataset(CLINC150_DATA, HISTORY_SPLITS).examples
    pairs = [(example.text, example.intent) for example in history]
    started = time.perf_counter()
    texts, intents, weights = count_examples_from_pairs(pairs)
    estimator = fit_on_counts(build_batch_model(), texts, intents, weights)
    seconds = time.perf_counter() - started
    info = ChampionInfo("bench", "1", "", {0: 0})  # the whole topic comes after its history
    return ChampionModel(info, estimator, TextMemory.of(texts)), len(pairs), seconds


def joined(reader: EventReader, poll: Callable[[], object]) -> None:
    """Poll until the group has given `reader` its partitions and they are started, so that a
    run's clock does not count the group's join. Nothing is handed out meanwhile: a partition's
    events come from the poll after the one that starts it."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not reader.settled:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the group gave the reader no partition in {JOIN_TIMEOUT_S:g} s")
        poll()


def river_run(kafka: KafkaSettings, events: int, alpha: float) -> Run:
    """The tuned River loop over the topic: predict, score, learn each event."""
    model = river_baseline(alpha)
    scores = SplitScore()
    learnt = TextMemory()
    done = 0
    with event_reader(kafka, f"bench-river-{time.time_ns()}", "bench") as reader:
        joined(reader, lambda: reader.poll(timeout_ms=100))
        started, cpu_started = time.perf_counter(), time.process_time()
        while done < events:
            for item in reader.poll(timeout_ms=500):
                event = item.event
                if not isinstance(event, QueryEvent) or event.intent is None:
                    continue
                score_then_learn(model, scores, learnt, event.text, event.intent)
                done += 1
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return Run(done, seconds, cpu_seconds, scores)


def speed_run(
    kafka: KafkaSettings,
    group: str,
    events: int,
    folder: Path,
    champion: ChampionModel,
    alpha: float,
    feedback: bool = False,
) -> tuple[Run, SpeedLayer]:
    """The speed layer with the champion over the topic until it has learnt `events` labelled
    events: (its run, the layer). With `feedback` the labels come on the feedback topic, each
    joined to its query's predictions."""
    settings = SpeedSettings(
        snapshot_dir=folder,
        signal_dir=folder / "signals",
        model=SPEED_MODEL,
        model_params={"alpha": alpha},
    )
    with event_reader(kafka, group, "bench", feedback=feedback) as reader:
        if feedback and not reader.reads_feedback:
            raise RuntimeError(f"the feedback topic {kafka.feedback_topic!r} is not read")
        layer = SpeedLayer(
            reader, SnapshotStore(folder), settings, current_champion=lambda: champion
        )
        joined(reader, layer.step)
        started, cpu_started = time.perf_counter(), time.process_time()
        layer.run(threading.Event(), idle_exit_s=IDLE_EXIT_S, max_events=events)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        snapshot = layer.snapshot_of(0)
    state = layer.state
    if feedback and state.labels_joined != events:
        raise RuntimeError(
            f"the speed layer joined {state.labels_joined} of {events} labels "
            f"({state.labels_dead_lettered} dead-lettered)"
        )
    if state.base_version != champion.info.version or state.scores.batch.seen != events:
        raise RuntimeError(
            f"the speed layer did not run on the champion: base {state.base_version}, "
            f"{state.scores.batch.seen} of {events} events scored by it"
        )
    return Run(state.events_learnt, seconds, cpu_seconds, state.scores.speed, snapshot), layer


def feedback_replay(events: int) -> tuple[ReplayOptions, int]:
    """The measured replay with late, partial labels, and how many labels it sends."""
    options = replace(
        _replay(MEASURED_SEED, events, "bench-feedback"),
        label_delay=FEEDBACK_DELAY,
        label_share=FEEDBACK_SHARE,
    )
    _, messages, _ = replay_messages(options)
    return options, sum(isinstance(message, FeedbackMessage) for message in messages)


def freshness_run(
    kafka: KafkaSettings, group: str, folder: Path, rate: float, seconds: float
) -> float:
    """p95 seconds from produce to a durable snapshot that reflects the event."""
    settings = SpeedSettings(
        snapshot_dir=folder,
        signal_dir=folder / "signals",
        snapshot_every_s=1.0,
        model=SPEED_MODEL,
        model_params={},
    )
    options = ReplayOptions(limit=int(rate * seconds), rate=rate, run_id=f"fresh-{time.time_ns()}")
    producer = threading.Thread(
        target=run_produce, args=(kafka, options, Console(file=io.StringIO()))
    )
    stop = threading.Event()
    with event_reader(kafka, group, "bench") as reader:
        layer = SpeedLayer(reader, SnapshotStore(folder), settings)
        joined(reader, layer.step)
        producer.start()
        runner = threading.Thread(target=layer.run, args=(stop,), kwargs={"idle_exit_s": 3.0})
        runner.start()
        producer.join()
        runner.join()
    return float(np.percentile(layer.reporter.freshness_s, 95))


@dataclass(frozen=True)
class WorkerResult:
    """What one worker process reports when it is stopped."""

    learnt: int
    first_learnt_at: float  # time.monotonic(): one clock for every process of the machine
    last_learnt_at: float
    cpu_seconds: float
    first_seen: tuple[int, int]  # (events, right) of the merged view, over its partitions
    repeated: tuple[int, int]
    blend_first_seen: tuple[int, int]


class _TimedLayer(SpeedLayer):
    """The speed layer, noting when it learnt and keeping the scores of revoked partitions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_at: float | None = None
        self.last_at = 0.0
        self.scored: list[SplitScore] = []
        self.blend_scored: list[SplitScore] = []

    def learn(self, consumed: list[Consumed]) -> None:
        started = time.monotonic()
        super().learn(consumed)
        if self.first_at is None:
            self.first_at = started
        self.last_at = time.monotonic()

    def _on_revoked(self, partitions: list[int]) -> None:
        for partition in partitions:
            if partition in self.parts:
                self.scored.append(self.parts[partition].scores.speed)
                self.blend_scored.append(self.parts[partition].scores.blend)
        super()._on_revoked(partitions)


def _pair(scores: list[SplitScore], group: str) -> tuple[int, int]:
    windows = [getattr(score, group) for score in scores]
    return sum(w.seen for w in windows), sum(w.correct for w in windows)


def _worker(
    kafka: KafkaSettings,
    settings: SpeedSettings,
    champion_file: str,
    ready: Any,
    stop: Any,
    results: Any,
) -> None:
    """One speed worker of the group until `stop`; its `WorkerResult` goes to `results`."""
    champion: ChampionModel = pickle.loads(Path(champion_file).read_bytes())
    with event_reader(
        kafka,
        settings.group_id,
        "bench",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    ) as reader:
        store = SnapshotStore(settings.snapshot_dir)
        layer = _TimedLayer(reader, store, settings, lambda: champion)
        ready.wait(timeout=300)  # every worker built, so they join the group together
        cpu_started = time.process_time()
        local_stop = threading.Event()

        def relay_stop() -> None:
            stop.wait()
            local_stop.set()

        threading.Thread(target=relay_stop, daemon=True).start()
        layer.run(local_stop)
        cpu_seconds = time.process_time() - cpu_started
    speed = layer.scored + [s.scores.speed for s in layer.parts.values()]
    blend = layer.blend_scored + [s.scores.blend for s in layer.parts.values()]
    results.put(
        WorkerResult(
            learnt=layer.learnt_here,
            first_learnt_at=layer.first_at or 0.0,
            last_learnt_at=layer.last_at,
            cpu_seconds=cpu_seconds,
            first_seen=_pair(speed, "first_seen"),
            repeated=_pair(speed, "repeated"),
            blend_first_seen=_pair(blend, "novel"),
        )
    )


@dataclass(frozen=True)
class GroupRun:
    """One pass of a group of workers over the topic, and the broker's CPU time meanwhile."""

    workers: int
    results: list[WorkerResult]
    merged_equals_single: bool
    broker_cpu_seconds: float | None

    @property
    def span_s(self) -> float:
        working = [r for r in self.results if r.learnt]
        return max(r.last_learnt_at for r in working) - min(r.first_learnt_at for r in working)

    @property
    def learnt(self) -> int:
        return sum(r.learnt for r in self.results)

    @property
    def events_per_s(self) -> float:
        return self.learnt / self.span_s

    @property
    def worker_cores(self) -> float:
        """The workers' CPU time over the span: how many of the machine's cores they used."""
        return sum(r.cpu_seconds for r in self.results) / self.span_s

    def accuracy(self, group: str) -> float:
        seen = sum(getattr(r, group)[0] for r in self.results)
        right = sum(getattr(r, group)[1] for r in self.results)
        return right / seen if seen else float("nan")

    def share(self, group: str) -> float:
        return sum(getattr(r, group)[0] for r in self.results) / self.learnt


def group_run(
    kafka: KafkaSettings,
    workers: int,
    group: str,
    folder: Path,
    champion_file: Path,
    alpha: float,
    single_counts: dict,
    feed: Callable[[], dict[int, int]],
    broker_pid: int | None,
) -> GroupRun:
    """`workers` processes of one fresh group over the whole topic, stopped once every
    partition's newest snapshot holds the topic's end.

    `feed` runs on a thread once the workers are ready and returns the topic's end offsets
    when every event is on it: at once for a topic filled before, or after producing it live.
    """
    settings = SpeedSettings(
        model="models.speed_model:build_speed_model",
        model_params={"alpha": alpha},
        group_id=group,
        snapshot_dir=folder,
        signal_dir=folder / "signals",
        snapshot_every_s=SNAPSHOT_EVERY_S,
        peer_refresh_s=PEER_REFRESH_S,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Barrier(workers + 1), context.Event(), context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(kafka, settings, str(champion_file), ready, stop, results),
            name=f"speed-worker-{i}",
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    store = SnapshotStore(folder)
    ends: dict[int, int] = {}
    try:
        ready.wait(timeout=300)
        broker_cpu_started = _cpu_seconds(broker_pid)
        feeder = threading.Thread(target=lambda: ends.update(feed()), daemon=True)
        feeder.start()
        deadline = time.monotonic() + WAIT_S
        watch = _EndWatch(store)
        while feeder.is_alive() or not watch.done(ends):
            if time.monotonic() > deadline or not all(p.is_alive() for p in processes):
                raise RuntimeError(f"{workers} worker(s) did not reach the end of the topic")
            time.sleep(0.5)
        broker_cpu = _cpu_seconds(broker_pid)
        stop.set()
        collected = [results.get(timeout=120) for _ in processes]
    finally:
        stop.set()
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()
    merged = merge_snapshots(store.latest_per_partition())
    equal = merged.model.count_table() == single_counts
    spent = None
    if broker_cpu is not None and broker_cpu_started is not None:
        spent = broker_cpu - broker_cpu_started
    return GroupRun(workers, collected, equal, spent)


class _EndWatch:
    """Says when a group has learnt the whole topic, reading (unpickling) the snapshots only
    when the listing shows new ones: the watching takes CPU from the workers."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._listed: dict[int, int] | None = None

    def done(self, ends: dict[int, int]) -> bool:
        listed = self.store.latest_sequences()
        if not ends or listed == self._listed:
            return False
        self._listed = listed
        return self.store.reached(ends)


def _cpu_seconds(pid: int | None) -> float | None:
    """The CPU time so far of process `pid` (the local broker), or None without one."""
    if pid is None:
        return None
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def single_model_counts(labelled: list[tuple[str, str]], alpha: float) -> dict:
    """The count table of one model that learnt every labelled event of the replay."""
    model = build_speed_model(alpha=alpha)
    for text, intent in labelled:
        model.learn_one({"text": text}, intent)
    return model.count_table()


def group_figures(
    fresh_topic: Callable[[str, int], KafkaSettings],
    fresh_group: Callable[[str], str],
    workers: list[int],
    repeats: int,
    champion: ChampionModel,
    alpha: float,
    replay: ReplayOptions,
    labelled: list[tuple[str, str]],
    broker_pid: int | None,
    scratch: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The group runs for each worker count, interleaved over `repeats`: over the replay
    produced beforehand (throughput: the workers as fast as they go), and over the same replay
    produced live at `LIVE_RATE` (accuracy: peers' snapshots as old as at a steady rate).
    Returns (figures, what was measured how)."""
    champion_file = scratch / "champion.pkl"
    champion_file.write_bytes(pickle.dumps(champion))
    single = single_model_counts(labelled, alpha)
    filled = fresh_topic("group", PARTITIONS)
    run_produce(filled, replay, Console(file=io.StringIO()))
    ends = end_offsets(filled.bootstrap, filled.topic)

    def live_topic() -> tuple[KafkaSettings, Callable[[], dict[int, int]]]:
        topic = fresh_topic("live", PARTITIONS)

        def feed() -> dict[int, int]:
            run_produce(topic, replace(replay, rate=LIVE_RATE), Console(file=io.StringIO()))
            return end_offsets(topic.bootstrap, topic.topic)

        return topic, feed

    runs: dict[str, dict[int, list[GroupRun]]] = {"full": {}, "live": {}}
    for repeat in range(repeats):
        for kind in runs:
            for n in workers:
                topic, feed = (filled, lambda: ends) if kind == "full" else live_topic()
                folder = scratch / f"{kind}-{n}-{repeat}"
                group = fresh_group(f"{kind}-w{n}")
                run = group_run(
                    topic, n, group, folder, champion_file, alpha, single, feed, broker_pid
                )
                runs[kind].setdefault(n, []).append(run)
                print(
                    f"repeat {repeat + 1}/{repeats}, {kind}: {n} worker(s) "
                    f"{run.events_per_s:,.0f} labelled events/s, first-seen accuracy "
                    f"{run.accuracy('first_seen'):.4f}, merged = single: "
                    f"{run.merged_equals_single}"
                )
    figures: dict[str, Any] = {}
    per_run: dict[str, Callable[[GroupRun], float]] = {
        "events_per_s": lambda r: r.events_per_s,
        "first_seen_accuracy": lambda r: r.accuracy("first_seen"),
        "repeated_accuracy": lambda r: r.accuracy("repeated"),
        "first_seen_share": lambda r: r.share("first_seen"),
        "blend_first_seen_accuracy": lambda r: r.accuracy("blend_first_seen"),
        "worker_cores": lambda r: r.worker_cores,
    }
    for kind, by_workers in runs.items():
        suffix = "" if kind == "full" else LIVE
        for n, done in by_workers.items():
            for key, value in per_run.items():
                median = statistics.median(map(value, done))
                figures[f"workers_{n}_{key}{suffix}"] = round(median, 4)
            if kind == "full":
                cpu = statistics.median(
                    sum(x.cpu_seconds for x in r.results) / r.learnt for r in done
                )
                figures[f"workers_{n}_cpu_s_per_event"] = float(f"{cpu:.3g}")
                broker_cores = [
                    r.broker_cpu_seconds / r.span_s for r in done if r.broker_cpu_seconds
                ]
                if broker_cores:
                    figures[f"workers_{n}_broker_cores"] = round(statistics.median(broker_cores), 3)
        if 1 in by_workers and 2 in by_workers:
            gap = 100 * (
                figures[f"workers_2_first_seen_accuracy{suffix}"]
                - figures[f"workers_1_first_seen_accuracy{suffix}"]
            )
            figures[f"first_seen_accuracy_gap_2_vs_1_points{suffix}"] = round(gap, 2)
    every = [run for by_workers in runs.values() for done in by_workers.values() for run in done]
    figures["merged_equals_single"] = all(run.merged_equals_single for run in every)
    figures["events_learnt_per_run"] = sorted({run.learnt for run in every})
    if 1 in runs["full"] and 2 in runs["full"]:
        pairs = zip(runs["full"][1], runs["full"][2], strict=True)
        ratios = [two.events_per_s / one.events_per_s for one, two in pairs]
        figures["ratio_2_workers_vs_1"] = round(statistics.median(ratios), 3)
        figures["ratio_2_workers_vs_1_per_repeat"] = [round(r, 3) for r in ratios]
    recorded = {
        "topic_partitions": PARTITIONS,
        "workers": workers,
        "worker": "SpeedLayer in a spawned process, champion loaded, snapshots every 1 s",
        "peer_refresh_s": PEER_REFRESH_S,
        "snapshot_every_s": SNAPSHOT_EVERY_S,
        "live_rate_events_per_s": LIVE_RATE,
        "events_per_s": "labelled events / (last learnt - first learnt, over all workers)",
        "cores": "CPU seconds over that span: the workers' summed, the local broker's",
        "first_seen": "texts neither the merged view (own and peers' models) nor the champion "
        "had trained on, summed over partitions",
    }
    return figures, recorded


def partition_merge_p99(repeats: int, duration_s: float, concurrency: int = 16) -> dict[str, Any]:
    """p99 of `/predict` with the speed model as one snapshot and as four partitions' snapshots
    merged on load, interleaved over `repeats`; the ratio is the median per-repeat ratio."""
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as scratch:
        workdir = Path(scratch)
        champion_path, snapshots, bodies = make_models(workdir, partitions=PARTITIONS)
        bodies_path = workdir / "bodies.json"
        bodies_path.write_text(json.dumps(bodies))
        servers = {
            name: blend_server(name, workdir, champion_path, snapshots[name], workers=1)
            for name in ("default", "partitioned")
        }
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        try:
            for server in servers.values():
                server.start()
            for server in servers.values():
                server.wait_ready()
            for _ in range(repeats):
                for name, server in servers.items():
                    runs[name].append(load(server, bodies_path, concurrency, duration_s))
        finally:
            for server in servers.values():
                server.stop()
    ratios = [
        four["p99_ms"] / one["p99_ms"]
        for one, four in zip(runs["default"], runs["partitioned"], strict=True)
    ]
    return {
        "p99_ms_1_snapshot": round(statistics.median(r["p99_ms"] for r in runs["default"]), 2),
        "p99_ms_4_partitions": round(
            statistics.median(r["p99_ms"] for r in runs["partitioned"]), 2
        ),
        "p99_ratio_4_partitions_vs_1": round(statistics.median(ratios), 3),
        "p99_ratio_4_partitions_vs_1_per_repeat": [round(r, 3) for r in ratios],
        "merge_serving_load": {
            "concurrency": concurrency,
            "duration_s": duration_s,
            "load_generator": str(BENCH_DIR / "serve_load.py"),
        },
    }


def _replay(seed: int, events: int, run_id: str) -> ReplayOptions:
    return ReplayOptions(seed=seed, limit=events, tail_fraction=TAIL_FRACTION, run_id=run_id)


def _grid_figures(scores: dict[float, SplitScore]) -> dict[str, dict[str, float]]:
    return {
        str(alpha): {
            "accuracy": round(score.accuracy, 4),
            "first_seen_accuracy": round(score.first_seen.accuracy, 4),
        }
        for alpha, score in scores.items()
    }


def _median(values: list[float], digits: int = 4) -> float:
    return round(statistics.median(values), digits)


def _accuracy(groups: list[WindowScore]) -> float | None:
    """Median accuracy of a group of events over the repeats; None if it held no events."""
    scored = [group.accuracy for group in groups if group.seen]
    return _median(scored) if scored else None


def _cpu_figure(runs: list[Run]) -> float:
    return float(f"{statistics.median(run.cpu_s_per_event for run in runs):.3g}")


def main(
    settings: Settings,
    repeats: int = 3,
    events: int = EVENTS,
    workers: tuple[int, ...] = (1, 2),
    merge_seconds: float = 10.0,
) -> dict[str, Any]:
    """Tune both models, fit the champion, run the interleaved repeats, then the consumer
    group of each of `workers` (none: skipped), and save the figures."""
    grid = ALPHA_GRID
    print(f"tuning alpha over {list(grid)} on a {events:,}-event replay (seed {TUNING_SEED})")
    tuning = labelled_replay(_replay(TUNING_SEED, events, "bench-tune"))
    river_alpha, river_grid = tune_alpha(tuning, grid)
    speed_alpha, speed_grid = tune_alpha(tuning, grid, build=lambda a: build_speed_model(alpha=a))
    print(f"tuned alpha: River {river_alpha}, speed model {speed_alpha}")
    champion, history_rows, fit_s = train_champion()
    print(f"champion fitted on {history_rows:,} rows in {fit_s:.1f} s")

    kafka = settings.kafka
    launcher = KafkaLauncher.of(settings)
    cluster = _Cluster(kafka)
    started_broker = False
    river: list[Run] = []
    speed: list[Run] = []
    layers: list[SpeedLayer] = []
    feedback: list[Run] = []
    feedback_layers: list[SpeedLayer] = []
    snapshot_sizes: list[int] = []
    snapshot_ms: list[float] = []
    try:
        started_broker = launcher.up()
        stream = cluster.fresh_topic("speed", partitions=1)
        measured = _replay(MEASURED_SEED, events, "bench-speed")
        run_produce(stream, measured, Console(file=io.StringIO()))
        with tempfile.TemporaryDirectory() as scratch:
            for repeat in range(repeats):
                river.append(river_run(stream, events, river_alpha))
                folder = Path(scratch) / f"speed-{repeat}"
                group = cluster.fresh_group("speed")
                run, layer = speed_run(stream, group, events, folder, champion, speed_alpha)
                speed.append(run)
                layers.append(layer)
                print(
                    f"repeat {repeat + 1}/{repeats}: River {river[-1].events_per_s:,.0f}, "
                    f"speed layer {run.events_per_s:,.0f} events/s"
                )
                started = time.perf_counter()
                assert run.snapshot is not None  # the speed layer's runs take one
                path = Path(layer.store.save(run.snapshot))
                snapshot_ms.append((time.perf_counter() - started) * 1000)
                snapshot_sizes.append(path.stat().st_size)
            late = cluster.fresh_topic("feedback", partitions=1, feedback=True)
            late_options, labels = feedback_replay(events)
            run_produce(late, late_options, Console(file=io.StringIO()))
            for repeat in range(repeats):
                run, layer = speed_run(
                    late,
                    cluster.fresh_group("feedback"),
                    labels,
                    Path(scratch) / f"feedback-{repeat}",
                    champion,
                    speed_alpha,
                    feedback=True,
                )
                feedback.append(run)
                feedback_layers.append(layer)
                print(
                    f"repeat {repeat + 1}/{repeats}: labels on the feedback topic, speed layer "
                    f"{run.events_per_s:,.0f} labelled events/s"
                )
            live = cluster.fresh_topic("fresh", partitions=1)
            freshness = freshness_run(
                live,
                cluster.fresh_group("fresh"),
                Path(scratch) / "fresh",
                rate=FRESHNESS_RATE,
                seconds=FRESHNESS_SECONDS,
            )
            groups: dict[str, Any] = {}
            groups_recorded: dict[str, Any] = {}
            if workers:
                groups, groups_recorded = group_figures(
                    cluster.fresh_topic,
                    cluster.fresh_group,
                    list(workers),
                    repeats,
                    champion,
                    speed_alpha,
                    measured,
                    labelled_replay(measured),
                    launcher.status().pid,
                    Path(scratch),
                )
    finally:
        cluster.delete_all()
        if started_broker:
            launcher.down()

    if workers:
        groups |= partition_merge_p99(repeats, merge_seconds)
        groups["goal_met"] = {
            f"ratio_2_workers_vs_1_at_least_{GOAL_GROUP_RATIO:g}": (
                groups.get("ratio_2_workers_vs_1", 0.0) >= GOAL_GROUP_RATIO
            ),
            "merged_equals_single": groups["merged_equals_single"],
            f"first_seen_gap_within_{GOAL_FIRST_SEEN_GAP_POINTS:g}_points": (
                abs(groups.get("first_seen_accuracy_gap_2_vs_1_points", float("inf")))
                <= GOAL_FIRST_SEEN_GAP_POINTS
            ),
            f"first_seen_gap_live_within_{GOAL_FIRST_SEEN_GAP_POINTS:g}_points": (
                abs(groups.get(f"first_seen_accuracy_gap_2_vs_1_points{LIVE}", float("inf")))
                <= GOAL_FIRST_SEEN_GAP_POINTS
            ),
            f"p99_ratio_4_partitions_vs_1_at_most_{GOAL_P99_RATIO:g}": (
                groups["p99_ratio_4_partitions_vs_1"] <= GOAL_P99_RATIO
            ),
        }
    ratios = [s.events_per_s / r.events_per_s for r, s in zip(river, speed, strict=True)]
    views = [layer.state.scores for layer in layers]
    speed_rate = statistics.median(run.events_per_s for run in speed)
    feedback_rate = statistics.median(run.events_per_s for run in feedback)
    late_views = [layer.state.scores for layer in feedback_layers]
    river_rate = statistics.median(run.events_per_s for run in river)
    ratio = statistics.median(ratios)
    speed_first_seen = _accuracy([run.scores.first_seen for run in speed])
    river_first_seen = _accuracy([run.scores.first_seen for run in river])
    figures: dict[str, Any] = {
        "events": events,
        "speed_events_per_s_with_champion": round(speed_rate, 1),
        "speed_events_per_s_feedback_topic": round(feedback_rate, 1),
        "feedback_topic_cpu_s_per_labelled_event": _cpu_figure(feedback),
        "feedback_topic_labels": labels,
        "feedback_topic_speed_accuracy": _median([v.speed.accuracy for v in late_views]),
        "feedback_topic_blend_accuracy": _median([v.blend.accuracy for v in late_views]),
        "tuned_river_events_per_s": round(river_rate, 1),
        "ratio_vs_tuned_river": round(ratio, 2),
        "ratio_per_repeat": [round(r, 2) for r in ratios],
        "ratio_min": round(min(ratios), 2),
        "ratio_max": round(max(ratios), 2),
        "speed_cpu_s_per_event": _cpu_figure(speed),
        "tuned_river_cpu_s_per_event": _cpu_figure(river),
        "speed_accuracy": _median([run.scores.accuracy for run in speed]),
        "tuned_river_accuracy": _median([run.scores.accuracy for run in river]),
        "speed_first_seen_accuracy": speed_first_seen,
        "tuned_river_first_seen_accuracy": river_first_seen,
        "speed_repeated_accuracy": _accuracy([run.scores.repeated for run in speed]),
        "tuned_river_repeated_accuracy": _accuracy([run.scores.repeated for run in river]),
        "speed_first_seen_share": _median([run.scores.first_seen_share for run in speed]),
        "tuned_river_first_seen_share": _median([run.scores.first_seen_share for run in river]),
        "batch_accuracy": _median([v.batch.accuracy for v in views]),
        "blend_accuracy": _median([v.blend.accuracy for v in views]),
        "blend_first_seen_accuracy": _accuracy([v.blend.novel for v in views]),
        "blend_first_seen_share": _median([v.blend.novel.seen / v.blend.seen for v in views]),
        "drift_detections": int(statistics.median(layer.drift.detections for layer in layers)),
        "speed_alpha": speed_alpha,
        "tuned_river_alpha": river_alpha,
        "alpha_grid": {
            "speed_model": _grid_figures(speed_grid),
            "river": _grid_figures(river_grid),
        },
        "goal_met": {
            f"speed_events_per_s_at_least_{GOAL_EVENTS_PER_S}": speed_rate >= GOAL_EVENTS_PER_S,
            f"speed_events_per_s_feedback_topic_at_least_{GOAL_EVENTS_PER_S}": (
                feedback_rate >= GOAL_EVENTS_PER_S
            ),
            f"ratio_vs_tuned_river_at_least_{GOAL_RATIO:g}": ratio >= GOAL_RATIO,
            "speed_first_seen_accuracy_at_least_river": (
                speed_first_seen is not None
                and river_first_seen is not None
                and speed_first_seen >= river_first_seen
            ),
        },
        "freshness_p95_s": round(freshness, 3),
        "snapshot_bytes": int(statistics.median(snapshot_sizes)),
        "snapshot_write_ms": round(statistics.median(snapshot_ms), 1),
        "repeats": repeats,
        **{key: groups[key] for key in GROUP_HEADLINES if key in groups},
        "consumer_group": groups,
    }
    recorded = {
        "measured_replay": {"seed": MEASURED_SEED, "limit": events, "tail_fraction": TAIL_FRACTION},
        "tuning_replay": {"seed": TUNING_SEED, "limit": events, "tail_fraction": TAIL_FRACTION},
        "alpha_grid": list(grid),
        "alpha_chosen_by": "prequential accuracy on the tuning replay",
        "champion": {
            "model": "build_batch_model() defaults",
            "history": f"CLINC150 splits {sorted(HISTORY_SPLITS)}",
            "history_rows": history_rows,
            "fit_s": round(fit_s, 1),
            "cutoff_offsets": {"0": 0},
            "poll": "in process (current_champion returns the fitted model)",
        },
        "topic_partitions": 1,
        "cpu_time": "time.process_time() around each loop: the whole process, all threads",
        "freshness": {"rate": FRESHNESS_RATE, "seconds": FRESHNESS_SECONDS, "champion": None},
        "feedback_topic": {
            "replay": {"seed": MEASURED_SEED, "limit": events, "tail_fraction": TAIL_FRACTION},
            "label_share": FEEDBACK_SHARE,
            "label_delay_queries": FEEDBACK_DELAY,
            "partitions": 1,
            "measured": "labels learnt per second, every query predicted by every view on arrival",
        },
        "broker_started_by_bench": started_broker,
        "consumer_group": groups_recorded,
    }
    return save_figures("speed", figures, recorded)
