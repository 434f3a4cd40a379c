"""The benchmark's FastAPI baselines: the batch champion alone, behind a plain FastAPI app on one
uvicorn worker, in two forms.

- `app`, FastAPI as users write it: an `async def` handler that scores its one text with the
  champion's `predict_proba`, on the event loop, one model call per request.
- `coalesced_app`: the same app with the service's request coalescing (`serving.batching`), so
  that concurrent requests become one vectorised model call, as in `IntentClassifier`.

Both are configured like the service, through the service's own code: they read the same
`SERVING_*` settings (`SERVING_CHAMPION_PATH` is the champion file, loaded once at start-up),
apply its garbage collector settings (`serving.runtime.tune_gc`, at the same point of start-up),
and predict with its `serving.predict.predict_texts`, which skips scikit-learn's input and
parameter validation and builds the same `Prediction` answer. Access logging is off (run uvicorn
with `--no-access-log`); BentoML's log filter has nothing to filter here. What differs from
`batch_only` is the framework: FastAPI and uvicorn instead of BentoML, and no ASGI middleware.

    uvicorn bench.serve_fastapi:app --no-access-log --workers 1
    uvicorn bench.serve_fastapi:coalesced_app --no-access-log --workers 1
"""

from collections.abc import Callable
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.batching import Coalescer
from serving.model_state import FileChampion, LoadedModels
from serving.predict import predict_texts
from serving.runtime import process_settings, tune_gc
from serving.schemas import Prediction, PredictRequest


def _predictor(coalesce: bool) -> Callable[[FastAPI], None]:
    """The start-up of an app: settings, GC tuning, the champion and its predict function."""

    def start(app: FastAPI) -> None:
        settings = process_settings().serving
        if settings.champion_path is None:
            raise RuntimeError("set SERVING_CHAMPION_PATH to the champion file to serve")
        tune_gc()  # where the service calls it: before its first model load
        source = FileChampion(settings.champion_path)
        info = source.current()
        models = LoadedModels(champion=source.load(info) if info else None)

        def predict_many(texts: list[str]) -> list[Prediction]:
            return predict_texts(
                models, texts, top_k=settings.top_k, max_snapshot_age_s=settings.max_snapshot_age_s
            )

        app.state.models = models
        app.state.predict_many = predict_many
        app.state.coalescer = Coalescer(predict_many, settings.max_batch) if coalesce else None

    return start


def _make_app(coalesce: bool) -> FastAPI:
    start = _predictor(coalesce)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        start(app)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ready = request.app.state.models.champion is not None
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return JSONResponse({"ready": ready}, status_code=status)

    if coalesce:

        @app.post("/predict")
        async def predict_coalesced(body: PredictRequest, request: Request) -> Prediction:
            return (await request.app.state.coalescer([body.text]))[0]

    else:

        @app.post("/predict")
        async def predict(body: PredictRequest, request: Request) -> Prediction:
            return request.app.state.predict_many([body.text])[0]

    return app


app = _make_app(coalesce=False)
coalesced_app = _make_app(coalesce=True)
