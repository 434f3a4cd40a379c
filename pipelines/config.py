"""Settings of the jobs, read from the environment at the CLI edge and passed down."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.promotion import GateRules


class MlflowSettings(BaseSettings):
    """The MLflow tracking server and registry.

    `tracking_uri` left empty means "run the project's own server on localhost:`port`" with a
    SQLite store and artifacts under `home`; set it to use an existing server instead.
    """

    model_config = SettingsConfigDict(env_prefix="MLFLOW_", frozen=True)

    tracking_uri: str = ""
    port: int = 5000
    home: Path = Path("var/mlflow")
    experiment: str = "lambda-ml"
    registered_model: str = "intent-classifier"

    @property
    def uses_local_server(self) -> bool:
        return not self.tracking_uri

    @property
    def uri(self) -> str:
        """The address clients talk to."""
        return self.tracking_uri or f"http://127.0.0.1:{self.port}"


class BatchSettings(BaseSettings):
    """Where the history is and how a batch run splits, scores and promotes.

    `holdout_fraction` of the distinct texts (by hash) are held out; keep it fixed, so that no
    version ever trains on another's holdout. The `gate_*` settings are `GateRules`.
    """

    model_config = SettingsConfigDict(env_prefix="BATCH_", frozen=True)

    master_dir: Path = Path("var/master")
    holdout_fraction: float = 0.1
    min_accuracy: float = 0.5
    min_train_events: int = 100
    lock_path: Path = Path("var/locks/retrain.lock")
    gate_alpha: float = 0.05
    gate_max_intent_drop: float = 0.10
    gate_min_intent_texts: int = 20

    @property
    def gate_rules(self) -> GateRules:
        return GateRules(self.gate_alpha, self.gate_max_intent_drop, self.gate_min_intent_texts)
