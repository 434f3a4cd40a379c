"""The service's own Prometheus metrics, exposed on BentoML's `/metrics` with BentoML's: the
models in use, which source answered, how confidently and how often out of scope, how many
texts each coalesced model call scored, the reloads that failed, and the query log's events
(journaled, sent to Kafka, waiting, dropped).

BentoML runs `prometheus_client` in multiprocess mode and sets its folder when a worker starts,
so the metrics are made when the service is, never at import. With several workers, each
reports its own models (gauges in `liveall` mode: one series per live worker, labelled `pid`);
counters and histograms are summed over the workers.
"""

from collections.abc import Sequence
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from serving.model_state import LoadedModels
from serving.schemas import Prediction

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


BATCH_VERSION_GAUGE = "lambda_ml_batch_model_version"


class ServiceMetrics:
    """Batch champion version, speed snapshot sequence and age (refreshed at every reload round,
    `SERVING_POLL_S`; a missing model reads 0 for version and sequence, -1 for age), answers by
    source, confidence and scope, coalesced call sizes, failed reloads by model, and the query
    log's events: journaled and sent by topic, waiting in the journal, dropped."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, registry=registry, multiprocess_mode="liveall")

        self.batch_version = gauge(
            BATCH_VERSION_GAUGE,
            "Registry version of the batch champion in use (0: none, or not a number)",
        )
        self.snapshot_sequence = gauge(
            "lambda_ml_speed_snapshot_sequence", "Sequence number of the speed snapshot in use"
        )
        self.snapshot_age = gauge(
            "lambda_ml_speed_snapshot_age_seconds", "Age of the speed snapshot in use"
        )
        self.answers = Counter(
            "lambda_ml_answers",
            "Texts answered, by the source that answered (blend, batch or speed)",
            ["source"],
            registry=registry,
        )
        self.out_of_scope = Counter(
            "lambda_ml_out_of_scope_answers",
            "Texts judged out of scope (answered with the out-of-scope label), by source",
            ["source"],
            registry=registry,
        )
        self.confidence = Histogram(
            "lambda_ml_answer_confidence",
            "Confidence of each answer's top intent",
            ["source"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "lambda_ml_coalesced_batch_size",
            "Texts scored by one model call (concurrent requests coalesced)",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.reload_failures = Counter(
            "lambda_ml_reload_failures",
            "Model reloads that failed (store unreachable, load or probe failed), by model",
            ["model"],
            registry=registry,
        )
        self.query_log_journaled = Counter(
            "lambda_ml_serving_query_log_journaled",
            "Query log events (answered queries, labels) written to the journal, by topic",
            ["topic"],
            registry=registry,
        )
        self.query_log_sent = Counter(
            "lambda_ml_serving_query_log_sent",
            "Query log events Kafka acknowledged, by topic",
            ["topic"],
            registry=registry,
        )
        self.query_log_dropped = Counter(
            "lambda_ml_serving_query_log_dropped",
            "Query log events dropped before Kafka had them (journal over its bound or failing)",
            registry=registry,
        )
        self.query_log_backlog = Gauge(
            "lambda_ml_serving_query_log_backlog",
            "Query log events in the journal that Kafka has not acknowledged yet",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def publish(self, models: LoadedModels) -> None:
        version = models.champion.info.version if models.champion else ""
        self.batch_version.set(int(version) if version.isdigit() else 0)
        snapshot = models.snapshot
        self.snapshot_sequence.set(snapshot.sequence if snapshot else 0)
        self.snapshot_age.set(snapshot.age_s if snapshot else -1)

    def answered(self, predictions: Sequence[Prediction]) -> None:
        """Count one model call's answers (a call has one source for all its texts)."""
        self.batch_size.observe(len(predictions))
        for prediction in predictions:
            self.answers.labels(prediction.source).inc()
            if not prediction.in_scope:
                self.out_of_scope.labels(prediction.source).inc()
            self.confidence.labels(prediction.source).observe(prediction.confidence)

    def reload_failed(self, model: str) -> None:
        self.reload_failures.labels(model).inc()


@cache
def process_metrics() -> ServiceMetrics:
    """The metrics of this process: the default registry refuses a second metric of a name."""
    return ServiceMetrics()
