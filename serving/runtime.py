"""The serving process's edge: its settings, read once from the environment, and the set-up a
BentoML worker does before it takes requests.

BentoML imports `serving.service` in each worker process with no CLI above it, so this module is
where that process reads `SERVING_*`, `MLFLOW_*` and `KAFKA_*`; everything below is handed the
settings.
It also holds what the process needs around the service: the log configuration, the garbage
collector's tuning, the MLflow client, the champion store and the model reloader.
"""

import functools
import gc
import importlib.metadata
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import attrs
import bentoml
from mlflow import MlflowClient
from pydantic import ValidationError
from starlette.types import ASGIApp

from common.job_metrics import Heartbeat
from common.logs import format_as_json
from common.settings import (
    KafkaSettings,
    LogSettings,
    MetricsSettings,
    MlflowSettings,
    ServingSettings,
    StorageSettings,
)
from models.champion_watch import ChampionStore, RegistryChampions
from models.snapshot import SnapshotStore
from serving.metrics import process_metrics
from serving.middleware import BoundedRequests, JsonBodiesOnly
from serving.model_state import FileChampion, LoadedModels, ModelReloader
from serving.schemas import FeedbackRequest, PredictBatchRequest, PredictRequest

log = logging.getLogger(__name__)

S = TypeVar("S", bound=bentoml.Service)

# The request bodies BentoML validates; it names each one's validation errors after the model
# it wraps the body's type in (`PredictRequestIODescriptor`, and so on).
REQUEST_BODIES = (PredictRequest, PredictBatchRequest, FeedbackRequest)


@dataclass(frozen=True)
class ServingEnvironment:
    """The settings of a serving process: the service's own, where MLflow, the store and Kafka
    are.

    Parameters
    ----------
    serving
        `SERVING_*`: model sources, reload interval, request limits, the query log.
    mlflow
        `MLFLOW_*`: the tracking server and the registered model.
    storage
        `STORAGE_*`: the object store of an `s3://` snapshot location.
    log
        `LOG_*`: BentoML's lines, or one JSON object per line.
    metrics
        `METRICS_*`: the stall bound of the model reloader's round, for `/livez`.
    kafka
        `KAFKA_*`: where the query log sends answered queries and labels.
    """

    serving: ServingSettings
    mlflow: MlflowSettings
    storage: StorageSettings
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)


@functools.cache
def process_settings() -> ServingEnvironment:
    """This process's settings; the first call reads the environment, later ones reuse it.

    A test that changes the environment between services calls `process_settings.cache_clear()`.
    """
    return ServingEnvironment(
        serving=ServingSettings(),
        mlflow=MlflowSettings(),
        storage=StorageSettings(),
        log=LogSettings(),
        metrics=MetricsSettings(),
        kafka=KafkaSettings(),
    )


SERVICE_DESCRIPTION = """Intent classification for voice-assistant queries: the batch champion from
the MLflow registry blended with the speed layer's online model, both hot-reloaded.

`POST /predict` takes `{"text": ...}` and optionally `query_id`, `user_id` and `locale`;
`POST /predict_batch` takes `{"texts": [...]}` (at most `SERVING_MAX_BATCH`), each a text or such
an object. Every answer names its `query_id` (the one sent, or a new one), the intent, its
confidence, the top intents, the blend weights, which source answered (blend, batch or speed)
and the model versions behind it; every answered query is logged to Kafka. `POST /feedback`
takes a label, `{"query_id": ..., "intent": ...}`, or several as `{"items": [...]}`, and
answers 202 once they are journaled for the feedback topic.
`/readyz` is 503 until a model can answer. Errors: 400 invalid input (naming the field), 408 a
body too slow, 413 too large, 415 not JSON, 431 headers too large, 503 no model loaded (or, for
`/feedback`, the query log off or its journal failing)."""


class DescribedService(bentoml.Service):
    """A BentoML service whose OpenAPI page shows its own description and the project's version,
    whether it runs from a bento or from the source tree (BentoML shows a placeholder text and
    version "None" outside a bento)."""

    @property
    def doc(self) -> str:
        return self.description or super().doc

    @property
    def openapi_spec(self):  # type: ignore[override]
        spec = super().openapi_spec
        return attrs.evolve(spec, info=attrs.evolve(spec.info, version=_project_version()))


def _project_version() -> str:
    try:
        return importlib.metadata.version("lambda-ml")
    except importlib.metadata.PackageNotFoundError:  # a bento's copy of the source
        return "unknown"


def guard_requests(service: S) -> S:
    """Put the request guards of `serving.middleware` in front of `service`, outermost first,
    so that a body of the wrong type is refused before it is read.

    BentoML takes ASGI middleware only on the service object (`add_asgi_middleware`, before it
    builds the app), so this decorates the service where it is defined.
    """
    service.add_asgi_middleware(JsonBodiesOnly)
    service.add_asgi_middleware(_ProcessRequestLimits)
    return service


class _ProcessRequestLimits(BoundedRequests):
    """`BoundedRequests` with this process's limits, read when a worker builds its app, so that
    importing the service reads no settings."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, process_settings().serving)


def start_worker(probe: Callable[[LoadedModels], object], heartbeat: Heartbeat) -> ModelReloader:
    """Everything a worker does before it takes requests; the reloader keeps its models, and
    beats `heartbeat` at the end of every round.

    The models are loaded once before the worker answers: workers share one socket, so a worker
    still loading would answer 503 while `/readyz`, served by another worker, says ready. A
    failed first load leaves the poller to retry, and requests meanwhile get a clear 503.
    """
    configure_logging()
    settings = process_settings()
    metrics = process_metrics()

    def polled(models: LoadedModels) -> None:
        metrics.publish(models)
        heartbeat.beat(doing="the model reloader")

    reloader = ModelReloader(
        champion_store(settings.serving, settings.mlflow),
        SnapshotStore(settings.serving.snapshot_dir, storage=settings.storage),
        probe=probe,
        on_poll=polled,
        on_failure=metrics.reload_failed,
    )
    tune_gc()
    try:
        reloader.refresh()
    except Exception:
        log.exception("first model load failed")
    reloader.start(settings.serving.poll_s)
    return reloader


def champion_store(serving: ServingSettings, mlflow: MlflowSettings) -> ChampionStore:
    """A local file when `SERVING_CHAMPION_PATH` is set, else the MLflow registry's alias."""
    if serving.champion_path is not None:
        return FileChampion(serving.champion_path)
    return RegistryChampions(mlflow_client(mlflow), mlflow.registered_model)


def mlflow_client(settings: MlflowSettings) -> MlflowClient:
    """A client for the tracking server and the registry at `settings.uri`, failing fast.

    MLflow's client retries a failed request for minutes by default; the reloader asks again at
    its next round anyway, so unless the environment says otherwise a request is not retried
    and times out after ten seconds.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return MlflowClient(tracking_uri=settings.uri, registry_uri=settings.uri)


def configure_logging() -> None:
    """BentoML's server log shows warnings only, but which models came in, and when Kafka takes
    the query log again, is worth seeing; a client's invalid body is the client's fault, not a
    traceback in the server's log; and kafka-python logs every failed connection as an error,
    while the query log reports an outage itself, once (answers go on). With `LOG_FORMAT=json`
    the worker's lines are JSON objects, as the jobs' are."""
    for name in ("serving", "models.champion_watch", "streams.outbox"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("bentoml._internal.server.http_app").addFilter(_not_a_client_error)
    if process_settings().log.format == "json":
        format_as_json(("", "bentoml"), "serve", drop=_BENTOML_LAYOUT_FIELDS)


# What BentoML's log filter adds to a record only to lay out its own lines.
_BENTOML_LAYOUT_FIELDS = ("levelname_bracketed", "trace_msg")


def tune_gc() -> None:
    """Keep the garbage collector off the request path.

    A worker holds hundreds of thousands of long-lived objects from its imports, and every full
    collection walked them all, which set the p99 of the service. Freezing them puts them out
    of the collector's reach, and a higher first threshold makes collections rarer while each
    request allocates hundreds of short-lived containers (`lambda-ml bench serve` measures the
    p99 it buys).
    """
    gc.freeze()
    gc.set_threshold(10_000)


_REQUEST_BODY_TITLES = frozenset(f"{body.__name__}IODescriptor" for body in REQUEST_BODIES)


def _not_a_client_error(record: logging.LogRecord) -> bool:
    """False for the log record of a request body that failed validation.

    BentoML logs every request that fails validation as an ERROR with a traceback; that is the
    client's mistake, already answered with a 400 naming the field and counted in the request
    metrics, and under a fuzzer or a broken client it would bury the real errors. BentoML also
    answers 400 to a validation error raised by the service's own code (a `Prediction` it
    failed to build): that one is a server bug and stays in the log.
    """
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, ValidationError) and exc.title in _REQUEST_BODY_TITLES)
