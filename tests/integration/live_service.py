"""A live serving stack for tests: champions registered in MLflow, speed snapshots on disk,
the real BentoML server, and a client that keeps it busy."""

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as installed_version
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from river import feature_extraction, naive_bayes
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from common.processes import ChildProcess, free_port
from models.blend import Blender
from models.registry import CHAMPION, CUTOFF_TAG, encode_offsets, fluent_mlflow
from models.snapshot import SnapshotStore, SpeedSnapshot
from pipelines.services.bento_server import SERVICE_NAME, bentoml_overrides, bentoml_server
from streams.dataset import CLINC150_DATA, Example, load_dataset

ROOT = Path(__file__).resolve().parents[2]
INTENTS = ("alarm", "weather", "timer", "translate")
SWITCH_BOUND_S = 60.0
# Given, as the batch layer gives them: MLflow would otherwise infer them by loading the model
# in a subprocess, seconds per logged version.
PIP_REQUIREMENTS = [f"{p}=={installed_version(p)}" for p in ("scikit-learn", "numpy", "scipy")]
# One worker's model gauge on /metrics (multiprocess mode "liveall": labelled by pid).
_GAUGE = re.compile(r'^(lambda_ml_[a-z_]+)\{pid="(\d+)"\} (\S+)$')


def training_rows() -> list[Example]:
    """CLINC150 training examples of four intents: enough for a model in a second."""
    return [
        e
        for e in load_dataset(CLINC150_DATA).examples
        if e.split == "train" and e.intent in INTENTS
    ]


def serving_process(
    tracking_uri: str,
    registered_model: str,
    snapshots: Path,
    log_dir: Path,
    workers: int = 2,
    poll_s: float = 0.5,
    **env: str,
) -> ChildProcess:
    """`bentoml serve` of the project's service on a free port, polling often for new models.

    The server gets a BentoML home of its own in `log_dir`: BentoML keeps its Prometheus
    multiprocess files in `$BENTOML_HOME/prometheus_multiproc_dir` and empties that folder when
    a server starts, so servers sharing the default home (tests running side by side) would
    wipe and mix each other's `/metrics`. Its query log's journal is in `log_dir` too, so that
    what a test's server could not send never reaches another server's Kafka.
    """
    return bentoml_server(
        "server",
        free_port(),
        {
            "BENTOML_HOME": str(log_dir / "bentoml"),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_REGISTERED_MODEL": registered_model,
            "SERVING_SNAPSHOT_DIR": str(snapshots),
            "SERVING_POLL_S": str(poll_s),
            "SERVING_QUERY_LOG_JOURNAL_DIR": str(log_dir / "query-log"),
            "BENTOML_CONFIG_OVERRIDES": bentoml_overrides(SERVICE_NAME, workers=workers),
            **env,
        },
        cwd=ROOT,
        log_path=log_dir / "server.log",
    )


def fit_batch(rows):
    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)).fit(
        [e.text for e in rows], [e.intent for e in rows]
    )


def register(
    tracking_uri: str, name: str, model, cutoff: dict[int, int], promote: bool = True
) -> str:
    """Log and register `model`, tag its cut-off, then (`promote`) move the `champion` alias
    to it."""
    with fluent_mlflow(tracking_uri), mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=name, pip_requirements=PIP_REQUIREMENTS
        )
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_model_version_tag(name, version, CUTOFF_TAG, encode_offsets(cutoff))
    if promote:
        promote_version(tracking_uri, name, version)
    return version


def promote_version(tracking_uri: str, name: str, version: str) -> None:
    """Move the `champion` alias to `version`."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(name, CHAMPION, version)


def write_snapshot(directory: Path, rows, offsets: dict[int, int]) -> None:
    model = feature_extraction.BagOfWords(on="text") | naive_bayes.MultinomialNB()
    for example in rows:
        model.learn_one({"text": example.text}, example.intent)
    SnapshotStore(directory).save(
        SpeedSnapshot(model=model, blender=Blender(), offsets=offsets, events_learnt=len(rows))
    )


def wait_until(condition, timeout_s: float = SWITCH_BOUND_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout_s:g}s")
        time.sleep(0.2)


def worker_gauges(url: str) -> dict[str, dict[str, float]]:
    """Each live worker's model gauges from `/metrics`: {pid: {gauge name: value}}."""
    workers: dict[str, dict[str, float]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10.0).text.splitlines():
        found = _GAUGE.match(line)
        if found:
            name, pid, value = found.groups()
            workers.setdefault(pid, {})[name] = float(value)
    return workers


class Traffic(threading.Thread):
    """Sends `/predict` requests back to back and keeps what each answer said.

    `timings` holds (monotonic start, seconds taken) of every request, failed ones included.
    """

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[str, dict]] = []
        self.failures: list[str] = []
        self.timings: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        texts = ["wake me at 7", "is it going to snow", "set a timer", "say hi in french"]
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            i = 0
            while not self.halt.is_set():
                started = time.monotonic()
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
                self.timings.append((started, time.monotonic() - started))
                i += 1

    def latest(self, count: int) -> list[dict]:
        """The models of the last `count` answers (fewer while there are not so many)."""
        return [models for _, models in self.answers[-count:]]


@contextmanager
def running_traffic(url: str, clients: int = 1) -> Iterator[list[Traffic]]:
    """`clients` `Traffic` threads sending to `url` for the length of the block, then stopped
    and joined (they keep what they saw for the checks after it)."""
    traffic = [Traffic(url) for _ in range(clients)]
    for client in traffic:
        client.start()
    try:
        yield traffic
    finally:
        for client in traffic:
            client.halt.set()
        for client in traffic:
            client.join(15)
