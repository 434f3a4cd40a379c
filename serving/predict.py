"""The predict path: batch and speed probabilities for a list of texts, blended, judged in or
out of scope, top-k.

It is kept lean because it runs for every request: the batch champion scores all texts in one
vectorised `predict_proba` call, the speed model (`HashedTextNB.predict_proba_matrix`) too, and
the blender aligns both matrices over the union of their intents in one `blend_many` call, so an
intent that only the speed model knows can win. A speed model without `predict_proba_matrix` (a
plain River model) answers through River's `predict_proba_many` when it has a working one, else
has its `predict_proba_one` dicts laid out as the same kind of matrix, so every model takes the
one numeric path. scikit-learn's input and parameter checks are skipped:
they cost more than the model on one text, and the champion and its input (validated strings)
are this pipeline's own.

The champion's scope decision (`models.scope`) judges the answer served, blend or not, and a
blend keeps the champion's own abstention on the intents it knows (`judge_blended_scope`);
without a decision, a query is out of scope when the out-of-scope label is its most probable
intent. An out-of-scope answer names that label with `in_scope` false, and `top_k` lists the
best in-scope intents either way.
"""

from typing import Any

import numpy as np
import sklearn

from models.prequential import speed_probability_matrix
from models.scope import OOS_LABEL, judge_blended_scope, judge_scope, out_of_scope_columns
from models.snapshot import SpeedSnapshot
from models.texts import text_keys
from serving.model_state import LoadedModels
from serving.schemas import BlendWeights, IntentScore, ModelVersions, Prediction, Source

_BATCH_ONLY = BlendWeights(batch_weight=1.0, speed_weight=0.0)
_SPEED_ONLY = BlendWeights(batch_weight=0.0, speed_weight=1.0)


class NoModelError(RuntimeError):
    """Neither a batch champion nor a fresh speed snapshot is loaded."""


def _versions(models: LoadedModels, snapshot: SpeedSnapshot | None) -> ModelVersions:
    champion = models.champion
    return ModelVersions(
        batch_version=champion.info.version if champion else None,
        batch_cutoff_offsets=champion.info.cutoff_offsets if champion else None,
        speed_snapshot_offsets=snapshot.offsets if snapshot else None,
        speed_snapshot_age_s=round(snapshot.age_s, 3) if snapshot else None,
    )


def predict_texts(
    models: LoadedModels,
    texts: list[str],
    *,
    top_k: int,
    max_snapshot_age_s: float,
    oos_label: str = OOS_LABEL,
) -> list[Prediction]:
    """One prediction per text, from whichever models are loaded (see `Prediction.source`);
    `oos_label` is the intent an out-of-scope answer names.

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
    # Which weights each text's blend uses; only a blend needs to know.
    seen = np.zeros(len(texts), dtype=bool)
    speed_seen = np.zeros(len(texts), dtype=bool)
    if champion is not None and snapshot is not None:
        source = "blend"
        keys = text_keys(texts)
        if champion.training_texts is not None:
            seen = champion.training_texts.contains_keys(keys)
        speed_seen = snapshot.learnt_texts.contains_keys(keys)
        kinds = list(zip(seen.tolist(), speed_seen.tolist(), strict=True))
        by_kind = {}
        for kind in set(kinds):
            batch_weight, speed_weight = snapshot.blender.weights_for(*kind)
            by_kind[kind] = BlendWeights(batch_weight=batch_weight, speed_weight=speed_weight)
        blends = [by_kind[kind] for kind in kinds]
    else:
        source = "batch" if champion is not None else "speed"
        blends = [_BATCH_ONLY if champion is not None else _SPEED_ONLY] * len(texts)
    versions = _versions(models, snapshot)

    batch_classes: list = []
    batch_matrix = None
    if champion is not None:
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            batch_matrix = champion.estimator.predict_proba(texts) if texts else None
        batch_classes = champion.classes
    if snapshot is None:
        classes, matrix = batch_classes, batch_matrix
    else:
        speed_classes, speed_matrix = _speed_probabilities(snapshot.model, texts)
        classes, matrix = snapshot.blender.blend_many(
            batch_classes, batch_matrix, speed_classes, speed_matrix, seen, speed_seen
        )
    if matrix is None or not texts:
        return []
    decision = champion.scope if champion is not None else None
    batch_in_scope = None
    if snapshot is not None and batch_matrix is not None and len(batch_classes):
        batch_in_scope = judge_scope(batch_classes, batch_matrix, decision, oos_label)
    in_scope = judge_blended_scope(
        classes,
        matrix,
        decision,
        oos_label,
        n_batch=len(batch_classes),
        batch_in_scope=batch_in_scope,
        speed_seen=speed_seen,
    ).tolist()
    out = out_of_scope_columns(classes, oos_label)
    if decision is not None and decision.oos_label != oos_label:
        out = out | out_of_scope_columns(classes, decision.oos_label)
    in_scope_matrix = np.where(out, -np.inf, matrix)
    # Descending; on ties the earlier class (the batch model's first) comes first.
    order = np.argsort(-in_scope_matrix, axis=1, kind="stable")[:, :top_k]
    best_p = np.take_along_axis(matrix, order, axis=1).tolist()
    predictions = []
    for row, scores, blend, judged in zip(order.tolist(), best_p, blends, in_scope, strict=True):
        top = [
            IntentScore(intent=classes[c], p=p)
            for c, p in zip(row, scores, strict=True)
            if not out[c]
        ]
        best = top[0] if top else IntentScore(intent=oos_label, p=0.0)
        predictions.append(
            Prediction(
                intent=best.intent if judged else oos_label,
                confidence=best.p if judged else 1.0 - best.p,
                in_scope=judged,
                top_k=top,
                blend=blend,
                models=versions,
                source=source,
            )
        )
    return predictions


def _speed_probabilities(model, texts: list[str]) -> tuple[list[Any], np.ndarray]:
    """The speed model's classes and (texts, classes) probabilities, by the fastest path the
    model has (`models.prequential.speed_probability_matrix`)."""
    return speed_probability_matrix(model, [{"text": text} for text in texts])
