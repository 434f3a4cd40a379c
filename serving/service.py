"""The BentoML service: `/predict` and `/predict_batch` over the blended batch and speed models,
and `/feedback` for the labels that come later.

Run it with `bentoml serve serving.service:IntentClassifier` (or `lambda-ml serve`). This module
holds the service and its endpoints; what the process sets up around them (settings from
`SERVING_*` and `MLFLOW_*`, read once, logging, model reloading) is `serving.runtime`'s. The
BentoML defaults below (workers, access log off) can be overridden with
`BENTOML_CONFIG_OVERRIDES`.
Concurrent requests of a worker are scored together (`serving.batching`); bodies are JSON only.
Every answer carries its query's id, and every answered query is journaled for Kafka before
the answer goes out (`serving.query_log`), as are the labels `/feedback` takes (202 once
journaled).
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
from serving.query_log import new_query_id, open_query_log
from serving.runtime import (
    SERVICE_DESCRIPTION,
    DescribedService,
    guard_requests,
    process_settings,
    start_worker,
)
from serving.schemas import (
    FeedbackAccepted,
    FeedbackRequest,
    Label,
    PredictBatchRequest,
    Prediction,
    Predictions,
    PredictRequest,
    Query,
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
        environment = process_settings()
        self.settings = environment.serving
        self.heartbeat = Heartbeat(environment.metrics.stall_s)
        self.reloader = start_worker(probe=self._probe, heartbeat=self.heartbeat)
        self.metrics = process_metrics()
        self.coalescer = Coalescer(self._predict_many, self.settings.max_batch)
        self.query_log = open_query_log(environment, self.metrics)

    def _predict_many(self, queries: list[Query]) -> list[Prediction]:
        """The predictions of the queries of one coalesced call, each named by its query's id
        and logged (one journal write for the call) before they go out."""
        predictions = predict_texts(
            self.reloader.current,
            [q.text for q in queries],
            top_k=self.settings.top_k,
            max_snapshot_age_s=self.settings.max_snapshot_age_s,
            oos_label=self.settings.oos_label,
        )
        for query, prediction in zip(queries, predictions, strict=True):
            prediction.query_id = query.query_id or new_query_id()
        if self.query_log is not None:
            self.query_log.answered(queries, predictions)
        self.metrics.answered(predictions)
        return predictions

    @staticmethod
    def _probe(models: LoadedModels) -> None:
        """A prediction with every model of the set, stale snapshot or not."""
        predict_texts(models, [PROBE_TEXT], top_k=1, max_snapshot_age_s=math.inf)

    @bentoml.on_shutdown
    def stop(self) -> None:
        self.reloader.stop()
        if self.query_log is not None:
            self.query_log.stop()

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
    async def predict(
        self,
        text: str,
        query_id: str | None = None,
        user_id: str | None = None,
        locale: str | None = None,
    ) -> Prediction | JSONResponse:
        """The intent of one query."""
        query = Query.model_construct(text=text, query_id=query_id, user_id=user_id, locale=locale)
        try:
            return (await self.coalescer([query]))[0]
        except NoModelError as exc:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))

    @bentoml.api(input_spec=PredictBatchRequest, output_spec=Predictions)
    async def predict_batch(self, texts: list[str | Query]) -> Predictions | JSONResponse:
        """The intents of several queries, in order; at most `SERVING_MAX_BATCH` of them."""
        if len(texts) > self.settings.max_batch:
            return _error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(texts)} texts, over the limit of {self.settings.max_batch}",
                field="texts",
            )
        queries = [Query.model_construct(text=t) if isinstance(t, str) else t for t in texts]
        try:
            return Predictions(await self.coalescer(queries))
        except NoModelError as exc:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))

    @bentoml.api(input_spec=FeedbackRequest, output_spec=FeedbackAccepted)
    async def feedback(
        self,
        query_id: str | None = None,
        intent: str | None = None,
        source: str | None = None,
        items: list[Label] | None = None,
    ) -> JSONResponse:
        """Labels for answered queries, for the feedback topic: one, or several as `items`.

        Answers 202 once they are journaled (Kafka takes them from the journal); a label may
        name a query this service never answered and an intent no model knows yet.
        """
        if items is None:
            for name, value in (("query_id", query_id), ("intent", intent)):
                if value is None:
                    message = f"{name}: Field required (or send several labels as items)"
                    return _error(HTTPStatus.BAD_REQUEST, message, field=name)
            items = [Label.model_construct(query_id=query_id, intent=intent, source=source)]
        elif query_id is not None or intent is not None or source is not None:
            message = "send one label (query_id, intent, source) or items, not both"
            return _error(HTTPStatus.BAD_REQUEST, message, field="items")
        if len(items) > self.settings.max_batch:
            return _error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(items)} labels, over the limit of {self.settings.max_batch}",
                field="items",
            )
        if self.query_log is None:
            message = "feedback is off: the query log is off (SERVING_QUERY_LOG=false)"
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, message)
        if not self.query_log.labelled(items):
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the labels could not be journaled")
        return JSONResponse({"accepted": len(items)}, status_code=HTTPStatus.ACCEPTED)
