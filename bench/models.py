"""Every shipped model on the same stream: `lambda-ml evaluate` once per configuration.

The speed alternatives run beside the default batch model, and the batch alternatives beside
the default speed model, on the evaluation's default replay (CLINC150, new-domain drift, 40,000
events, 5% probes), so each row differs from the defaults' in one model only. Each run's report
goes to docs/models/<name>/ (the same JSON keys as `lambda-ml evaluate`); the comparison table
to docs/models/README.md and bench/results/models.json. Accuracy only: the runs are not timed.
"""

import json
from dataclasses import asdict
from pathlib import Path

from bench import save_figures
from models.model_spec import ModelSpec
from pipelines.evaluation import report as evaluation_report
from pipelines.evaluation.evaluate import EvaluationPlan, run_evaluation
from pipelines.produce import ReplayOptions
from pipelines.provenance import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs" / "models"
LIMIT = 40_000
DEFAULT_SPEED = "models.speed_model:build_speed_model"
DEFAULT_BATCH = "models.batch.recipe:build_batch_model"
CONFIGURATIONS = {
    "defaults": (DEFAULT_SPEED, DEFAULT_BATCH),
    "river_naive_bayes": ("models.alternatives:river_naive_bayes", DEFAULT_BATCH),
    "river_softmax": ("models.alternatives:river_softmax", DEFAULT_BATCH),
    "tfidf_logistic": (DEFAULT_SPEED, "models.alternatives:tfidf_logistic"),
    "linear_svc": (DEFAULT_SPEED, "models.alternatives:linear_svc"),
}
DEFAULT_BATCH_MODEL = (
    "The default batch model (`models.batch.recipe:build_batch_model`) is TF-IDF of hashed word "
    "1-2 and `char_wb` 2-4 grams, counted on two processes, feeding a linear SVM (liblinear, its "
    "one-vs-rest problems in two groups of classes on two threads, at most 10 passes over the "
    "rows) and naive Bayes, each calibrated by a temperature fitted on one held-out slice of at "
    "most 10,000 rows, then averaged. A text repeated n times weighs 1 + log(n) (relative to the "
    "rarest): chosen by first-seen accuracy against raw counts, square roots and no weights. "
    "Its fit grows linearly with the distinct texts; `lambda-ml bench retrain` measures it "
    "(bench/results/retrain.json). The alternatives below are fitted as scikit-learn builds them, "
    "on each text's raw count."
)
# (column, summary key): novel texts first (no model trained on them), then probes.
COLUMNS = [
    ("after drift, novel: speed", "after_drift_speed_novel_accuracy"),
    ("batch", "after_drift_batch_novel_accuracy"),
    ("blend", "after_drift_blend_novel_accuracy"),
    ("after retrain, novel: speed", "after_retrain_speed_novel_accuracy"),
    ("batch", "after_retrain_batch_novel_accuracy"),
    ("blend", "after_retrain_blend_novel_accuracy"),
    ("after retrain, probes: blend", "after_retrain_blend_probe_accuracy"),
    ("first-seen share", "first_seen_share"),
]


def plan_for(speed: str, batch: str) -> EvaluationPlan:
    """`lambda-ml evaluate`'s defaults, with these two models."""
    return EvaluationPlan(
        replay=ReplayOptions(scenario="new-domain", limit=LIMIT, drift_fraction=0.5, seed=42),
        retrain_at=(int(0.125 * LIMIT), int(0.625 * LIMIT)),
        window=LIMIT // 40,
        probe_fraction=0.05,
        speed_model=ModelSpec(speed),
        batch_model=ModelSpec(batch),
    )


def main(names: tuple[str, ...] = tuple(CONFIGURATIONS)) -> dict:
    rows: dict[str, dict] = {}
    for name in names:
        speed, batch = CONFIGURATIONS[name]
        plan = plan_for(speed, batch)
        result = run_evaluation(plan)
        command = f"lambda-ml evaluate --speed-model {speed} --batch-model {batch}"
        settings = json.loads(json.dumps({"command": command, "plan": asdict(plan)}, default=str))
        evaluation_report.write(result, DOCS / name, settings)
        summary = result.summary
        rows[name] = {"speed_model": speed, "batch_model": batch}
        rows[name] |= {key: summary[key] for _, key in COLUMNS}
        print(f"{name}: {rows[name]}", flush=True)
    stamped = save_figures("models", {"runs": rows}, {"limit": LIMIT, "names": list(names)})
    _write_table(rows, stamped["provenance"], DOCS / "README.md")
    return stamped


def _write_table(rows: dict[str, dict], provenance: dict, path: Path) -> None:
    def percent(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    header = "| configuration | speed model | batch model | " + " | ".join(c for c, _ in COLUMNS)
    lines = [
        "# Every shipped model on the same stream",
        "",
        "Written by `lambda-ml bench models` (bench/models.py) at commit "
        f"{provenance.get('commit')} on {provenance.get('date')}; each row's full report is in "
        "its folder here. Accuracy in %, on novel texts (no model had trained on them) in the "
        "phase after the drift and after the second retrain, and on probes (texts that enter "
        "the stream once and that no model ever learns); CLINC150, new-domain drift, 40,000 "
        "events.",
        "",
        DEFAULT_BATCH_MODEL,
        "",
        header + " |",
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    for name, row in rows.items():
        cells = [
            percent(row[key]) if key != "first_seen_share" else f"{row[key]:.3f}"
            for _, key in COLUMNS
        ]
        speed, batch = row["speed_model"].split(":")[-1], row["batch_model"].split(":")[-1]
        lines.append(f"| {name} | {speed} | {batch} | " + " | ".join(cells) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
