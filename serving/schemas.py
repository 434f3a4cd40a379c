"""Request and response bodies of the prediction and feedback endpoints.

Inputs are validated here and only here (by BentoML with these models), so the predict path
can trust every text it gets: 1 to 1,000 characters after trimming, like a `queries` event;
ids, intents and the other short fields are 1 to 200 characters, as in the events.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from common.limits import QueryText as Text
from streams.schema import ShortText

Source = Literal["blend", "batch", "speed"]


class Query(BaseModel):
    """A text to answer, and what the query log keeps with it: its `query_id` (a new one is
    made when it is missing; labels sent to `/feedback` later name it), who asked (`user_id`)
    and in which `locale`."""

    model_config = ConfigDict(extra="forbid")

    text: Text
    query_id: ShortText | None = None
    user_id: ShortText | None = None
    locale: ShortText | None = None


class PredictRequest(Query):
    """One query."""


class PredictBatchRequest(BaseModel):
    """A list of queries, each a text or a `Query` object; how many at most is a runtime
    setting (`SERVING_MAX_BATCH`)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[Text | Query] = Field(min_length=1)


class Label(BaseModel):
    """The intent of an answered query, named by its `query_id`; `source` says where the label
    came from (`feedback-api` when it is not given)."""

    model_config = ConfigDict(extra="forbid")

    query_id: ShortText
    intent: ShortText
    source: ShortText | None = None


class FeedbackRequest(BaseModel):
    """One label (`query_id`, `intent`, optional `source`), or several as `items`, a list of
    labels (at most `SERVING_MAX_BATCH`), but not both."""

    model_config = ConfigDict(extra="forbid")

    query_id: ShortText | None = None
    intent: ShortText | None = None
    source: ShortText | None = None
    items: list[Label] | None = Field(default=None, min_length=1)


class FeedbackAccepted(BaseModel):
    """The answer of `/feedback` (202): how many labels were taken for the feedback topic."""

    accepted: int


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
    """The most likely intent, the top-k over the union of both models' intents, and lineage;
    `query_id` names the query (the one sent, or a new one) for `/feedback`. A query judged out
    of scope has `in_scope` false and the out-of-scope label as its intent, `top_k` still the
    best in-scope intents."""

    query_id: str = ""
    intent: str
    confidence: float
    in_scope: bool = True
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
