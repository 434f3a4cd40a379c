"""The benchmark's baseline: a plain FastAPI app serving the batch champion alone, one text per
model call, as one would write it without a serving framework (run with one uvicorn worker).
The champion file is `SERVING_CHAMPION_PATH`, loaded once at start-up."""

import heapq
import os
from contextlib import asynccontextmanager
from operator import itemgetter
from pathlib import Path

from fastapi import FastAPI, Request

from serving.model_state import FileChampion
from serving.schemas import PredictRequest


@asynccontextmanager
async def lifespan(app: FastAPI):
    source = FileChampion(Path(os.environ["SERVING_CHAMPION_PATH"]))
    info = source.current()
    app.state.champion = source.load(info) if info else None
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/readyz")
def readyz(request: Request) -> dict:
    return {"ready": request.app.state.champion is not None}


@app.post("/predict")
def predict(body: PredictRequest, request: Request) -> dict:
    champion = request.app.state.champion
    probs = champion.predict_proba_many([body.text])[0]
    best = heapq.nlargest(5, probs.items(), key=itemgetter(1))
    return {
        "intent": best[0][0],
        "confidence": best[0][1],
        "top_k": [{"intent": intent, "p": p} for intent, p in best],
        "batch_version": champion.info.version,
    }
