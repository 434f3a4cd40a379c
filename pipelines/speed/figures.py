"""What the speed job shows on its `/metrics`: the figures of the layer's last report
(`SpeedReport.latest`, every `SPEED_METRICS_EVERY_S`, the same figures MLflow gets), named and
labelled for Prometheus (`common.job_metrics.FiguresCollector` reads them at each scrape)."""

import re
from collections.abc import Iterator, Mapping

from common.job_metrics import Family, FiguresCollector, Sample
from pipelines.speed.layer import SpeedLayer

SPEED = "lambda_ml_speed"
SPEED_FAMILIES = (
    Family(
        f"{SPEED}_events_learnt",
        "Labelled events the owned partitions' models learnt since their base",
    ),
    Family(
        f"{SPEED}_unlabelled_seen", "Unlabelled events the owned partitions saw since their base"
    ),
    Family(f"{SPEED}_events_per_second", "Events learnt per second between the last two reports"),
    Family(f"{SPEED}_lag_events", "Events on the topic not yet read", labels=("partition",)),
    Family(f"{SPEED}_snapshot_age_seconds", "Seconds since the last durable snapshot"),
    Family(
        f"{SPEED}_freshness_seconds",
        "Event timestamp to durable snapshot, over the latest SPEED_FRESHNESS_WINDOW events",
        labels=("quantile",),
    ),
    Family(f"{SPEED}_drift_detections", "Rises of the champion's error since it was taken up"),
    Family(f"{SPEED}_blend_weight", "The blender's weight of each layer", labels=("layer",)),
    Family(
        f"{SPEED}_blend_batch_weight_on_batch_trained_texts",
        "The blender's batch weight on texts the champion trained on",
    ),
    Family(
        f"{SPEED}_accuracy",
        "Prequential accuracy of each view, on all, first-seen, repeated and novel texts",
        labels=("view", "texts"),
    ),
    Family(f"{SPEED}_window_accuracy", "Accuracy over the last window", labels=("view",)),
    Family(f"{SPEED}_log_loss", "Prequential log loss", labels=("view",)),
    Family(
        f"{SPEED}_in_scope_accuracy",
        "Novel texts, scoped champion: in-scope queries judged in scope and answered right",
        labels=("view",),
    ),
    Family(
        f"{SPEED}_oos_recall",
        "Novel texts, scoped champion: out-of-scope queries judged out of scope",
        labels=("view",),
    ),
    Family(f"{SPEED}_first_seen_share", "Share of first-seen texts", labels=("view",)),
    Family(f"{SPEED}_partitions_owned", "Partitions this worker of the consumer group owns"),
    Family(
        f"{SPEED}_served_accuracy",
        "Accuracy of what the service answered, over the answered queries whose label came",
    ),
    Family(f"{SPEED}_served_labelled", "Answered queries whose label came"),
    Family(f"{SPEED}_labels_joined", "Labels of the feedback topic joined to their query, learnt"),
    Family(
        f"{SPEED}_labels_dead_lettered",
        "Labels the join dead-lettered: past the window, without a query, or a second label",
    ),
    Family(f"{SPEED}_queries_awaiting_label", "Queries of the join window awaiting their label"),
    Family(f"{SPEED}_labels_awaiting_query", "Labels read before their query, waiting for it"),
)
_VIEW = re.compile(
    r"^(?P<view>speed|batch|blend)_(?:(?P<texts>first_seen|repeated|novel)_)?"
    r"(?P<figure>accuracy|window_accuracy|log_loss|first_seen_share|in_scope_accuracy|oos_recall)$"
)
_PARTITION_LAG = re.compile(r"^lag_p(?P<partition>\d+)$")
_FRESHNESS = re.compile(r"^freshness_p(?P<percentile>\d+)_s$")
_PLAIN = {
    "events_learnt": f"{SPEED}_events_learnt",
    "unlabelled_seen": f"{SPEED}_unlabelled_seen",
    "events_per_s": f"{SPEED}_events_per_second",
    "snapshot_age_s": f"{SPEED}_snapshot_age_seconds",
    "drift_detections": f"{SPEED}_drift_detections",
    "batch_weight_on_batch_trained_texts": f"{SPEED}_blend_batch_weight_on_batch_trained_texts",
    "partitions_owned": f"{SPEED}_partitions_owned",
    **{
        key: f"{SPEED}_{key}"
        for key in (
            "served_accuracy",
            "served_labelled",
            "labels_joined",
            "labels_dead_lettered",
            "queries_awaiting_label",
            "labels_awaiting_query",
        )
    },
}


def speed_samples(report: Mapping[str, float]) -> Iterator[Sample]:
    """A speed report's figures as samples; a figure this does not know is a KeyError, so a
    new one cannot go unnamed. The total `lag` is left out: it is the partitions' sum."""
    for key, value in report.items():
        if key == "lag":
            continue
        if key in _PLAIN:
            yield _PLAIN[key], (), value
        elif key in ("batch_weight", "speed_weight"):
            yield f"{SPEED}_blend_weight", (key.removesuffix("_weight"),), value
        elif found := _PARTITION_LAG.match(key):
            yield f"{SPEED}_lag_events", (found["partition"],), value
        elif found := _FRESHNESS.match(key):
            yield f"{SPEED}_freshness_seconds", (str(int(found["percentile"]) / 100),), value
        elif found := _VIEW.match(key):
            figure, view, texts = found["figure"], found["view"], found["texts"]
            if figure == "accuracy":
                yield f"{SPEED}_accuracy", (view, texts or "all"), value
            else:
                yield f"{SPEED}_{figure}", (view,), value
        else:
            raise KeyError(f"the speed report's figure {key!r} has no metric")


def speed_collector(layer: SpeedLayer) -> FiguresCollector:
    """The layer's last report, read at each scrape."""
    return FiguresCollector(SPEED_FAMILIES, lambda: speed_samples(layer.reporter.latest))
