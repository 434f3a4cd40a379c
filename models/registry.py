"""The batch champion as the MLflow model registry records it, read by speed and serving.

The batch layer tags each registered version with the Kafka offsets its training data stopped
at and with the spec of the model it trained; the speed layer re-bases on those offsets, serving
reports them with every answer, and the next retrain registers nothing if both are the same.
"""

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from models.model_spec import ModelSpec
from models.scope import find_scope
from models.texts import TextMemory

CHAMPION = "champion"
CHALLENGER = "challenger"
CUTOFF_TAG = "cutoff_offsets"
FEEDBACK_CUTOFF_TAG = "cutoff_feedback_offsets"
"""The version tag of the feedback topic's offsets in the cut-off (`CUTOFF_TAG` holds the
queries topic's); a version registered before labels had a topic has none: no label read."""
TOPIC_TAG = "cutoff_topic"
MODEL_SPEC_TAG = "model_spec"
"""The tag holding the spec of a version's model (`ModelSpec.as_json`)."""


@dataclass(frozen=True)
class ChampionInfo:
    """Which version is champion, where its training data ends in the stream, and which
    tracking server holds it."""

    name: str
    version: str
    run_id: str
    cutoff_offsets: dict[int, int]
    tracking_uri: str = ""  # empty for a champion read from a file (benchmarks, tests)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def encode_offsets(offsets: dict[int, int]) -> str:
    """Offsets as a tag value: JSON with string partition keys, sorted."""
    return json.dumps({str(p): o for p, o in sorted(offsets.items())})


def decode_offsets(value: str | None) -> dict[int, int]:
    return {int(p): int(o) for p, o in json.loads(value).items()} if value else {}


def trained_alike(tags: Mapping[str, str], cutoff: dict[int, int], spec: ModelSpec) -> bool:
    """Whether the registered version with `tags` was trained on the history up to `cutoff` by
    the model `spec` builds, so that a retrain of the same would only repeat it. A version
    without a `model_spec` tag (registered before versions carried one) counts as another model.

    >>> spec = ModelSpec("fractions:Fraction", {"numerator": 3})
    >>> tags = {CUTOFF_TAG: encode_offsets({0: 9}), MODEL_SPEC_TAG: spec.as_json()}
    >>> trained_alike(tags, {0: 9}, spec), trained_alike(tags, {0: 10}, spec)
    (True, False)
    >>> trained_alike(tags, {0: 9}, ModelSpec("fractions:Fraction", {"numerator": 4}))
    False
    """
    same_model = tags.get(MODEL_SPEC_TAG) == spec.as_json()
    return same_model and decode_offsets(tags.get(CUTOFF_TAG)) == cutoff


def fetch_champion(client: MlflowClient, name: str) -> ChampionInfo | None:
    """The current champion, or None when the model or the alias does not exist yet.

    Connection failures propagate: a caller that polls keeps what it has and tries again.
    """
    return fetch_alias(client, name, CHAMPION)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The registry's record of the version `alias` points at, or None when the model or the
    alias does not exist yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def fetch_alias(client: MlflowClient, name: str, alias: str) -> ChampionInfo | None:
    """The version `alias` points at (as `fetch_champion` does for the champion), or None."""
    version = alias_version(client, name, alias)
    if version is None:
        return None
    return ChampionInfo(
        name=name,
        version=str(version.version),
        run_id=version.run_id or "",
        cutoff_offsets=decode_offsets(version.tags.get(CUTOFF_TAG)),
        tracking_uri=client.tracking_uri,
    )


TRAINING_TEXTS_ARTIFACT = "lineage/training_texts.npy"
"""Keys (`models.texts.text_key`) of the texts a version trained on, logged on its run, so the
speed layer can tell the champion's first-seen texts from its repeats."""


class ChampionModel:
    """A loaded batch champion: its registry facts, a vectorised predict_proba over texts, the
    texts it trained on (None when its run did not record them) and its scope decision (None
    when it has none)."""

    def __init__(self, info: ChampionInfo, estimator, training_texts: TextMemory | None = None):
        self.info = info
        self.estimator = estimator
        self.training_texts = training_texts
        self.classes: list[str] = [str(c) for c in estimator.classes_]
        self.known = frozenset(self.classes)
        self.scope = find_scope(estimator)

    def predict_proba_matrix(self, texts: list[str]) -> np.ndarray:
        """(texts, classes) probabilities in the order of `classes`; one vectorised call."""
        if not texts:
            return np.zeros((0, len(self.classes)))
        return self.estimator.predict_proba(texts)

    def predict_proba_many(self, texts: list[str]) -> list[dict[str, float]]:
        """One probability dict per text (`predict_proba_matrix`'s rows)."""
        matrix = self.predict_proba_matrix(texts)
        return [dict(zip(self.classes, row.tolist(), strict=True)) for row in matrix]


def load_champion(info: ChampionInfo, with_training_texts: bool = False) -> ChampionModel:
    """Download and load the champion's fitted estimator from the registry, and with
    `with_training_texts` the keys of the texts it trained on (if its run recorded them).

    The estimator is read from the registered pyfunc model's artifact
    (`models.pyfunc_model.load_estimator`; versions logged in MLflow's scikit-learn flavour
    load too), in this process's own code, without MLflow's pyfunc wrapper. Both are pickles:
    the registry is this pipeline's own, and the models in it are the ones its batch layer
    wrote, so they are trusted (MLflow is told so for the scikit-learn flavour).
    """
    import mlflow.artifacts
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    from models.pyfunc_model import load_estimator

    MLFLOW_ALLOW_PICKLE_DESERIALIZATION.set("true")
    with (
        fluent_mlflow(info.tracking_uri),
        tempfile.TemporaryDirectory(prefix="champion-") as folder,
    ):
        local = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=folder)
        estimator = load_estimator(Path(local))
        texts = _training_texts(info) if with_training_texts and info.run_id else None
    return ChampionModel(info, estimator, texts)


def _training_texts(info: ChampionInfo) -> TextMemory | None:
    import mlflow.artifacts

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=info.run_id, artifact_path=TRAINING_TEXTS_ARTIFACT
        )
    except MlflowException:
        return None  # a version registered before runs recorded their texts
    return TextMemory(np.load(path))


@contextmanager
def fluent_mlflow(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (`start_run`, `log_model`) at `uri` for the block only.

    MLflow keeps that address in process-wide state and copies it into MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI; left there, settings read later in the same process would silently
    follow it. What was there before is put back on the way out.
    """
    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
