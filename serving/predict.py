"""The predict path: batch and speed probabilities for a list of texts, blended, top-k.

It is kept lean because it runs for every request: the batch champion scores all texts in one
vectorised `predict_proba` call, the speed model scores each text, and the blender aligns both
over the union of their intents, so an intent that only the speed model knows can win.
scikit-learn's input and parameter checks are skipped: they cost more than the model on one
text, and the champion and its input (validated strings) are this pipeline's own.
"""

import heapq
from operator import itemgetter

import sklearn

from models.snapshot import SpeedSnapshot
from serving.model_state import ModelSet
from serving.schemas import BlendWeights, IntentScore, ModelVersions, Prediction, Source

_BATCH_ONLY = BlendWeights(batch_weight=1.0, speed_weight=0.0)
_SPEED_ONLY = BlendWeights(batch_weight=0.0, speed_weight=1.0)


class NoModelError(RuntimeError):
    """Neither a batch champion nor a fresh speed snapshot is loaded."""


def _versions(models: ModelSet, snapshot: SpeedSnapshot | None) -> ModelVersions:
    champion = models.champion
    return ModelVersions(
        batch_version=champion.info.version if champion else None,
        batch_cutoff_offsets=champion.info.cutoff_offsets if champion else None,
        speed_snapshot_offsets=snapshot.offsets if snapshot else None,
        speed_snapshot_age_s=round(snapshot.age_s, 3) if snapshot else None,
    )


def predict_texts(
    models: ModelSet, texts: list[str], *, top_k: int, max_snapshot_age_s: float
) -> list[Prediction]:
    """One prediction per text, from whichever models are loaded (see `Prediction.source`).

    Raises NoModelError when no model can answer.
    """
    champion = models.champion
    snapshot = models.fresh_snapshot(max_snapshot_age_s)
    if champion is None and snapshot is None:
        raise NoModelError(
            "no model is loaded: no batch champion, and no speed snapshot younger than "
            f"{max_snapshot_age_s:g}s"
        )
    source: Source
    if champion is not None and snapshot is not None:
        source, weights = "blend", snapshot.blender.weights
        blend = BlendWeights(batch_weight=weights[0], speed_weight=weights[1])
    elif champion is not None:
        source, blend = "batch", _BATCH_ONLY
    else:
        source, blend = "speed", _SPEED_ONLY
    versions = _versions(models, snapshot)

    batch_probs = None
    if champion is not None:
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            batch_probs = champion.predict_proba_many(texts)
    if snapshot is None:
        blended = batch_probs or []
    else:
        blended = [
            snapshot.blender.blend(
                batch_probs[i] if batch_probs is not None else None,
                snapshot.model.predict_proba_one({"text": text}),
            )
            for i, text in enumerate(texts)
        ]
    predictions = []
    for probs in blended:
        best = heapq.nlargest(top_k, probs.items(), key=itemgetter(1))
        predictions.append(
            Prediction(
                intent=best[0][0],
                confidence=best[0][1],
                top_k=[IntentScore(intent=intent, p=p) for intent, p in best],
                blend=blend,
                models=versions,
                source=source,
            )
        )
    return predictions
