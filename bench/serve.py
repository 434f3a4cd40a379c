"""Serving benchmark: the blend service against three references, on loopback, as ratios.

It trains its own models on CLINC150 `train` (no MLflow server needed): a batch champion from
the batch layer's factory (TF-IDF word 1-2 + char_wb 2-4 grams, calibrated LinearSVC + naive
Bayes) saved for `SERVING_CHAMPION_PATH`, and a speed snapshot (the speed layer's model, and a
blender learnt on the validation split). Then it serves

- blend: `IntentClassifier` with both models,
- batch_only: the same service without a snapshot (what the blend costs),
- noop: a BentoML service with the same workers and config that answers a constant,
- fastapi: a plain FastAPI app on one uvicorn worker, serving the batch model alone,

all at once on free ports, and loads each in turn with single-query `/predict` requests at a
fixed concurrency from a separate process (`serve_load.py`), interleaving the repetitions so
that drift on the machine hits every target alike. Medians go to `bench/results/serve.json`.

    .venv/bin/python bench/serve.py [--workers 1] [--duration 10] [--repeats 3]
"""

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from models.batch_model import build_batch_model
from models.blend import HedgeBlender
from models.registry import ChampionInfo, ChampionModel
from models.snapshot import LocalSnapshotStore, SpeedSnapshot
from models.speed_model import build_speed_model
from serving.model_state import save_champion_file
from serving.process import (
    SERVICE_NAME,
    SERVICE_TARGET,
    ServerProcess,
    bentoml_argv,
    bentoml_overrides,
    free_port,
)
from streams.dataset import CLINC150_DATA, load_dataset

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "serve.json"
TARGETS = ("noop", "fastapi", "batch_only", "blend")


def make_models(workdir: Path) -> tuple[Path, Path, list[dict]]:
    """Train and save both models; return the champion file, snapshot folder, request bodies."""
    examples = [e for e in load_dataset(CLINC150_DATA).examples if e.intent != "oos"]
    split = {name: [e for e in examples if e.split == name] for name in ("train", "val", "test")}
    train_texts = [e.text for e in split["train"]]
    started = time.perf_counter()
    estimator = build_batch_model().fit(train_texts, [e.intent for e in split["train"]])
    print(f"batch model trained in {time.perf_counter() - started:.1f}s", flush=True)
    champion_path = workdir / "champion.pkl"
    save_champion_file(champion_path, estimator, version="1", cutoff_offsets={0: len(train_texts)})

    speed = build_speed_model()
    for example in split["train"]:
        speed.learn_one({"text": example.text}, example.intent)
    champion = ChampionModel(ChampionInfo("bench", "1", "", {}), estimator)
    blender = HedgeBlender()
    val_texts = [e.text for e in split["val"]]
    for example, batch in zip(split["val"], champion.predict_proba_many(val_texts), strict=True):
        blender.learn(batch, speed.predict_proba_one({"text": example.text}), example.intent)
    snapshot_dir = workdir / "snapshots"
    LocalSnapshotStore(snapshot_dir).save(
        SpeedSnapshot(
            model=speed,
            blender=blender,
            offsets={0: len(train_texts)},
            events_learnt=len(train_texts),
        )
    )
    return champion_path, snapshot_dir, [{"text": e.text} for e in split["test"]]


def make_servers(
    workdir: Path, champion_path: Path, snapshot_dir: Path, workers: int, metrics: bool
) -> dict[str, ServerProcess]:
    def bentoml(name: str, target: str, service_name: str, snapshots: Path) -> ServerProcess:
        env = {
            "SERVING_CHAMPION_PATH": str(champion_path),
            "SERVING_SNAPSHOT_DIR": str(snapshots),
            "BENTOML_CONFIG_OVERRIDES": bentoml_overrides(service_name, workers, metrics=metrics),
        }
        port = free_port()
        return ServerProcess(
            bentoml_argv(target, port), port, env, ROOT, workdir / "logs" / f"{name}.log"
        )

    fastapi_port = free_port()
    return {
        "blend": bentoml("blend", SERVICE_TARGET, SERVICE_NAME, snapshot_dir),
        "batch_only": bentoml("batch_only", SERVICE_TARGET, SERVICE_NAME, workdir / "none"),
        "noop": bentoml("noop", "bench.serve_noop:Noop", "Noop", workdir / "none"),
        "fastapi": ServerProcess(
            [sys.executable, "-m", "uvicorn", "bench.serve_fastapi:app", "--no-access-log"]
            + ["--host", "127.0.0.1", "--port", str(fastapi_port), "--workers", "1"],
            fastapi_port,
            {"SERVING_CHAMPION_PATH": str(champion_path)},
            ROOT,
            workdir / "logs" / "fastapi.log",
        ),
    }


def cpu_seconds(server: ServerProcess) -> float:
    """CPU time used so far by the server's processes (arbiter and workers)."""
    total = 0.0
    for process in server.processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def load(server: ServerProcess, bodies_path: Path, concurrency: int, duration_s: float) -> dict:
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

    figures = {
        "blend_rps": median("blend", "rps"),
        "blend_p50_ms": median("blend", "p50_ms"),
        "blend_p99_ms": median("blend", "p99_ms"),
        "batch_only_rps": median("batch_only", "rps"),
        "batch_only_p99_ms": median("batch_only", "p99_ms"),
        "noop_rps": median("noop", "rps"),
        "noop_p99_ms": median("noop", "p99_ms"),
        "fastapi_rps": median("fastapi", "rps"),
        "fastapi_p99_ms": median("fastapi", "p99_ms"),
    }
    figures["ratio_vs_noop"] = round(figures["blend_rps"] / figures["noop_rps"], 3)
    figures["p99_ratio_vs_noop"] = round(figures["blend_p99_ms"] / figures["noop_p99_ms"], 3)
    figures["ratio_vs_fastapi"] = round(figures["blend_rps"] / figures["fastapi_rps"], 3)
    figures["blend_overhead"] = round(1 - figures["blend_rps"] / figures["batch_only_rps"], 3)
    for name in TARGETS:
        figures[f"{name}_server_cpu_ms"] = median(name, "server_cpu_ms")
    figures["cpu_ratio_vs_noop"] = round(
        figures["noop_server_cpu_ms"] / figures["blend_server_cpu_ms"], 3
    )
    figures["cpu_blend_overhead"] = round(
        1 - figures["batch_only_server_cpu_ms"] / figures["blend_server_cpu_ms"], 3
    )
    figures["errors"] = sum(run["errors"] for name in runs for run in runs[name])
    return {**figures, "config": config, "runs": runs}


def main(argv: Sequence[str] = ()) -> dict:
    """Run the benchmark; `argv` are the command-line options (none: the defaults)."""
    parser = argparse.ArgumentParser(description="Serving benchmark (see the module docstring).")
    parser.add_argument("--workers", type=int, default=1, help="BentoML workers per service")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = {key: value for key, value in vars(args).items() if key != "output"}

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        workdir = Path(scratch)
        champion_path, snapshot_dir, bodies = make_models(workdir)
        bodies_path = workdir / "bodies.json"
        bodies_path.write_text(json.dumps(bodies))
        servers = make_servers(workdir, champion_path, snapshot_dir, args.workers, args.metrics)
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
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        if key not in ("runs", "config"):
            print(f"{key}: {value}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
