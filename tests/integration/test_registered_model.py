"""The registered champion loads where this repository is not.

After a retrain registers a champion, a fresh virtual environment gets only the requirements
MLflow recorded with the model, and runs in a temporary folder with a clean environment (no
PYTHONPATH, not the repository's venv): there `mlflow.pyfunc.load_model` predicts, for a plain
list of texts as for a DataFrame or a dict of columns, and `mlflow models serve` answers, with
one probability per intent. The project's `models` package comes from the model's own
`code_paths` copy, which is what this proves.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow.pyfunc
import pytest

from common.processes import ChildProcess, free_port
from common.settings import BatchSettings, MlflowSettings
from models.registry import CHAMPION, fluent_mlflow
from pipelines.batch.retrain import RetrainResult, retrain
from tests.integration.test_retrain import archive, clinc_rows, settings_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["set an alarm for 7 am", "what is my bank balance", "book a table for two"]
# Variables the fresh environment keeps: where things are, and how pip reaches the registry.
PASSED_ON = ("HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
PASSED_ON_PREFIXES = ("PIP_",)
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


@dataclass(frozen=True)
class Registered:
    tracking: MlflowSettings
    result: RetrainResult
    intents: list[str]

    @property
    def uri(self) -> str:
        return f"models:/{self.tracking.registered_model}@{CHAMPION}"


@dataclass(frozen=True)
class FreshVenv:
    """A virtual environment with only the model's recorded requirements, and the clean
    environment and folder (not the repository) its commands run with."""

    path: Path
    workdir: Path
    env: dict[str, str]
    requirements: list[str]
    seconds: float

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory) -> Registered:
    """A champion registered by a retrain of the default model."""
    root = tmp_path_factory.mktemp("master")
    rows = clinc_rows()
    archive(root, rows)
    tracking = settings_for(mlflow_server)
    result = retrain(BatchSettings(master_dir=root), tracking, "queries")
    assert result.promoted, result.reason
    return Registered(tracking, result, sorted({e.intent for e in rows}))


def clean_env(venv: Path, tracking_uri: str) -> dict[str, str]:
    """The fresh venv's commands first on PATH, the tracking server, and nothing of this
    process's Python setup (PYTHONPATH, VIRTUAL_ENV, MLflow's settings)."""
    env = {name: os.environ[name] for name in PASSED_ON + PROXIES if name in os.environ}
    env |= {k: v for k, v in os.environ.items() if k.startswith(PASSED_ON_PREFIXES)}
    env |= {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(venv),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONNOUSERSITE": "1",
    }
    return env


@pytest.fixture(scope="module")
def fresh_venv(registered, mlflow_server, tmp_path_factory) -> FreshVenv:
    """`python -m venv`, then `pip install -r` the requirements.txt MLflow recorded (pip's
    cache of this machine is used), once for this module's tests. Without compiling to
    bytecode, which takes half the install's time and says nothing of the requirements."""
    started = time.perf_counter()
    with fluent_mlflow(mlflow_server):
        recorded = Path(mlflow.pyfunc.get_model_dependencies(registered.uri))
    folder = tmp_path_factory.mktemp("fresh")
    venv, workdir = folder / "venv", folder / "work"
    workdir.mkdir()
    requirements = workdir / "requirements.txt"
    requirements.write_text(recorded.read_text())
    env = clean_env(venv, mlflow_server)
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", str(venv)], env, workdir, timeout_s=120)
    python = str(venv / "bin" / "python")
    run(
        [python, "-m", "pip", "install", "--quiet", "--no-compile", "-r", str(requirements)],
        env,
        workdir,
        timeout_s=900,
    )
    lines = [line.strip() for line in requirements.read_text().splitlines() if line.strip()]
    seconds = time.perf_counter() - started
    print(f"fresh venv with the model's {len(lines)} requirements in {seconds:.0f}s: {lines}")
    return FreshVenv(venv, workdir, env, lines, seconds)


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float) -> str:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, f"{argv[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_recorded_requirements_are_derived_and_pinned(fresh_venv):
    names = [line.split("==")[0] for line in fresh_venv.requirements]
    assert all("==" in line for line in fresh_venv.requirements), fresh_venv.requirements
    assert {"mlflow", "cloudpickle", "scikit-learn", "numpy", "scipy"} <= set(names)
    assert "lambda-ml" not in names and "pyarrow" not in names


LOAD_AND_PREDICT = textwrap.dedent(
    """
    import json, sys
    try:
        import models
        seen = models.__file__
    except ImportError:
        seen = None  # as it should be: the repository is not on this path
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(sys.argv[1])
    texts = json.loads(sys.argv[2])
    answer = model.predict(pd.DataFrame({"text": texts}))
    others = {"list": model.predict(texts), "dict": model.predict({"text": texts})}
    import models
    print(json.dumps({
        "repository_seen": seen,
        "models_from": models.__file__,
        "columns": [str(c) for c in answer.columns],
        "row_sums": answer.sum(axis=1).tolist(),
        "rows": len(answer),
        "top": answer.idxmax(axis=1).tolist(),
        "same_for": sorted(shape for shape, other in others.items() if other.equals(answer)),
    }))
    """
)


def test_pyfunc_load_model_predicts_in_a_fresh_venv(fresh_venv, registered):
    script = fresh_venv.workdir / "load_and_predict.py"
    script.write_text(LOAD_AND_PREDICT)
    out = run(
        [fresh_venv.bin("python"), "-I", str(script), registered.uri, json.dumps(TEXTS)],
        fresh_venv.env,
        fresh_venv.workdir,
        timeout_s=300,
    )
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["repository_seen"] is None
    assert not answer["models_from"].startswith(str(ROOT)), answer["models_from"]
    assert "/code/models/" in answer["models_from"]  # the model's code_paths copy
    assert answer["columns"] == registered.intents
    assert answer["rows"] == len(TEXTS)
    assert all(abs(total - 1.0) < 1e-6 for total in answer["row_sums"]), answer["row_sums"]
    assert answer["top"][0] == "alarm"
    assert answer["same_for"] == ["dict", "list"]  # a plain list of texts passes the schema


def test_mlflow_models_serve_answers_in_a_fresh_venv(fresh_venv, registered):
    port = free_port()
    server = ChildProcess(
        "mlflow-models-serve",
        [
            fresh_venv.bin("mlflow"),
            "models",
            "serve",
            "-m",
            registered.uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env=fresh_venv.env,
        cwd=fresh_venv.workdir,
        log_path=fresh_venv.workdir / "serve.log",
        port=port,
        ready_path="/ping",
    )
    with server:
        server.wait_ready(timeout_s=180)
        with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as client:
            split = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}
            bodies = [
                split,
                {"dataframe_records": [{"text": text} for text in TEXTS]},
                {"inputs": TEXTS},  # a plain list of texts
                {"instances": TEXTS},
            ]
            answers = [client.post("/invocations", json=body) for body in bodies]
    for response in answers:
        assert response.status_code == 200, (response.text, server.log_tail())
    split_rows = answers[0].json()["predictions"]
    assert len(split_rows) == len(TEXTS)
    assert all(answer.json()["predictions"] == split_rows for answer in answers[1:])
    for row in split_rows:
        assert sorted(row) == registered.intents
        assert abs(sum(row.values()) - 1.0) < 1e-6
    assert max(split_rows[0], key=split_rows[0].get) == "alarm"
