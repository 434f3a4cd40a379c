"""What `lambda-ml evaluate` leaves behind: JSON, a markdown table, a plot, an MLflow run."""

import json
import math
from pathlib import Path

from common.settings import MlflowSettings
from models.registry import fluent_mlflow
from pipelines.evaluation.evaluate import VIEWS, EvaluationResult
from pipelines.provenance import provenance

JSON_NAME, TABLE_NAME, PLOT_NAME = "evaluation.json", "evaluation.md", "evaluation.png"


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def table(result: EvaluationResult) -> str:
    """Accuracy per window for the three views, on novel texts (no model trained on them)
    first and on all texts after, with the novel and synthetic shares of each window."""
    lines = [
        "| events | phase | batch version | novel share | synthetic share "
        "| novel: batch % | speed % | blend % | all: batch % | speed % | blend % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in result.windows:
        novel = " | ".join(_percent(w.accuracy(view, "novel")) for view in VIEWS)
        every = " | ".join(_percent(w.accuracy(view)) for view in VIEWS)
        shares = [w.counts["blend"]["novel"][0] / w.labelled if w.labelled else None]
        shares.append(w.synthetic / w.labelled if w.labelled else None)
        share_cells = " | ".join(_percent(share) for share in shares)
        lines.append(
            f"| {w.start}-{w.end} | {w.phase} | {w.batch_version or '-'} | {share_cells} "
            f"| {novel} | {every} |"
        )
    s = result.summary
    lines += [
        "",
        f"On novel texts ({100 * s['first_seen_share']:.1f}% of labelled events; "
        f"{100 * s['synthetic_share']:.1f}% of events are synthetic variants): blend gain over "
        f"batch-only after the drift, before the next retrain, "
        f"**{s['first_seen_post_drift_gain_vs_batch_points']:+.1f} points**; worst window of "
        f"the blend below the better of batch and speed "
        f"**{s['first_seen_worst_window_gap_vs_best_points']:.1f} points** (windows with at "
        f"least {s['min_novel_events_per_window']} novel events).",
        f"On all texts, repeats included: gain {s['post_drift_gain_vs_batch_points']:+.1f} "
        f"points, worst window {s['worst_window_gap_vs_best_points']:.1f} points.",
        _scope_line(s),
    ]
    return "\n".join(lines) + "\n"


def _scope_line(s: dict) -> str:
    """In-scope accuracy and out-of-scope recall of each view on novel texts, once a batch
    model answers."""
    views = "; ".join(
        f"{view} {_percent(s[f'first_seen_{view}_in_scope_accuracy'])}% / "
        f"{_percent(s[f'first_seen_{view}_oos_recall'])}%"
        for view in VIEWS
    )
    return (
        f"Out of scope, on novel texts once a batch model answers "
        f"({s['first_seen_in_scope_events']} in scope, {s['first_seen_oos_events']} out of "
        f"scope), in-scope accuracy / out-of-scope recall: {views}."
    )


def plot(result: EvaluationResult, path: Path) -> None:
    """Accuracy over events for each view, on novel texts (top) and on all texts (bottom),
    the drift point and the retrains marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    middle = [(w.start + w.end) / 2 for w in result.windows]
    figure, panels = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    colours = {"batch": "tab:blue", "speed": "tab:orange", "blend": "tab:green"}
    labels = {"batch": "batch only", "speed": "speed only", "blend": "blend"}
    titles = {
        "novel": "texts no model has trained on (the headline)",
        "all": "all texts, repeats included",
    }
    for axes, group in zip(panels, ("novel", "all"), strict=True):
        for view in VIEWS:
            points = [
                (m, w.accuracy(view, group))
                for m, w in zip(middle, result.windows, strict=True)
                if w.accuracy(view, group) is not None
            ]
            axes.plot(
                [m for m, _ in points],
                [a for _, a in points],
                label=labels[view],
                color=colours[view],
                linewidth=2.2 if view == "blend" else 1.4,
            )
        axes.axvline(result.drift_at, color="tab:red", linestyle="--", label="drift")
        for index, point in enumerate(result.retrain_at):
            axes.axvline(
                point, color="grey", linestyle=":", label="batch retrain" if index == 0 else None
            )
        axes.set_ylim(0, 1)
        axes.set_ylabel("prequential accuracy")
        axes.set_title(f"{result.scenario['name']}: {titles[group]}")
        axes.grid(alpha=0.3)
    panels[0].legend(loc="lower right")
    panels[1].set_xlabel(f"events (windows of {result.scenario['window']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write(result: EvaluationResult, folder: Path, settings: dict) -> list[Path]:
    """Write the JSON (stamped with its provenance and the `settings` it ran with), the table
    and the plot into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / JSON_NAME, folder / TABLE_NAME, folder / PLOT_NAME]
    stamped = result.as_json() | {"provenance": provenance(settings)}
    paths[0].write_text(json.dumps(stamped, indent=2) + "\n")
    paths[1].write_text(table(result))
    plot(result, paths[2])
    return paths


def log_to_mlflow(result: EvaluationResult, paths: list[Path], settings: MlflowSettings) -> str:
    """One MLflow run holding the summary figures and the three files; returns its id."""
    import mlflow

    with fluent_mlflow(settings.uri):
        mlflow.set_experiment(settings.experiment)
        return _log_run(result, paths)


def _log_run(result: EvaluationResult, paths: list[Path]) -> str:
    import mlflow

    with mlflow.start_run(run_name="evaluation") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in result.scenario.items()})
        mlflow.log_metrics(
            {k: float(v) for k, v in result.summary.items() if not math.isnan(float(v))}
        )
        for index, window in enumerate(result.windows):
            metrics = {
                f"window_{view}_{group}_accuracy": accuracy
                for view in VIEWS
                for group in ("all", "novel")
                if (accuracy := window.accuracy(view, group)) is not None
            }
            mlflow.log_metrics(metrics, step=window.end or index)
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        return run.info.run_id
