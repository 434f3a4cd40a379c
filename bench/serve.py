"""Serving benchmark: the blend service against four references, on loopback, as ratios.

It trains its own models on CLINC150 `train` (no MLflow server needed): a batch champion from
the batch layer's factory (TF-IDF word 1-2 + char_wb 2-4 grams, calibrated LinearSVC + naive
Bayes) saved for `SERVING_CHAMPION_PATH`, and a speed snapshot (the speed layer's model, and a
blender learnt on the validation split). Then it serves

- noop: a BentoML service configured like the service (workers, config, GC and logging set-up)
  that answers a constant: the framework's floor,
- fastapi: FastAPI as users write it, an `async def` handler scoring its one text with the
  batch champion, on one uvicorn worker,
- fastapi_coalesced: the same app with the service's request coalescing,
- batch_only: `IntentClassifier` without a snapshot (what the blend costs),
- blend: `IntentClassifier` with both models, writing every answered query to a topic of a
  real broker (the served query log, as deployed; the broker is started unless one answers),
- blend_no_query_log: the same with `SERVING_QUERY_LOG=false` (what the query log costs),
- blend_abstaining: blend_no_query_log with the champion's scope decision, which can answer
  "out of scope" (what abstaining costs; the champion is the same model otherwise),
- blend_plain_river: the same, with a plain River speed model (`models.alternatives:
  river_softmax`, no vectorised predict: each text is scored through `predict_proba_one`),

every reference configured like the service (see `serve_noop.py` and `serve_fastapi.py`), all
at once on free ports. Each is loaded in turn with single-query `/predict` requests at a fixed
concurrency from a separate process (`serve_load.py`), interleaving the repetitions so that
drift on the machine hits every target alike. Each measurement records requests per second,
p50/p99 latency, the server's CPU time per request and the load generator's own CPU time (to
show it was not the limit). The figures are medians over the repetitions, with the blend's
ratios to the no-op (per repetition too, with their spread) and whether they meet the goals
(at least `RPS_GOAL` of the no-op's throughput, at most `P99_GOAL` times its p99); they go,
stamped with their provenance, to `bench/results/serve.json` (or `--output`).

    lambda-ml bench serve [--repeats 3]
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench import provenance, save_figures
from bench.champion_file import save_champion_file
from common.processes import ChildProcess, free_port
from common.settings import KafkaSettings, Settings
from models.alternatives import river_softmax
from models.batch.recipe import build_batch_model
from models.blend import Blender
from models.registry import ChampionInfo, ChampionModel
from models.scope import scoped_model
from models.snapshot import SnapshotStore, SpeedSnapshot
from models.speed_model import build_speed_model
from pipelines.services.bento_server import (
    SERVICE_NAME,
    SERVICE_TARGET,
    bentoml_overrides,
    bentoml_server,
)
from pipelines.services.broker import KafkaLauncher, ensure_stream_topics
from streams.dataset import CLINC150_DATA, load_dataset

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "serve.json"
SCOPED_CHAMPION = "champion-scoped.pkl"
TARGETS = (
    "noop",
    "fastapi",
    "fastapi_coalesced",
    "batch_only",
    "blend",
    "blend_no_query_log",
    "blend_abstaining",
    "blend_plain_river",
)
# The blend's goals against the no-op: at least this share of its throughput ...
RPS_GOAL = 0.8
# ... and at most this multiple of its p99 latency.
P99_GOAL = 1.5
# The served query log's goals: with it on, at least this share of the throughput with it off,
# at most this multiple of the p99.
QUERY_LOG_RPS_GOAL = 0.9
QUERY_LOG_P99_GOAL = 1.2
# Answers that may abstain: at least this share of the throughput of the same blend that never
# does.
ABSTENTION_RPS_GOAL = 0.95


def make_models(
    workdir: Path, partitions: int = 1, scoped: bool = False
) -> tuple[Path, dict[str, Path], list[dict]]:
    """Train and save the models; return the champion file, the snapshot folder of each speed
    model (the default, and a plain River one; with `partitions` > 1 also "partitioned": the
    default model's training split dealt over that many partitions' snapshots, which serving
    adds up on load), and the request bodies.

    With `scoped`, the champion is fitted with CLINC150's `oos_train` rows and a scope decision
    beside it (`models.scope`), saved as `SCOPED_CHAMPION` in `workdir`; the champion file is
    the same model without the decision (its `estimator_`), so the two differ in nothing else.
    """
    dataset = load_dataset(CLINC150_DATA).examples
    examples = [e for e in dataset if e.intent != "oos"]
    split = {name: [e for e in examples if e.split == name] for name in ("train", "val", "test")}
    out_of_scope = [e for e in dataset if e.split == "oos_train"] if scoped else []
    fitted = split["train"] + out_of_scope
    train_texts = [e.text for e in fitted]
    started = time.perf_counter()
    intents = [e.intent for e in fitted]
    if scoped:
        with_scope = scoped_model().fit(train_texts, intents)
        models = {"champion.pkl": with_scope.estimator_, SCOPED_CHAMPION: with_scope}
    else:
        models = {"champion.pkl": build_batch_model().fit(train_texts, intents)}
    print(f"batch model trained in {time.perf_counter() - started:.1f}s", flush=True)
    for name, model in models.items():
        save_champion_file(
            workdir / name,
            model,
            version="1",
            cutoff_offsets={0: len(train_texts)},
            training_texts=train_texts,
        )
    champion_path = workdir / "champion.pkl"
    estimator = models["champion.pkl"]

    champion = ChampionModel(ChampionInfo("bench", "1", "", {}), estimator)
    val_batch = champion.predict_proba_many([e.text for e in split["val"]])
    snapshots = {}
    for name, build in (("default", build_speed_model), ("plain_river", river_softmax)):
        speed = build()
        for example in split["train"]:
            speed.learn_one({"text": example.text}, example.intent)
        blender = Blender()
        for example, batch in zip(split["val"], val_batch, strict=True):
            blender.learn(batch, speed.predict_proba_one({"text": example.text}), example.intent)
        snapshots[name] = workdir / f"snapshots-{name}"
        SnapshotStore(snapshots[name]).save(
            SpeedSnapshot(
                model=speed,
                blender=blender,
                offsets={0: len(train_texts)},
                events_learnt=len(train_texts),
            )
        )
        if name == "default" and partitions > 1:
            snapshots["partitioned"] = workdir / "snapshots-partitioned"
            _save_partitioned(snapshots["partitioned"], split["train"], blender, partitions)
    return champion_path, snapshots, [{"text": e.text} for e in split["test"]]


def _save_partitioned(folder: Path, examples: list, blender: Blender, partitions: int) -> None:
    """The examples dealt round-robin over `partitions` models, each saved as its partition's
    snapshot (with the whole model's blender), as a consumer group's workers leave them."""
    store = SnapshotStore(folder)
    for partition in range(partitions):
        mine = examples[partition::partitions]
        model = build_speed_model()
        for example in mine:
            model.learn_one({"text": example.text}, example.intent)
        store.save(
            SpeedSnapshot(
                model=model,
                blender=blender,
                offsets={partition: len(mine)},
                events_learnt=len(mine),
                partition=partition,
            )
        )


def blend_server(
    name: str,
    workdir: Path,
    champion_path: Path,
    snapshots: Path,
    workers: int,
    metrics: bool = True,
    target: str = SERVICE_TARGET,
    service_name: str = SERVICE_NAME,
    query_log: KafkaSettings | None = None,
) -> ChildProcess:
    """A BentoML server of `target` (the service by default) on a free port, serving the
    champion file and the snapshots in `snapshots`, logging under `workdir/logs`, writing its
    answered queries to `query_log`'s topic (None: the query log off)."""
    env = {
        "SERVING_CHAMPION_PATH": str(champion_path),
        "SERVING_SNAPSHOT_DIR": str(snapshots),
        "BENTOML_CONFIG_OVERRIDES": bentoml_overrides(service_name, workers, metrics=metrics),
        "SERVING_QUERY_LOG": str(query_log is not None).lower(),
        "SERVING_QUERY_LOG_JOURNAL_DIR": str(workdir / "journal" / name),
    }
    if query_log is not None:
        env |= {
            "KAFKA_BOOTSTRAP_SERVERS": query_log.bootstrap,
            "KAFKA_TOPIC": query_log.topic,
            "KAFKA_FEEDBACK_TOPIC": query_log.feedback_topic,
        }
    log_path = workdir / "logs" / f"{name}.log"
    return bentoml_server(name, free_port(), env, target=target, cwd=ROOT, log_path=log_path)


def make_servers(
    workdir: Path,
    champion_path: Path,
    snapshots: dict[str, Path],
    workers: int,
    metrics: bool,
    query_log: KafkaSettings,
) -> dict[str, ChildProcess]:
    def bentoml(
        name: str,
        target: str,
        service_name: str,
        snapshots: Path,
        query_log: KafkaSettings | None = None,
    ) -> ChildProcess:
        return blend_server(
            name,
            workdir,
            workdir / SCOPED_CHAMPION if name == "blend_abstaining" else champion_path,
            snapshots,
            workers,
            metrics,
            target,
            service_name,
            query_log,
        )

    def fastapi(name: str, target: str) -> ChildProcess:
        port = free_port()
        return ChildProcess(
            name,
            [sys.executable, "-m", "uvicorn", target, "--no-access-log"]
            + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env={**os.environ, "SERVING_CHAMPION_PATH": str(champion_path)},
            cwd=ROOT,
            log_path=workdir / "logs" / f"{name}.log",
            port=port,
        )

    return {
        "blend": bentoml("blend", SERVICE_TARGET, SERVICE_NAME, snapshots["default"], query_log),
        "blend_no_query_log": bentoml(
            "blend_no_query_log", SERVICE_TARGET, SERVICE_NAME, snapshots["default"]
        ),
        "blend_abstaining": bentoml(
            "blend_abstaining", SERVICE_TARGET, SERVICE_NAME, snapshots["default"]
        ),
        "blend_plain_river": bentoml(
            "blend_plain_river", SERVICE_TARGET, SERVICE_NAME, snapshots["plain_river"]
        ),
        "batch_only": bentoml("batch_only", SERVICE_TARGET, SERVICE_NAME, workdir / "none"),
        "noop": bentoml("noop", "bench.serve_noop:Noop", "Noop", workdir / "none"),
        "fastapi": fastapi("fastapi", "bench.serve_fastapi:app"),
        "fastapi_coalesced": fastapi("fastapi_coalesced", "bench.serve_fastapi:coalesced_app"),
    }


def cpu_seconds(server: ChildProcess) -> float:
    """CPU time used so far by the server's processes (arbiter and workers)."""
    total = 0.0
    for process in server.processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def load(server: ChildProcess, bodies_path: Path, concurrency: int, duration_s: float) -> dict:
    """One measurement, by the load generator in its own process, with the server's CPU time
    per request: other work on the machine steals throughput, much less CPU per request."""
    command = [sys.executable, str(BENCH_DIR / "serve_load.py"), "--port", str(server.port)]
    command += ["--bodies", str(bodies_path), "--concurrency", str(concurrency), "--warmup", "0"]
    subprocess.run([*command, "--duration", "2"], check=True, capture_output=True)  # warm-up
    before = cpu_seconds(server)
    done = subprocess.run(
        [*command, "--duration", str(duration_s)], check=True, capture_output=True, text=True
    )
    result = json.loads(done.stdout)
    used = cpu_seconds(server) - before
    result["server_cpu_ms"] = 1000 * used / max(1, result["requests"])
    return result


def summarise(runs: dict[str, list[dict]], config: dict) -> dict:
    def median(name: str, key: str) -> float:
        return round(statistics.median(run[key] for run in runs[name]), 2)

    def ratios(key: str, versus: str, of: str = "blend") -> list[float]:
        """`of`'s `key` over `versus`'s, repetition by repetition."""
        pairs = zip(runs[of], runs[versus], strict=True)
        return [round(blend[key] / other[key], 3) for blend, other in pairs]

    figures: dict = {}
    for name in TARGETS:
        figures[f"{name}_rps"] = median(name, "rps")
        if name == "blend":
            figures["blend_p50_ms"] = median(name, "p50_ms")
        figures[f"{name}_p99_ms"] = median(name, "p99_ms")
    figures["ratio_vs_noop"] = round(figures["blend_rps"] / figures["noop_rps"], 3)
    figures["p99_ratio_vs_noop"] = round(figures["blend_p99_ms"] / figures["noop_p99_ms"], 3)
    figures["query_log_rps_ratio"] = round(
        figures["blend_rps"] / figures["blend_no_query_log_rps"], 3
    )
    figures["query_log_p99_ratio"] = round(
        figures["blend_p99_ms"] / figures["blend_no_query_log_p99_ms"], 3
    )
    figures["goal_met_query_log"] = (
        figures["query_log_rps_ratio"] >= QUERY_LOG_RPS_GOAL
        and figures["query_log_p99_ratio"] <= QUERY_LOG_P99_GOAL
    )
    figures["abstention_rps_ratio"] = round(
        figures["blend_abstaining_rps"] / figures["blend_no_query_log_rps"], 3
    )
    figures["goal_met_abstention"] = figures["abstention_rps_ratio"] >= ABSTENTION_RPS_GOAL
    per_run = {
        "ratio_vs_noop": ratios("rps", "noop"),
        "p99_ratio_vs_noop": ratios("p99_ms", "noop"),
        "query_log_rps_ratio": ratios("rps", "blend_no_query_log"),
        "query_log_p99_ratio": ratios("p99_ms", "blend_no_query_log"),
        "abstention_rps_ratio": ratios("rps", "blend_no_query_log", of="blend_abstaining"),
    }
    for key, values in per_run.items():
        figures[f"{key}_min"], figures[f"{key}_max"] = min(values), max(values)
    figures["goal_met_rps_vs_noop"] = figures["blend_rps"] >= RPS_GOAL * figures["noop_rps"]
    figures["goal_met_p99_vs_noop"] = figures["blend_p99_ms"] <= P99_GOAL * figures["noop_p99_ms"]
    figures["ratio_vs_fastapi"] = round(figures["blend_rps"] / figures["fastapi_rps"], 3)
    figures["ratio_vs_fastapi_coalesced"] = round(
        figures["blend_rps"] / figures["fastapi_coalesced_rps"], 3
    )
    figures["blend_overhead"] = round(1 - figures["blend_rps"] / figures["batch_only_rps"], 3)
    figures["plain_river_vs_default_rps"] = round(
        figures["blend_plain_river_rps"] / figures["blend_rps"], 3
    )
    figures["plain_river_vs_default_p99"] = round(
        figures["blend_plain_river_p99_ms"] / figures["blend_p99_ms"], 3
    )
    for name in TARGETS:
        figures[f"{name}_server_cpu_ms"] = median(name, "server_cpu_ms")
    figures["cpu_ratio_vs_noop"] = round(
        figures["noop_server_cpu_ms"] / figures["blend_server_cpu_ms"], 3
    )
    figures["cpu_blend_overhead"] = round(
        1 - figures["batch_only_server_cpu_ms"] / figures["blend_server_cpu_ms"], 3
    )
    for name in TARGETS:  # the load generator's own CPU: it should be far from one core
        figures[f"{name}_load_cpu_ms"] = round(
            statistics.median(run["load_cpu_ms_per_request"] for run in runs[name]), 3
        )
        figures[f"{name}_load_cpu_share"] = round(
            statistics.median(run["load_cpu_share"] for run in runs[name]), 3
        )
    figures["errors"] = sum(run["errors"] for name in runs for run in runs[name])
    figures["goals"] = {
        "rps_vs_noop_at_least": RPS_GOAL,
        "p99_vs_noop_at_most": P99_GOAL,
        "query_log_rps_ratio_at_least": QUERY_LOG_RPS_GOAL,
        "query_log_p99_ratio_at_most": QUERY_LOG_P99_GOAL,
        "abstention_rps_ratio_at_least": ABSTENTION_RPS_GOAL,
    }
    return {**figures, "per_run_ratios": per_run, "config": config, "runs": runs}


def main(settings: Settings, argv: Sequence[str] = ()) -> dict:
    """Run the benchmark with `settings` (where Kafka is, for the query log); `argv` are the
    command-line options (none: the defaults)."""
    parser = argparse.ArgumentParser(description="Serving benchmark (see the module docstring).")
    parser.add_argument("--workers", type=int, default=1, help="BentoML workers per service")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = {key: value for key, value in vars(args).items() if key != "output"}

    with (
        tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch,
        KafkaLauncher.of(settings).running(),  # stops only a broker it started
    ):
        workdir = Path(scratch)
        query_log = settings.kafka.on_topic(f"bench-serve-{time.time_ns()}")
        ensure_stream_topics(query_log, settings.kafka.partitions)
        champion_path, snapshots, bodies = make_models(workdir, scoped=True)
        bodies_path = workdir / "bodies.json"
        bodies_path.write_text(json.dumps(bodies))
        servers = make_servers(
            workdir, champion_path, snapshots, args.workers, args.metrics, query_log
        )
        runs: dict[str, list[dict]] = {name: [] for name in TARGETS}
        try:
            for server in servers.values():
                server.start()
            for server in servers.values():
                server.wait_ready()
            for repeat in range(args.repeats):
                for name in TARGETS:
                    run = load(servers[name], bodies_path, args.concurrency, args.duration)
                    runs[name].append(run)
                    print(f"[{repeat + 1}/{args.repeats}] {name}: {json.dumps(run)}", flush=True)
        finally:
            for server in servers.values():
                server.stop()

    report = summarise(runs, config)
    if args.output.resolve() == RESULTS:
        return save_figures("serve", report, config)
    # `save_figures` writes only under bench/results/: the same stamped file, elsewhere.
    stamped = {**report, "provenance": provenance(config)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(stamped, indent=2) + "\n")
    for key, value in report.items():
        if not isinstance(value, dict | list):
            print(f"{key:40} {value}")
    return stamped
