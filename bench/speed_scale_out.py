"""Scale-out benchmark of the speed layer: one consumer group of N workers on a 4-partition
topic, each worker its own process with the batch champion loaded, against one worker of the
same group code in the same run.

Every worker count reads the same replay with a fresh group and a fresh snapshot folder, twice:
from a topic filled beforehand (the workers as fast as they go: throughput, and the worst case
for accuracy, since peers' snapshots are then many events old), and from a topic the replay is
produced onto live at `LIVE_RATE` (peers' snapshots as old as at a steady rate). Repeats
alternate the counts so drift of the machine hits each alike.
A worker is `GroupSpeedLayer` over a real `GroupReader`, started from a spawned process
(nothing shared with the parent but a pickled champion file); the parent only watches the
snapshots until every partition's newest one holds the topic's end, then stops the workers.

- labelled events/s: every worker's labelled events over the span from the first event any
  worker learnt to the last (rebalances included), median over repeats; the ratio is the
  median of the per-repeat ratios to one worker; the cores the workers and the local broker
  used over that span say what the machine had left;
- the merge: every partition's newest snapshot added up (`merge_snapshots`) against one model
  that learnt the whole replay in process, count for count;
- prequential accuracy of the merged view, on first-seen texts (texts neither the view nor
  the champion had trained on) and on repeats, summed over partitions (a revoked partition's
  scores are kept by the worker that scored them).

The serving half starts two services on one champion: one whose speed snapshot is a single
model of the training split, one with the same split as four partitions' snapshots that it
merges on load, and loads them in turn (`bench.serve.load`) for the added p99 of merging.
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

import psutil
from rich.console import Console

from bench.serve import BENCH_DIR, blend_server, load, make_models
from common.settings import KafkaSettings, SpeedSettings
from models.metrics import SplitScore
from models.registry import ChampionModel
from models.snapshot import SnapshotStore, merge_snapshots
from models.speed_model import build_speed_model
from pipelines.jobs import group_member
from pipelines.produce import ReplayOptions, run_produce
from pipelines.services import broker
from pipelines.speed.layer import GroupSpeedLayer
from streams.consumer import Consumed

PARTITIONS = 4
GOAL_RATIO = 1.7
GOAL_FIRST_SEEN_GAP_POINTS = 0.5
GOAL_P99_RATIO = 1.1
WAIT_S = 600.0
SNAPSHOT_EVERY_S = 1.0
PEER_REFRESH_S = 1.0
LIVE_RATE = 2_000.0
LIVE = f"_live_{LIVE_RATE:g}_per_s"
"""The suffix of the figures measured over the replay produced live at `LIVE_RATE`."""


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


class _TimedLayer(GroupSpeedLayer):
    """The group layer, noting when it learnt and keeping the scores of revoked partitions."""

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
    with group_member(kafka, settings, "bench") as reader:
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
        scale_out=True,
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


def scale_out_figures(
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
    ends = broker.end_offsets(filled.bootstrap, filled.topic)

    def live_topic() -> tuple[KafkaSettings, Callable[[], dict[int, int]]]:
        topic = fresh_topic("live", PARTITIONS)

        def feed() -> dict[int, int]:
            run_produce(topic, replace(replay, rate=LIVE_RATE), Console(file=io.StringIO()))
            return broker.end_offsets(topic.bootstrap, topic.topic)

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
        "worker": "GroupSpeedLayer in a spawned process, champion loaded, snapshots every 1 s",
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
