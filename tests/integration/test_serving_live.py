"""The real server (`bentoml serve`, two workers) against the real MLflow server.

While a client sends requests without pause, a new champion is promoted in the registry and
the speed layer writes a new snapshot: no request may fail, and the new versions must show up
in the answers (of both workers) within a bounded time.
"""

import threading
import time
import uuid
from pathlib import Path

import httpx
import mlflow
import psutil
import pytest
from mlflow import MlflowClient
from river import feature_extraction, naive_bayes
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from models.blend import HedgeBlender
from models.registry import CHAMPION, CUTOFF_TAG, encode_offsets, fluent_mlflow
from models.snapshot import LocalSnapshotStore, SpeedSnapshot
from serving.process import (
    SERVICE_NAME,
    SERVICE_TARGET,
    ServerProcess,
    bentoml_argv,
    bentoml_overrides,
    free_port,
)
from streams.dataset import CLINC150_DATA, load_dataset

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INTENTS = ("alarm", "weather", "timer", "translate")
SWITCH_BOUND_S = 60.0


@pytest.fixture(scope="module")
def train_rows():
    return [
        e
        for e in load_dataset(CLINC150_DATA).examples
        if e.split == "train" and e.intent in INTENTS
    ]


def fit_batch(rows):
    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)).fit(
        [e.text for e in rows], [e.intent for e in rows]
    )


def register(tracking_uri: str, name: str, model, cutoff: dict[int, int]) -> str:
    """Log and register `model`, tag its cut-off, then move the `champion` alias to it."""
    with fluent_mlflow(tracking_uri), mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name)
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_model_version_tag(name, version, CUTOFF_TAG, encode_offsets(cutoff))
    client.set_registered_model_alias(name, CHAMPION, version)
    return version


def write_snapshot(directory: Path, rows, offsets: dict[int, int]) -> None:
    model = feature_extraction.BagOfWords(on="text") | naive_bayes.MultinomialNB()
    for example in rows:
        model.learn_one({"text": example.text}, example.intent)
    LocalSnapshotStore(directory).save(
        SpeedSnapshot(model=model, blender=HedgeBlender(), offsets=offsets, events_learnt=len(rows))
    )


def wait_until(condition, timeout_s: float = SWITCH_BOUND_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout_s:g}s")
        time.sleep(0.2)


class Traffic(threading.Thread):
    """Sends `/predict` requests back to back and keeps what each answer said."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[str, dict]] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        texts = ["wake me at 7", "is it going to snow", "set a timer", "say hi in french"]
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            i = 0
            while not self.halt.is_set():
                try:
                    response = client.post("/predict", json={"text": texts[i % len(texts)]})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                else:
                    if response.status_code == 200:
                        body = response.json()
                        self.answers.append((body["source"], body["models"]))
                    else:
                        self.failures.append(f"{response.status_code} {response.text}")
                i += 1

    def latest(self, count: int) -> list[dict]:
        """The models of the last `count` answers (fewer while there are not so many)."""
        return [models for _, models in self.answers[-count:]]


def test_hot_swap_under_load_fails_no_request(mlflow_server: str, tmp_path: Path, train_rows):
    name = f"serving-live-{uuid.uuid4().hex[:8]}"
    half = len(train_rows) // 2
    first = register(mlflow_server, name, fit_batch(train_rows[:half]), {0: 100})
    snapshots = tmp_path / "snapshots"
    write_snapshot(snapshots, train_rows[:half], {0: 110})

    port = free_port()
    server = ServerProcess(
        bentoml_argv(SERVICE_TARGET, port),
        port,
        env={
            "MLFLOW_TRACKING_URI": mlflow_server,
            "MLFLOW_REGISTERED_MODEL": name,
            "SERVING_SNAPSHOT_DIR": str(snapshots),
            "SERVING_POLL_S": "0.5",
            "BENTOML_CONFIG_OVERRIDES": bentoml_overrides(SERVICE_NAME, workers=2),
        },
        cwd=ROOT,
        log_path=tmp_path / "server.log",
    )
    with server:
        server.wait_ready(timeout_s=180)
        traffic = Traffic(server.url)
        traffic.start()
        try:
            # Ready means some model answers; the champion's download may still be going on.
            wait_until(lambda: [m["batch_version"] for m in traffic.latest(20)] == [first] * 20)
            assert {source for source, _ in traffic.answers[-20:]} == {"blend"}

            second = register(mlflow_server, name, fit_batch(train_rows), {0: 200})
            write_snapshot(snapshots, train_rows, {0: 210})
            swapped_at = time.monotonic()
            expected = {
                "batch_version": second,
                "batch_cutoff_offsets": {"0": 200},
                "speed_snapshot_offsets": {"0": 210},
            }

            def all_new(models: dict) -> bool:
                return all(models[key] == value for key, value in expected.items())

            wait_until(lambda: all(all_new(m) for m in traffic.latest(40)))
            switch_s = time.monotonic() - swapped_at
        finally:
            traffic.halt.set()
            traffic.join(15)

        assert traffic.failures == []
        assert len(traffic.answers) > 100
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'lambda_ml_batch_model_version{pid="' in metrics
        assert any(
            line.startswith("lambda_ml_batch_model_version") and line.endswith(f" {second}.0")
            for line in metrics.splitlines()
        )
        assert "bentoml_service_request_total" in metrics
        print(f"new champion and snapshot in every answer {switch_s:.1f}s after the swap")
        started = server.processes()
        assert len(started) >= 3  # the arbiter and two workers
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
