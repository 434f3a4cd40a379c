"""Speed-layer benchmark, end to end from Kafka, in its steady state: the speed layer with a
batch champion against a tuned River loop.

The champion is `build_batch_model()` fitted on CLINC150's own training rows (`train` and
`oos_train`, in-scope and out-of-scope as the dataset has them), given to the speed layer in
process with the texts it trained on. Both contenders then read the same query-log replay (a
share of the events are generated variants seen about once, the rest repeat dataset rows) from
the same one-partition topic on the real broker, each repeat with a fresh consumer, through the
same `event_reader`, so throughput includes consuming and validating:

- the speed layer predicts each poll with the champion, scores the speed, batch and blend
  views, teaches the blender and the speed model, watches the champion's error with ADWIN and
  snapshots as in production;
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
speed layer runs, timed from produce to the snapshot that holds them. The benchmark stops the
broker if it started it and deletes the topics and consumer groups it created; writes
`bench/results/speed.json`.

The scale-out half (`bench.speed_scale_out`) runs a consumer group of each of `--workers` on a
4-partition topic of the same replay, and serving with one snapshot against four partitions'.

    lambda-ml bench speed [--repeats 3] [--workers 1,2]
"""

import io
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from bench.speed_scale_out import (
    GOAL_FIRST_SEEN_GAP_POINTS,
    GOAL_P99_RATIO,
    LIVE,
    partition_merge_p99,
    scale_out_figures,
)
from bench.speed_scale_out import GOAL_RATIO as GOAL_SCALE_OUT_RATIO
from common.settings import KafkaSettings, Settings, SpeedSettings
from models.batch.recipe import build_batch_model, fit_on_counts
from models.metrics import SplitScore, WindowScore
from models.registry import ChampionInfo, ChampionModel
from models.snapshot import SnapshotStore
from models.speed_model import build_speed_model
from models.texts import TextMemory
from pipelines.batch.counts import count_examples_from_pairs
from pipelines.jobs import event_reader
from pipelines.produce import ReplayOptions, replay_messages, run_produce
from pipelines.services import broker
from pipelines.speed.layer import SpeedLayer
from streams.dataset import CLINC150_DATA, load_dataset
from streams.schema import parse_event

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
SCALE_OUT_HEADLINES = (
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

    def fresh_topic(self, name: str, partitions: int) -> KafkaSettings:
        topic = f"bench-{name}-{time.time_ns()}"
        self.topics += [topic, f"{topic}.dlq"]
        broker.ensure_topics(self.kafka.bootstrap, {topic: partitions, f"{topic}.dlq": 1})
        return self.kafka.model_copy(update={"topic": topic, "dlq_topic": f"{topic}.dlq"})

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


def river_run(kafka: KafkaSettings, events: int, alpha: float) -> Run:
    """The tuned River loop over the topic: predict, score, learn each event."""
    model = river_baseline(alpha)
    scores = SplitScore()
    learnt = TextMemory()
    done = 0
    with event_reader(kafka, f"bench-river-{time.time_ns()}", "bench") as reader:
        started, cpu_started = time.perf_counter(), time.process_time()
        while done < events:
            for item in reader.poll(timeout_ms=500):
                intent = item.event.intent
                if intent is None:
                    continue
                score_then_learn(model, scores, learnt, item.event.text, intent)
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
) -> tuple[Run, SpeedLayer]:
    """The speed layer with the champion over the topic: (its run, the layer)."""
    settings = SpeedSettings(
        snapshot_dir=folder,
        signal_dir=folder / "signals",
        model=SPEED_MODEL,
        model_params={"alpha": alpha},
    )
    with event_reader(kafka, group, "bench") as reader:
        layer = SpeedLayer(
            reader, SnapshotStore(folder), settings, current_champion=lambda: champion
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        layer.run(threading.Event(), max_events=events)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    state = layer.state
    if state.base_version != champion.info.version or state.scores.batch.seen != events:
        raise RuntimeError(
            f"the speed layer did not run on the champion: base {state.base_version}, "
            f"{state.scores.batch.seen} of {events} events scored by it"
        )
    return Run(state.events_learnt, seconds, cpu_seconds, state.scores.speed), layer


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
        producer.start()
        runner = threading.Thread(target=layer.run, args=(stop,), kwargs={"idle_exit_s": 3.0})
        runner.start()
        producer.join()
        runner.join()
    return float(np.percentile(layer.reporter.freshness_s, 95))


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
    group of each of `workers` (`bench.speed_scale_out`; none: skipped), and save the
    figures."""
    grid = ALPHA_GRID
    print(f"tuning alpha over {list(grid)} on a {events:,}-event replay (seed {TUNING_SEED})")
    tuning = labelled_replay(_replay(TUNING_SEED, events, "bench-tune"))
    river_alpha, river_grid = tune_alpha(tuning, grid)
    speed_alpha, speed_grid = tune_alpha(tuning, grid, build=lambda a: build_speed_model(alpha=a))
    print(f"tuned alpha: River {river_alpha}, speed model {speed_alpha}")
    champion, history_rows, fit_s = train_champion()
    print(f"champion fitted on {history_rows:,} rows in {fit_s:.1f} s")

    kafka, local = settings.kafka, settings.local_broker
    cluster = _Cluster(kafka)
    started_broker = False
    river: list[Run] = []
    speed: list[Run] = []
    layers: list[SpeedLayer] = []
    snapshot_sizes: list[int] = []
    snapshot_ms: list[float] = []
    try:
        started_broker = broker.up(kafka, local)
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
                path = Path(layer.store.save(layer.snapshot_of_state()))
                snapshot_ms.append((time.perf_counter() - started) * 1000)
                snapshot_sizes.append(path.stat().st_size)
            live = cluster.fresh_topic("fresh", partitions=1)
            freshness = freshness_run(
                live,
                cluster.fresh_group("fresh"),
                Path(scratch) / "fresh",
                rate=FRESHNESS_RATE,
                seconds=FRESHNESS_SECONDS,
            )
            scale_out: dict[str, Any] = {}
            scale_out_recorded: dict[str, Any] = {}
            if workers:
                scale_out, scale_out_recorded = scale_out_figures(
                    cluster.fresh_topic,
                    cluster.fresh_group,
                    list(workers),
                    repeats,
                    champion,
                    speed_alpha,
                    measured,
                    labelled_replay(measured),
                    broker.status(kafka, local).pid,
                    Path(scratch),
                )
    finally:
        cluster.delete_all()
        if started_broker:
            broker.down(kafka, local)

    if workers:
        scale_out |= partition_merge_p99(repeats, merge_seconds)
        scale_out["goal_met"] = {
            f"ratio_2_workers_vs_1_at_least_{GOAL_SCALE_OUT_RATIO:g}": (
                scale_out.get("ratio_2_workers_vs_1", 0.0) >= GOAL_SCALE_OUT_RATIO
            ),
            "merged_equals_single": scale_out["merged_equals_single"],
            f"first_seen_gap_within_{GOAL_FIRST_SEEN_GAP_POINTS:g}_points": (
                abs(scale_out.get("first_seen_accuracy_gap_2_vs_1_points", float("inf")))
                <= GOAL_FIRST_SEEN_GAP_POINTS
            ),
            f"first_seen_gap_live_within_{GOAL_FIRST_SEEN_GAP_POINTS:g}_points": (
                abs(scale_out.get(f"first_seen_accuracy_gap_2_vs_1_points{LIVE}", float("inf")))
                <= GOAL_FIRST_SEEN_GAP_POINTS
            ),
            f"p99_ratio_4_partitions_vs_1_at_most_{GOAL_P99_RATIO:g}": (
                scale_out["p99_ratio_4_partitions_vs_1"] <= GOAL_P99_RATIO
            ),
        }
    ratios = [s.events_per_s / r.events_per_s for r, s in zip(river, speed, strict=True)]
    views = [layer.state.scores for layer in layers]
    speed_rate = statistics.median(run.events_per_s for run in speed)
    river_rate = statistics.median(run.events_per_s for run in river)
    ratio = statistics.median(ratios)
    speed_first_seen = _accuracy([run.scores.first_seen for run in speed])
    river_first_seen = _accuracy([run.scores.first_seen for run in river])
    figures: dict[str, Any] = {
        "events": events,
        "speed_events_per_s_with_champion": round(speed_rate, 1),
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
        **{key: scale_out[key] for key in SCALE_OUT_HEADLINES if key in scale_out},
        "scale_out": scale_out,
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
        "broker_started_by_bench": started_broker,
        "scale_out": scale_out_recorded,
    }
    return save_figures("speed", figures, recorded)
