"""What each long-running job shows on its `/metrics`: the figures its loop already keeps, named
and labelled for Prometheus (`common.job_metrics.FiguresCollector` reads them at each scrape).

The speed layer's come from its last report (`SpeedReport.latest`, every `SPEED_METRICS_EVERY_S`,
the same figures MLflow gets), the archiver's from its counters, the scheduler's from its
history of runs.
"""

import re
from collections.abc import Iterator, Mapping

from common.job_metrics import Family, FiguresCollector, Sample
from pipelines.batch.schedule import OUTCOMES, Scheduler
from pipelines.speed.layer import GroupSpeedLayer, SpeedLayer
from streams.archiver import Archiver

SPEED = "lambda_ml_speed"
SPEED_FAMILIES = (
    Family(f"{SPEED}_events_learnt", "Labelled events learnt since the start or last re-base"),
    Family(f"{SPEED}_unlabelled_seen", "Unlabelled events seen since the start or last re-base"),
    Family(f"{SPEED}_events_per_second", "Events learnt per second between the last two reports"),
    Family(f"{SPEED}_lag_events", "Events on the topic not yet read", labels=("partition",)),
    Family(f"{SPEED}_snapshot_age_seconds", "Seconds since the last durable snapshot"),
    Family(
        f"{SPEED}_freshness_seconds",
        "Event timestamp to durable snapshot, over the latest SPEED_FRESHNESS_WINDOW events",
        labels=("quantile",),
    ),
    Family(f"{SPEED}_drift_detections", "Rises of the champion's error since the last re-base"),
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
    Family(f"{SPEED}_first_seen_share", "Share of first-seen texts", labels=("view",)),
    Family(f"{SPEED}_partitions_owned", "Partitions this worker of the group owns"),
)
_VIEW = re.compile(
    r"^(?P<view>speed|batch|blend)_(?:(?P<texts>first_seen|repeated|novel)_)?"
    r"(?P<figure>accuracy|window_accuracy|log_loss|first_seen_share)$"
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


def speed_collector(layer: SpeedLayer | GroupSpeedLayer) -> FiguresCollector:
    return FiguresCollector(SPEED_FAMILIES, lambda: speed_samples(layer.reporter.latest))


ARCHIVE = "lambda_ml_archive"
ARCHIVE_FAMILIES = (
    Family(f"{ARCHIVE}_events", "Events written to the master dataset", "counter"),
    Family(f"{ARCHIVE}_files_written", "Parquet files written", "counter"),
    Family(f"{ARCHIVE}_bytes_written", "Bytes of Parquet written", "counter"),
    Family(f"{ARCHIVE}_failed_flushes", "Flush attempts that failed (retried)", "counter"),
    Family(f"{ARCHIVE}_dead_letters", "Invalid messages sent to the dead-letter topic", "counter"),
    Family(f"{ARCHIVE}_events_per_second", "Events archived per second by the last flush"),
    Family(
        f"{ARCHIVE}_lag_events",
        "Events on the topic not yet read, as of the last flush",
        labels=("partition",),
    ),
)


def archive_samples(archiver: Archiver) -> Iterator[Sample]:
    yield f"{ARCHIVE}_events", (), archiver.archived
    yield f"{ARCHIVE}_files_written", (), archiver.files_written
    yield f"{ARCHIVE}_bytes_written", (), archiver.bytes_written
    yield f"{ARCHIVE}_failed_flushes", (), archiver.failed_flushes
    yield f"{ARCHIVE}_dead_letters", (), archiver.reader.dead_lettered
    yield f"{ARCHIVE}_events_per_second", (), archiver.events_per_s
    for partition, behind in sorted((archiver.lag or {}).items()):
        yield f"{ARCHIVE}_lag_events", (str(partition),), behind


def archive_collector(archiver: Archiver) -> FiguresCollector:
    return FiguresCollector(ARCHIVE_FAMILIES, lambda: archive_samples(archiver))


SCHEDULE = "lambda_ml_schedule"
SCHEDULE_FAMILIES = (
    Family(f"{SCHEDULE}_runs", "Retrains run, by outcome", "counter", ("outcome",)),
    Family(f"{SCHEDULE}_last_run_start_timestamp_seconds", "When the last retrain started"),
    Family(f"{SCHEDULE}_last_run_duration_seconds", "How long the last retrain took"),
    Family(
        f"{SCHEDULE}_last_run_outcome",
        "1 for the last retrain's outcome, 0 for the others",
        labels=("outcome",),
    ),
    Family(f"{SCHEDULE}_next_run_timestamp_seconds", "When the next retrain is due by the cadence"),
)


def schedule_samples(scheduler: Scheduler) -> Iterator[Sample]:
    history = list(scheduler.history)
    for outcome in OUTCOMES:
        runs = sum(record.outcome == outcome for record in history)
        yield f"{SCHEDULE}_runs", (outcome,), runs
    if history:
        last = history[-1]
        yield f"{SCHEDULE}_last_run_start_timestamp_seconds", (), last.started_at
        yield f"{SCHEDULE}_last_run_duration_seconds", (), last.seconds
        for outcome in OUTCOMES:
            yield f"{SCHEDULE}_last_run_outcome", (outcome,), float(last.outcome == outcome)
    yield f"{SCHEDULE}_next_run_timestamp_seconds", (), scheduler.next_at


def schedule_collector(scheduler: Scheduler) -> FiguresCollector:
    return FiguresCollector(SCHEDULE_FAMILIES, lambda: schedule_samples(scheduler))
