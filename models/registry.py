"""The batch champion as the MLflow model registry records it, read by speed and serving.

The batch layer tags each registered version with the Kafka offsets its training data stopped
at; the speed layer re-bases on those offsets and serving reports them with every answer.
"""

import json
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
CUTOFF_TAG = "cutoff_offsets"
TOPIC_TAG = "cutoff_topic"


@dataclass(frozen=True)
class ChampionInfo:
    """Which version is champion and where its training data ends in the stream."""

    name: str
    version: str
    run_id: str
    cutoff_offsets: dict[int, int]

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def encode_offsets(offsets: dict[int, int]) -> str:
    """Offsets as a tag value: JSON with string partition keys, sorted."""
    return json.dumps({str(p): o for p, o in sorted(offsets.items())})


def decode_offsets(value: str | None) -> dict[int, int]:
    return {int(p): int(o) for p, o in json.loads(value).items()} if value else {}


def fetch_champion(client: MlflowClient, name: str) -> ChampionInfo | None:
    """The current champion, or None when the model or the alias does not exist yet.

    Connection failures propagate: a caller that polls keeps what it has and tries again.
    """
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return ChampionInfo(
        name=name,
        version=str(version.version),
        run_id=version.run_id or "",
        cutoff_offsets=decode_offsets(version.tags.get(CUTOFF_TAG)),
    )


class ChampionModel:
    """A loaded batch champion: its registry facts and a vectorised predict_proba over texts."""

    def __init__(self, info: ChampionInfo, estimator) -> None:
        self.info = info
        self.estimator = estimator
        self.classes: list[str] = [str(c) for c in estimator.classes_]
        self.known = frozenset(self.classes)

    def predict_proba_many(self, texts: list[str]) -> list[dict[str, float]]:
        """One probability dict per text; one vectorised call, however many texts."""
        if not texts:
            return []
        matrix = self.estimator.predict_proba(texts)
        return [dict(zip(self.classes, row.tolist(), strict=True)) for row in matrix]


def load_champion(info: ChampionInfo) -> ChampionModel:
    """Download and load the champion's scikit-learn model from the registry.

    MLflow refuses to unpickle models unless told to: the registry is this pipeline's own, and
    the models in it are the ones its batch layer wrote, so they are trusted.
    """
    import mlflow.sklearn
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    MLFLOW_ALLOW_PICKLE_DESERIALIZATION.set("true")
    return ChampionModel(info, mlflow.sklearn.load_model(info.model_uri))
