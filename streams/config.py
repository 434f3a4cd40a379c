"""Kafka settings, read from `KAFKA_*` environment variables at the CLI edge."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """Where the broker is, which topics the pipeline uses, and how a local broker is run.

    `bootstrap_servers` left empty means "run the project's own single-node broker on
    localhost:`port`"; set it to use an existing cluster instead.
    """

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True)

    bootstrap_servers: str = ""
    port: int = 9092
    controller_port: int = 9093
    topic: str = "queries"
    dlq_topic: str = "queries.dlq"
    partitions: int = 4
    kafka_version: str = "4.4.0"
    home: Path = Path("var/kafka")
    # Where the fetched jars (libs-<version>) and the JVM class archive are kept; unset means
    # `home`. Tests point their throwaway homes at one shared cache.
    cache_dir: Path | None = None
    heap: str = "512m"
    # Clients retry a lost broker with exponential backoff up to this cap (kafka-python's own
    # cap is 30 s): a broker back from a restart is used within about this long.
    reconnect_backoff_max_ms: int = 2000

    def client_config(self) -> dict[str, object]:
        """What every producer and consumer of the pipeline is given."""
        return {
            "bootstrap_servers": self.bootstrap,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
        }

    @property
    def uses_local_broker(self) -> bool:
        return not self.bootstrap_servers

    @property
    def bootstrap(self) -> str:
        """The address clients connect to."""
        return self.bootstrap_servers or f"localhost:{self.port}"
