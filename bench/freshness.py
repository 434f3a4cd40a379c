"""End-to-end freshness: from producing events of a brand-new intent to the service answering it.

Runs the real pipeline pieces as processes (the speed layer and the BentoML server, on the
local or configured Kafka), produces a burst of labelled queries for an intent nobody has seen,
then asks the service a query of that intent every 50 ms until the answer is the new intent.
The time from the end of the burst to that answer covers consuming, learning, the snapshot
(every second here) and the service's reload poll (every second here). Median of `repeats`
bursts, each with its own new intent.

Then the loop as deployed: `FEEDBACK_REPEATS` times, queries of another never-seen intent are
asked of the service (which logs them to the queries topic), their labels are sent to its
`/feedback` (which journals them for the feedback topic), and the service is asked a query of
that intent every 50 ms until it answers it: the speed layer joins each label to its query,
learns it, snapshots, and the service reloads. The time from the 202 of `/feedback` to that
answer is `feedback_to_served_*` (median and p95). Writes `bench/results/freshness.json`. A local
broker that the benchmark had to start is stopped when it ends; one already running is left
running.

    lambda-ml bench freshness [--repeats 3]
"""

import io
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console

from bench import save_figures
from common.processes import ProcessGroup, free_port, http_ready
from common.settings import KafkaSettings, Settings
from pipelines.demo import lambda_ml
from pipelines.produce import ReplayOptions, run_produce
from pipelines.services.broker import KafkaLauncher, ensure_stream_topics

# Rounds of feedback timed, for its p95; and the goal for that p95.
FEEDBACK_REPEATS = 20
FEEDBACK_GOAL_P95_S = 2.0
WORDS = ["zorbl", "quixa", "vamble", "prindo", "tuskel", "morvan", "glimsy", "fendro"]


def new_intent_file(folder: Path, name: str, word: str, count: int = 40) -> Path:
    """A dataset of one never-seen intent whose queries share a word no other intent uses."""
    path = folder / f"{name}.jsonl"
    fillers = ["please", "can you", "i want to", "help me", "now", "today", "for me", "quickly"]
    lines = [
        json.dumps({"text": f"{fillers[i % 8]} {word} the {fillers[(i * 3) % 8]}", "intent": name})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(settings: Settings, repeats: int = 3) -> dict:
    with KafkaLauncher.of(settings).running():  # stops only a broker it started
        seconds, feedback = _measure(settings.kafka, repeats)
    return save_figures(
        "freshness",
        {
            "end_to_end_freshness_s": round(statistics.median(seconds), 2),
            "runs_s": [round(s, 2) for s in seconds],
            "feedback_to_served_median_s": round(statistics.median(feedback), 2),
            "feedback_to_served_p95_s": round(float(np.percentile(feedback, 95)), 2),
            "feedback_runs_s": [round(s, 2) for s in feedback],
            "feedback_goal_p95_s": FEEDBACK_GOAL_P95_S,
            "snapshot_every_s": 1,
            "serving_poll_s": 1,
        },
    )


def _served_within(client: httpx.Client, url: str, text: str, intent: str, since: float) -> float:
    """Ask `text` every 50 ms until the answer is `intent`; the seconds from `since`."""
    while time.monotonic() - since < 60:
        body = client.post(f"{url}/predict", json={"text": text}).json()
        if body.get("intent") == intent:
            return time.monotonic() - since
        time.sleep(0.05)
    raise RuntimeError(f"{intent} was not served within 60 s")


def _feedback_round(client: httpx.Client, url: str, home: Path, repeat: int) -> float:
    """One round of the loop as deployed: queries of a new intent asked of the service, their
    labels sent to `/feedback`; the seconds from its 202 to an answer of the new intent."""
    name, word = f"fed_back_intent_{repeat}", _unseen_word(repeat)
    texts = [json.loads(line)["text"] for line in new_intent_file(home, name, word).open()]
    ids = [f"feedback-{repeat}-{i}" for i in range(len(texts))]
    for query_id, text in zip(ids, texts, strict=True):
        client.post(f"{url}/predict", json={"text": text, "query_id": query_id}).raise_for_status()
    labels = [{"query_id": query_id, "intent": name} for query_id in ids]
    response = client.post(f"{url}/feedback", json={"items": labels})
    if response.status_code != 202:
        raise RuntimeError(f"/feedback answered {response.status_code}: {response.text}")
    return _served_within(client, url, f"{word} it", name, time.monotonic())


def _unseen_word(repeat: int) -> str:
    """A word no dataset text uses, one per round."""
    letters = random.Random(f"freshness/{repeat}")
    return "".join(letters.choice("bcdfghjklmnpqrstvwxz") for _ in range(7))


def _measure(kafka: KafkaSettings, repeats: int) -> tuple[list[float], list[float]]:
    """The seconds from the end of each burst to the service answering its new intent, and
    from each round's feedback to the service answering its new intent."""
    topic = f"bench-fresh-e2e-{time.time_ns()}"
    stream = kafka.on_topic(topic)
    ensure_stream_topics(stream, 2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "KAFKA_TOPIC": topic,
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # no registry: speed-only answers
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "SPEED_SNAPSHOT_DIR": str(home / "snapshots"),
            "SPEED_SIGNAL_DIR": str(home / "signals"),
            "SPEED_SNAPSHOT_EVERY_S": "1",
            "SERVING_SNAPSHOT_DIR": str(home / "snapshots"),
            "SERVING_POLL_S": "1",
            "SERVING_PORT": str(port),
            "SERVING_QUERY_LOG_JOURNAL_DIR": str(home / "journal"),
        }
        run_produce(
            stream, ReplayOptions(limit=3000, run_id="warm-up"), Console(file=io.StringIO())
        )
        with ProcessGroup(home / "logs", env=env) as jobs, httpx.Client(timeout=5) as client:
            jobs.start("speed", lambda_ml("speed"))
            jobs.start("serve", lambda_ml("serve", "--workers", "1"))
            ready = http_ready(f"{url}/readyz")
            jobs.wait_until(ready, "the service to be ready", timeout_s=180, interval_s=0.5)
            for repeat in range(repeats):
                name, word = f"brand_new_intent_{repeat}", WORDS[repeat % len(WORDS)]
                data = new_intent_file(home, name, word)
                options = ReplayOptions(data=data, run_id=f"burst-{repeat}")
                run_produce(stream, options, Console(file=io.StringIO()))
                seconds.append(_served_within(client, url, f"{word} it", name, time.monotonic()))
            feedback = [
                _feedback_round(client, url, home, repeat) for repeat in range(FEEDBACK_REPEATS)
            ]
    return seconds, feedback
