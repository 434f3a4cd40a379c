"""What the retrain scheduler shows on its `/metrics`: the figures of its history of runs, named
and labelled for Prometheus (`common.job_metrics.FiguresCollector` reads them at each scrape).
The speed job's are `pipelines.speed.figures`, the archiver's beside its job in
`pipelines.jobs`.
"""

from collections.abc import Iterator

from common.job_metrics import Family, FiguresCollector, Sample
from pipelines.batch.schedule import OUTCOMES, Scheduler

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
