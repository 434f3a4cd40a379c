"""The BentoML service: `/predict` and `/predict_batch` over the blended batch and speed models.

Run it with `bentoml serve serving.service:IntentClassifier` (or `lambda-ml serve`). Settings
come from `SERVING_*` (and `MLFLOW_*` for the registry) when a worker starts; the BentoML
defaults below (workers, access log off) can be overridden with `BENTOML_CONFIG_OVERRIDES`.
Concurrent requests of a worker are scored together (`serving.batching`); bodies are JSON only.
Besides the prediction endpoints, BentoML provides `/livez` and `/healthz` (200 while the
process runs), `/readyz` (503 until a model can answer), `/metrics` and the OpenAPI spec
(`/docs.json`). Invalid input is a 400 naming the field (BentoML's validation status), too many
texts a 413, a body that is not JSON a 415, and no usable model a 503 that says so; before
BentoML parses anything, a body over `SERVING_MAX_BODY_BYTES` is a 413, a body not all sent
within `SERVING_BODY_TIMEOUT_S` of the request's headers a 408 and headers over
`SERVING_MAX_HEADER_BYTES` a 431.
"""

import functools
import gc
import logging
import math
from http import HTTPStatus
from typing import cast

import bentoml
from pydantic import ValidationError
from starlette.responses import JSONResponse

from common.settings import REQUEST_TIMEOUT_S, MlflowSettings, ServingSettings
from models.snapshot import LocalSnapshotStore
from pipelines.tracking import tracking_client
from serving.batching import Coalescer
from serving.metrics import process_gauges
from serving.middleware import BoundedRequests, JsonBodiesOnly
from serving.model_state import (
    ChampionSource,
    FileChampion,
    ModelSet,
    ModelState,
    RegistryChampion,
)
from serving.predict import NoModelError, predict_texts
from serving.schemas import (
    PredictBatchRequest,
    Prediction,
    Predictions,
    PredictRequest,
    error_body,
)

PROBE_TEXT = "set an alarm for seven tomorrow morning"


def champion_source(settings: ServingSettings) -> ChampionSource:
    """A local file when `SERVING_CHAMPION_PATH` is set, else the MLflow registry's alias."""
    if settings.champion_path is not None:
        return FileChampion(settings.champion_path)
    mlflow = MlflowSettings()
    return RegistryChampion(tracking_client(mlflow), mlflow.registered_model)


def configure_logging() -> None:
    """BentoML's server log shows warnings only, but which models came in is worth seeing; and
    a client's invalid body is the client's fault, not a traceback in the server's log."""
    logging.getLogger("serving").setLevel(logging.INFO)
    logging.getLogger("bentoml._internal.server.http_app").addFilter(_not_a_client_error)


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


@functools.cache
def _input_models() -> frozenset[str]:
    """The names of the models BentoML validates the endpoints' request bodies with (it wraps
    `PredictRequest` in a `PredictRequestIODescriptor`, and so on), which are the `title` of
    their validation errors; an error of a model the service builds itself is titled with that
    model's own name (`Prediction`)."""
    apis = cast(bentoml.Service, IntentClassifier).apis.values()
    return frozenset(api.input_spec.__name__ for api in apis)


def _not_a_client_error(record: logging.LogRecord) -> bool:
    """False for the log record of a request body that failed validation.

    BentoML logs every request that fails validation as an ERROR with a traceback; that is the
    client's mistake, already answered with a 400 naming the field and counted in the request
    metrics, and under a fuzzer or a broken client it would bury the real errors. BentoML also
    answers 400 to a validation error raised by the service's own code (a `Prediction` it
    failed to build): that one is a server bug and stays in the log.
    """
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, ValidationError) and exc.title in _input_models())


def _error(status: HTTPStatus, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, field), status_code=status)


@bentoml.service(
    workers=1, traffic={"timeout": REQUEST_TIMEOUT_S}, logging={"access": {"enabled": False}}
)
class IntentClassifier:
    """Intent classification: the batch champion blended with the speed layer's snapshot.

    One worker by default: on this project's two-core machine a second one served no more
    (BentoML's workers share one listening socket, and long-lived client connections pile up on
    one of them), while one worker leaves a core to the load's clients and the other jobs.
    """

    def __init__(self) -> None:
        configure_logging()
        self.settings = ServingSettings()
        self.state = ModelState(
            champion_source(self.settings),
            LocalSnapshotStore(self.settings.snapshot_dir),
            probe=self._probe,
            on_poll=process_gauges().publish,
        )
        self.coalescer = Coalescer(self._predict_many, self.settings.max_batch)
        tune_gc()
        # Load once before taking requests: workers share one socket, so a worker still
        # loading would answer 503 while /readyz, served by another worker, says ready.
        try:
            self.state.refresh()
        except Exception:  # the poller retries; an empty start is answered with a clear 503
            logging.getLogger(__name__).exception("first model load failed")
        self.state.start(self.settings.poll_s)

    def _predict_many(self, texts: list[str]) -> list[Prediction]:
        return predict_texts(
            self.state.current,
            texts,
            top_k=self.settings.top_k,
            max_snapshot_age_s=self.settings.max_snapshot_age_s,
        )

    @staticmethod
    def _probe(models: ModelSet) -> None:
        """A prediction with every model of the set, stale snapshot or not."""
        predict_texts(models, [PROBE_TEXT], top_k=1, max_snapshot_age_s=math.inf)

    @bentoml.on_shutdown
    def stop_reloading(self) -> None:
        self.state.stop()

    def __is_ready__(self) -> bool:
        """Ready once a model can answer: BentoML's `/readyz` answers 503 until then."""
        return self.state.current.can_answer(self.settings.max_snapshot_age_s)

    @bentoml.api(input_spec=PredictRequest, output_spec=Prediction)
    async def predict(self, text: str) -> Prediction | JSONResponse:
        """The intent of one query."""
        try:
            return (await self.coalescer([text]))[0]
        except NoModelError as exc:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))

    @bentoml.api(input_spec=PredictBatchRequest, output_spec=Predictions)
    async def predict_batch(self, texts: list[str]) -> Predictions | JSONResponse:
        """The intents of several queries, in order; at most `SERVING_MAX_BATCH` of them."""
        if len(texts) > self.settings.max_batch:
            return _error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(texts)} texts, over the limit of {self.settings.max_batch}",
                field="texts",
            )
        try:
            return Predictions(await self.coalescer(texts))
        except NoModelError as exc:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))


# Outermost first: a body of the wrong type is refused before it is read.
cast(bentoml.Service, IntentClassifier).add_asgi_middleware(JsonBodiesOnly)
cast(bentoml.Service, IntentClassifier).add_asgi_middleware(BoundedRequests)
