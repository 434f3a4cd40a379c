"""Request and response bodies of the prediction endpoints.

Inputs are validated here and only here (by BentoML with these models), so the predict path
can trust every text it gets: 1 to 1,000 characters after trimming, like a `queries` event.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from common.limits import QueryText as Text

Source = Literal["blend", "batch", "speed"]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text


class PredictBatchRequest(BaseModel):
    """A list of texts; how many at most is a runtime setting (`SERVING_MAX_BATCH`)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[Text] = Field(min_length=1)


class IntentScore(BaseModel):
    intent: str
    p: float


class BlendWeights(BaseModel):
    batch_weight: float
    speed_weight: float


class ModelVersions(BaseModel):
    """Which models produced an answer: the batch champion and the speed snapshot."""

    batch_version: str | None
    batch_cutoff_offsets: dict[int, int] | None
    speed_snapshot_offsets: dict[int, int] | None
    speed_snapshot_age_s: float | None


class Prediction(BaseModel):
    """The most likely intent, the top-k over the union of both models' intents, and lineage."""

    intent: str
    confidence: float
    top_k: list[IntentScore]
    blend: BlendWeights
    models: ModelVersions
    source: Source


class Predictions(RootModel[list[Prediction]]):
    """The answer of `/predict_batch`: one prediction per text, in order."""


def error_body(message: str, field: str | None = None) -> dict[str, Any]:
    """An error answer shaped like BentoML's own validation errors: `error`, and `detail` as a
    list of `{loc, msg}` naming the field at fault (empty when no field is)."""
    detail = [{"loc": [field], "msg": message}] if field else []
    return {"error": message, "detail": detail}
