"""What `lambda-ml evaluate` leaves behind: JSON, a markdown table, a plot, an MLflow run."""

import json
from pathlib import Path

from models.registry import fluent_mlflow
from pipelines.config import MlflowSettings
from pipelines.evaluate import EvaluationResult

JSON_NAME, TABLE_NAME, PLOT_NAME = "evaluation.json", "evaluation.md", "evaluation.png"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table(result: EvaluationResult) -> str:
    """Accuracy per window for the three views, with the phase and batch version of each."""
    lines = [
        "| events | phase | batch version | batch % | speed % | blend % |",
        "|---|---|---|---|---|---|",
    ]
    for w in result.windows:
        accuracies = (w.batch_accuracy, w.speed_accuracy, w.blend_accuracy)
        cells = " | ".join(_percent(a) for a in accuracies)
        lines.append(f"| {w.start}-{w.end} | {w.phase} | {w.batch_version or '-'} | {cells} |")
    s = result.summary
    lines += [
        "",
        f"Blend gain over batch-only after the drift, before the next retrain: "
        f"**{s['post_drift_gain_vs_batch_points']:+.1f} points**.",
        f"Worst window, blend below the better of batch and speed: "
        f"**{s['worst_window_gap_vs_best_points']:.1f} points**.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: EvaluationResult, path: Path) -> None:
    """Accuracy over events for each view, the drift point and the retrains marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    middle = [(w.start + w.end) / 2 for w in result.windows]
    figure, axes = plt.subplots(figsize=(10, 4.8))
    batch = [
        (m, w.batch_accuracy)
        for m, w in zip(middle, result.windows, strict=True)
        if w.batch_accuracy is not None
    ]
    axes.plot([m for m, _ in batch], [a for _, a in batch], label="batch only", color="tab:blue")
    axes.plot(
        middle, [w.speed_accuracy for w in result.windows], label="speed only", color="tab:orange"
    )
    axes.plot(
        middle,
        [w.blend_accuracy for w in result.windows],
        label="blend",
        color="tab:green",
        linewidth=2.2,
    )
    axes.axvline(
        result.drift_at, color="tab:red", linestyle="--", label="drift: new intents appear"
    )
    for index, point in enumerate(result.retrain_at):
        axes.axvline(
            point, color="grey", linestyle=":", label="batch retrain" if index == 0 else None
        )
    axes.set_xlabel("events")
    axes.set_ylabel(
        f"prequential accuracy per window of {result.windows[0].end - result.windows[0].start}"
    )
    axes.set_ylim(0, 1)
    axes.set_title(f"{result.scenario['name']}: batch only, speed only and the blend")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write(result: EvaluationResult, folder: Path) -> list[Path]:
    """Write the JSON, the table and the plot into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / JSON_NAME, folder / TABLE_NAME, folder / PLOT_NAME]
    paths[0].write_text(json.dumps(result.as_json(), indent=2) + "\n")
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
        mlflow.log_metrics({k: float(v) for k, v in result.summary.items()})
        for index, window in enumerate(result.windows):
            step = window.end
            metrics = {
                "window_speed_accuracy": window.speed_accuracy,
                "window_blend_accuracy": window.blend_accuracy,
            }
            if window.batch_accuracy is not None:
                metrics["window_batch_accuracy"] = window.batch_accuracy
            mlflow.log_metrics(metrics, step=step or index)
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        return run.info.run_id
