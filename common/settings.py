"""Every setting of the project, as one tree built once at the edge and passed down.

Each section reads its own environment prefix (`KAFKA_`, `MLFLOW_`, `BATCH_`, `SPEED_`,
`ARCHIVE_`, `SERVING_`, `STORAGE_`, `METRICS_`, `LOG_`) when it is constructed, and only
`Settings.from_environment` constructs them for a running job: the CLI calls it once and hands
each job the sections it needs, so no code below the CLI reads the environment. Connection
settings (where Kafka, MLflow and the object store are) are apart from the settings of the local
launchers that run them on this machine.

>>> tree = Settings.from_environment()
>>> tree.kafka.topic == tree.kafka.model_copy().topic
True
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The service's request timeout (BentoML's `traffic.timeout`): a request still unanswered
# after it gets BentoML's 504.
REQUEST_TIMEOUT_S = 30


# The topics named after the stream's when left empty.
TOPICS_BESIDE = {"dlq_topic": "{topic}.dlq", "feedback_topic": "{topic}.feedback"}


class KafkaSettings(BaseSettings):
    """Where the broker is and which topics the pipeline uses.

    `bootstrap_servers` left empty means "the project's own single-node broker on
    localhost:`port`" (`LocalBrokerSettings` says how it runs); set it to use a cluster.
    `feedback_topic` takes the labels that arrive after their queries; both topics are keyed by
    query id and have `partitions` partitions, so that a label lands on its query's partition.
    The dead-letter and feedback topics default to `<topic>.dlq` and `<topic>.feedback`, so that
    naming the stream names the topics beside it.
    """

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True)

    bootstrap_servers: str = ""
    port: int = 9092
    topic: str = "queries"
    dlq_topic: str = Field(
        default="", json_schema_extra={"empty_means": TOPICS_BESIDE["dlq_topic"]}
    )
    feedback_topic: str = Field(
        default="", json_schema_extra={"empty_means": TOPICS_BESIDE["feedback_topic"]}
    )
    partitions: int = 4
    # Clients retry a lost broker with exponential backoff up to this cap (kafka-python's own
    # cap is 30 s): a broker back from a restart is used within about this long.
    reconnect_backoff_max_ms: int = 2000

    @model_validator(mode="before")
    @classmethod
    def _name_the_topics_beside_the_stream(cls, values: dict[str, object]) -> dict[str, object]:
        topic = values.get("topic") or "queries"
        return {
            **values,
            **{
                name: pattern.format(topic=topic)
                for name, pattern in TOPICS_BESIDE.items()
                if not values.get(name)
            },
        }

    def on_topic(self, topic: str) -> "KafkaSettings":
        """These settings on another stream, with the dead-letter and feedback topics beside it."""
        return type(self)(
            **{**self.model_dump(), "topic": topic, "dlq_topic": "", "feedback_topic": ""}
        )

    def client_config(self) -> dict[str, object]:
        """What every producer and consumer of the pipeline is given."""
        return {
            "bootstrap_servers": self.bootstrap,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
        }

    @property
    def uses_local_server(self) -> bool:
        return not self.bootstrap_servers

    @property
    def bootstrap(self) -> str:
        """The address clients connect to."""
        return self.bootstrap_servers or f"localhost:{self.port}"


class LocalBrokerSettings(BaseSettings):
    """How `lambda-ml kafka up` runs the local broker: version, folders, controller port, heap.

    `cache_dir` is where the fetched jars (libs-<version>) and the JVM class archive are kept;
    unset means `home`. Tests point their throwaway homes at one shared cache.
    """

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True)

    kafka_version: str = "4.4.0"
    home: Path = Path("var/kafka")
    cache_dir: Path | None = None
    controller_port: int = 9093
    heap: str = "512m"


class MlflowSettings(BaseSettings):
    """The MLflow tracking server and registry the jobs and the service talk to.

    `tracking_uri` left empty means "the project's own server on localhost:`port`"
    (`LocalMlflowSettings` says where it keeps its data); set it to use another server.
    """

    model_config = SettingsConfigDict(env_prefix="MLFLOW_", frozen=True)

    tracking_uri: str = ""
    port: int = 5000
    experiment: str = "lambda-ml"
    registered_model: str = "intent-classifier"

    @property
    def uses_local_server(self) -> bool:
        return not self.tracking_uri

    @property
    def uri(self) -> str:
        """The address clients talk to."""
        return self.tracking_uri or f"http://127.0.0.1:{self.port}"


class LocalMlflowSettings(BaseSettings):
    """Where `lambda-ml mlflow up` keeps the local server's SQLite store and artifacts."""

    model_config = SettingsConfigDict(env_prefix="MLFLOW_", frozen=True)

    home: Path = Path("var/mlflow")


class BatchSettings(BaseSettings):
    """Where the history is and how a batch run splits, scores and promotes.

    `holdout_fraction` of the distinct texts (by hash) are held out; keep it fixed, so that no
    version ever trains on another's holdout. The `gate_*` settings are the promotion gate's
    rules (`pipelines.batch.promotion.GateRules`).

    `model` is the factory of the scikit-learn model a run trains (`package.module:factory`,
    read by `models.model_spec.ModelSpec`) and `model_params` its keyword arguments
    (`BATCH_MODEL_PARAMS` holds them as a JSON object).

    `engine` runs the pass over the history (de-duplication, counting, holdout split) in this
    process (`local`, pyarrow) or as a Spark job (`spark`) on `spark_master` (`local[*]`,
    `spark://host:7077`, `k8s://...`), with `spark_conf` added to the session's configuration
    (`BATCH_SPARK_CONF` holds it as a JSON object). When the distinct training rows exceed
    `max_distinct_rows`, the fit takes a sample of them, drawn with `sample_seed`
    (`pipelines.batch.training_sample`).
    """

    model_config = SettingsConfigDict(env_prefix="BATCH_", frozen=True)

    model: str = "models.batch.recipe:build_batch_model"
    model_params: dict[str, object] = {}
    master_dir: Path = Path("var/master")
    holdout_fraction: float = 0.1
    min_accuracy: float = 0.5
    min_train_events: int = 100
    lock_path: Path = Path("var/locks/retrain.lock")
    gate_alpha: float = 0.05
    gate_max_intent_drop: float = 0.10
    gate_min_intent_texts: int = 20
    engine: Literal["local", "spark"] = "local"
    spark_master: str = "local[*]"
    spark_conf: dict[str, str] = {}
    max_distinct_rows: int = Field(default=2_000_000, gt=0)
    sample_seed: int = 0


class SpeedSettings(BaseSettings):
    """Which model the speed layer learns, and how often it snapshots, reports, registers its
    model and looks for a new champion; `freshness_window` is how many of the latest events its
    freshness percentiles cover.

    `model` is the factory of the River model (`package.module:factory`, read by
    `models.model_spec.ModelSpec`) and `model_params` its keyword arguments
    (`SPEED_MODEL_PARAMS` holds them as a JSON object); the default is the tuned `HashedTextNB`.
    `register_every_s` is how often the speed model (every partition's newest snapshot, merged)
    is registered in MLflow as a version of `<registered model>-speed`, besides after every
    re-base; 0 registers after re-bases only.

    A worker is one member of the consumer group `group_id` (alone, a group of one): it keeps
    one model per partition it owns (`pipelines.speed.layer.SpeedLayer`) and predicts with its
    own partitions' models added to the others' newest snapshots, read again every
    `peer_refresh_s`. `session_timeout_ms` and `heartbeat_interval_ms` are the group's: a
    worker that dies keeps its partitions until the session timeout, so that is also how long
    a worker restarted after kill -9 may wait for them.

    Labels that come on the feedback topic are joined to their queries within a window
    (`pipelines.speed.joins`): a query waits for its label until `join_window_events` later
    queries of its partition have been read, and a label counts only if given at most
    `join_window_s` seconds after its query; each partition keeps up to that many queries,
    with what each view predicted for them, in its snapshots. A label read before its query
    (a backlog's small feedback topic is read ahead of its queries) waits as long, counted from
    when it is read, or, while the queries read are older than the label, from the first query
    read that is not; up to that many labels wait.
    """

    model_config = SettingsConfigDict(env_prefix="SPEED_", frozen=True)

    model: str = "models.speed_model:build_speed_model"
    model_params: dict[str, object] = {}
    group_id: str = "lambda-ml-speed"
    snapshot_dir: Path = Path("var/snapshots")
    snapshot_every_events: int = 20_000
    snapshot_every_s: float = 5.0
    window: int = 1000
    champion_poll_s: float = 10.0
    metrics_every_s: float = 10.0
    signal_dir: Path = Path("var/signals")
    freshness_window: int = 10_000
    register_every_s: float = Field(default=600.0, ge=0)
    peer_refresh_s: float = Field(default=5.0, gt=0)
    session_timeout_ms: int = Field(default=10_000, gt=0)
    heartbeat_interval_ms: int = Field(default=3_000, gt=0)
    join_window_events: int = Field(default=20_000, gt=0)
    join_window_s: float = Field(default=86_400.0, gt=0)


class ArchiveSettings(BaseSettings):
    """When the archiver flushes buffered events: enough of them, or old enough."""

    model_config = SettingsConfigDict(env_prefix="ARCHIVE_", frozen=True)

    group_id: str = "lambda-ml-archiver"
    flush_every_events: int = 50_000
    flush_every_s: float = 5.0


class ServingSettings(BaseSettings):
    """Where the models come from, how often they are reloaded, and the request limits.

    `champion_path` set means "serve the scikit-learn pipeline pickled in this file as the batch
    champion" instead of following the MLflow registry's `champion` alias: benchmarks and tests
    use it to serve without an MLflow server. `max_snapshot_age_s` is the freshness guard: a
    speed snapshot older than that is stale (the speed layer has stopped) and is not used.
    `oos_label` is the intent an out-of-scope answer names (`in_scope` false); the default is
    CLINC150's own out-of-scope label.

    The request limits are answered before BentoML reads a request (`serving.middleware`):
    `max_body_bytes` leaves room for `max_batch` texts of 1,000 characters even when every
    character is JSON-escaped; `body_timeout_s`, counted from the moment the request's headers
    are all in, must stay under the service's request timeout (`REQUEST_TIMEOUT_S`), or a slow
    body is answered by BentoML's 504 instead of a 408; `max_header_bytes` is what the HTTP
    parser (h11) takes in a header block sent in pieces.

    `query_log` on writes every answered query (with the `query_log_top_k` best intents served)
    to `KAFKA_TOPIC`, and `/feedback` labels to `KAFKA_FEEDBACK_TOPIC`, through a journal in
    `query_log_journal_dir` (a folder per worker) that keeps them while Kafka is away, up to
    `query_log_journal_max_bytes` per worker (the oldest are dropped past it); the journal is
    fsynced every `query_log_fsync_s` (0: before every answer). See `streams.outbox`.
    """

    model_config = SettingsConfigDict(env_prefix="SERVING_", frozen=True)

    snapshot_dir: Path = Path("var/snapshots")
    champion_path: Path | None = None
    poll_s: float = Field(default=5.0, gt=0)
    max_snapshot_age_s: float = Field(default=900.0, gt=0)
    max_batch: int = Field(default=64, ge=1)
    top_k: int = Field(default=5, ge=1)
    oos_label: str = Field(default="oos", min_length=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    body_timeout_s: float = Field(default=10.0, gt=0, lt=REQUEST_TIMEOUT_S)
    max_header_bytes: int = Field(default=16_384, ge=1)
    query_log: bool = True
    query_log_journal_dir: Path = Path("var/query-log")
    query_log_journal_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    query_log_fsync_s: float = Field(default=1.0, ge=0)
    query_log_top_k: int = Field(default=3, ge=1)
    host: str = "127.0.0.1"
    port: int = 3000
    url: str = ""

    @property
    def address(self) -> str:
        """Where clients reach the service: `url` if set, else this host's `port` (on the
        loopback when the service binds every address)."""
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


class StorageSettings(BaseSettings):
    """The S3-compatible object store that `s3://` locations (`common.storage`) live on.

    `endpoint_url` left empty means "the project's own S3Proxy on 127.0.0.1:`port`"
    (`LocalObjectStoreSettings` says how it runs); set it to use another S3 service. `bucket`
    is the one `lambda-ml s3 up` creates. `lease_s` is how long a lock lease on the store (the
    retrain lock) lasts unless renewed: a crashed holder's lock is free again after it.
    """

    model_config = SettingsConfigDict(env_prefix="STORAGE_", frozen=True)

    endpoint_url: str = ""
    port: int = 9000
    bucket: str = "lambda-ml"
    access_key: str = "local-identity"
    secret_key: str = "local-credential"
    region: str = "us-east-1"
    lease_s: float = Field(default=60.0, gt=0)

    @property
    def uses_local_server(self) -> bool:
        return not self.endpoint_url

    @property
    def endpoint(self) -> str:
        """The address clients talk to."""
        return self.endpoint_url or f"http://127.0.0.1:{self.port}"


class LocalObjectStoreSettings(BaseSettings):
    """How `lambda-ml s3 up` runs the local S3Proxy: version, home (data, logs), jar cache.

    `cache_dir` is where the fetched jar is kept; unset means `home`. Tests point their
    throwaway homes at one shared cache.
    """

    model_config = SettingsConfigDict(env_prefix="STORAGE_", frozen=True)

    s3proxy_version: str = "3.0.0"
    home: Path = Path("var/s3proxy")
    cache_dir: Path | None = None
    heap: str = "256m"


class MetricsSettings(BaseSettings):
    """Where each long-running job answers `/metrics` (Prometheus' text format) and `/healthz`,
    and how long its loop may go without a heartbeat before `/healthz` says it has stalled.

    Each job has its own port (0: no endpoint), on `host`. `stall_s` bounds one turn of a loop
    (the speed layer's poll, the archiver's poll and flush, the scheduler's wait, the service's
    model reload round); `retrain_stall_s` bounds a retrain the scheduler runs, during which its
    wait loop does not turn.
    """

    model_config = SettingsConfigDict(env_prefix="METRICS_", frozen=True)

    host: str = "127.0.0.1"
    speed_port: int = Field(default=9101, ge=0, lt=65536)
    archive_port: int = Field(default=9102, ge=0, lt=65536)
    schedule_port: int = Field(default=9103, ge=0, lt=65536)
    stall_s: float = Field(default=120.0, gt=0)
    retrain_stall_s: float = Field(default=7200.0, gt=0)


class LogSettings(BaseSettings):
    """How every job and the service log: the level, and `rich` lines for a terminal or one
    JSON object per line (`json`) for a log shipper."""

    model_config = SettingsConfigDict(env_prefix="LOG_", frozen=True)

    level: str = "INFO"
    format: Literal["rich", "json"] = "rich"


@dataclass(frozen=True)
class Settings:
    """The whole tree: one section per concern, connections apart from local launchers."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    local_broker: LocalBrokerSettings = field(default_factory=LocalBrokerSettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    local_mlflow: LocalMlflowSettings = field(default_factory=LocalMlflowSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    local_object_store: LocalObjectStoreSettings = field(default_factory=LocalObjectStoreSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @classmethod
    def from_environment(cls) -> "Settings":
        """Read every section from the environment: call this once, at the edge."""
        return cls()
