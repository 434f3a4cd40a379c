"""Prometheus gauges of the models in use, exposed on BentoML's `/metrics` with its own metrics.

BentoML runs `prometheus_client` in multiprocess mode and sets its folder when a worker starts,
so the gauges are made when the service is, never at import. With several workers, each
reports its own models (`liveall`: one series per live worker, labelled `pid`).
"""

from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from serving.model_state import LoadedModels


class ModelGauges:
    """Batch champion version, speed snapshot sequence and age; the age is refreshed at every
    reload round (`SERVING_POLL_S`). A missing model reads 0 (version, sequence) or -1 (age)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, registry=registry, multiprocess_mode="liveall")

        self.batch_version = gauge(
            "lambda_ml_batch_model_version",
            "Registry version of the batch champion in use (0: none, or not a number)",
        )
        self.snapshot_sequence = gauge(
            "lambda_ml_speed_snapshot_sequence", "Sequence number of the speed snapshot in use"
        )
        self.snapshot_age = gauge(
            "lambda_ml_speed_snapshot_age_seconds", "Age of the speed snapshot in use"
        )

    def publish(self, models: LoadedModels) -> None:
        version = models.champion.info.version if models.champion else ""
        self.batch_version.set(int(version) if version.isdigit() else 0)
        snapshot = models.snapshot
        self.snapshot_sequence.set(snapshot.sequence if snapshot else 0)
        self.snapshot_age.set(snapshot.age_s if snapshot else -1)


@cache
def process_gauges() -> ModelGauges:
    """The gauges of this process: the default registry refuses a second gauge of a name."""
    return ModelGauges()
