"""The BentoML service: `/predict` and `/predict_batch` over the blended batch and speed models.

Run it with `bentoml serve serving.service:IntentClassifier` (or `lambda-ml serve`). This module
holds the service and its endpoints; what the process sets up around them (settings from
`SERVING_*` and `MLFLOW_*`, read once, logging, model reloading) is `serving.runtime`'s. The
BentoML defaults below (workers, access log off) can be overridden with
`BENTOML_CONFIG_OVERRIDES`.
Concurrent requests of a worker are scored together (`serving.batching`); bodies are JSON only.
Besides the prediction endpoints, BentoML provides `/livez` and `/healthz` (503 once the model
reloader's round is overdue by `METRICS_STALL_S`: a worker whose models can no longer change),
`/readyz` (503 until a model can answer), `/metrics` (`serving.metrics` adds the service's own)
and the OpenAPI spec (`/docs.json`). Invalid input is a 400 naming the field (BentoML's
validation status), too many texts a 413, a body that is not JSON a 415, and no usable model a
503 that says so; before BentoML parses anything, a body over `SERVING_MAX_BODY_BYTES` is a
413, a body not all sent within `SERVING_BODY_TIMEOUT_S` of the request's headers a 408 and
headers over `SERVING_MAX_HEADER_BYTES` a 431.
"""

import logging
import math
from http import HTTPStatus

import bentoml
from starlette.responses import JSONResponse

from common.job_metrics import Heartbeat
from common.settings import REQUEST_TIMEOUT_S
from serving.batching import Coalescer
from serving.metrics import process_metrics
from serving.model_state import LoadedModels
from serving.predict import NoModelError, predict_texts
from serving.runtime import (
    SERVICE_DESCRIPTION,
    DescribedService,
    guard_requests,
    process_settings,
    start_worker,
)
from serving.schemas import (
    PredictBatchRequest,
    Prediction,
    Predictions,
    PredictRequest,
    error_body,
)

PROBE_TEXT = "set an alarm for seven tomorrow morning"

log = logging.getLogger(__name__)


def _error(status: HTTPStatus, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, field), status_code=status)


@guard_requests
@bentoml.service(
    service_class=DescribedService,
    description=SERVICE_DESCRIPTION,
    workers=1,
    traffic={"timeout": REQUEST_TIMEOUT_S},
    logging={"access": {"enabled": False}},
)
class IntentClassifier:
    """Intent classification: the batch champion blended with the speed layer's snapshot.

    One worker by default: on this project's two-core machine a second one served no more
    (BentoML's workers share one listening socket, and long-lived client connections pile up on
    one of them), while one worker leaves a core to the load's clients and the other jobs.
    """

    def __init__(self) -> None:
        self.settings = process_settings().serving
        self.heartbeat = Heartbeat(process_settings().metrics.stall_s)
        self.reloader = start_worker(probe=self._probe, heartbeat=self.heartbeat)
        self.metrics = process_metrics()
        self.coalescer = Coalescer(self._predict_many, self.settings.max_batch)

    def _predict_many(self, texts: list[str]) -> list[Prediction]:
        predictions = predict_texts(
            self.reloader.current,
            texts,
            top_k=self.settings.top_k,
            max_snapshot_age_s=self.settings.max_snapshot_age_s,
        )
        self.metrics.answered(predictions)
        return predictions

    @staticmethod
    def _probe(models: LoadedModels) -> None:
        """A prediction with every model of the set, stale snapshot or not."""
        predict_texts(models, [PROBE_TEXT], top_k=1, max_snapshot_age_s=math.inf)

    @bentoml.on_shutdown
    def stop_reloading(self) -> None:
        self.reloader.stop()

    def __is_alive__(self) -> bool:
        """Alive while the model reloader's rounds go on: BentoML's `/livez` answers 503 once
        one is overdue (the reason is in the worker's log)."""
        problem = self.heartbeat.stalled()
        if problem is not None:
            log.error("the service is stalled: %s", problem)
        return problem is None

    def __is_ready__(self) -> bool:
        """Ready once a model can answer: BentoML's `/readyz` answers 503 until then."""
        return self.reloader.current.can_answer(self.settings.max_snapshot_age_s)

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
