"""Pip requirements derived from what a model is made of: pinned, sorted, without the project's
own packages, and following the project's imports only where importing runs them; and the
pyfunc model that records them."""

import doctest
import re
import textwrap
from importlib.metadata import version
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import FunctionTransformer

import models.requirements
from common.processes import free_port
from models.alternatives import linear_svc, tfidf_logistic
from models.batch.recipe import build_batch_model, prepare_batch_model
from models.pyfunc_model import IntentProbabilities, load_estimator, log_intent_model
from models.registry import fluent_mlflow
from models.requirements import (
    RequirementsError,
    imported_modules,
    model_requirements,
    package_folders,
)

TEXTS = ["book a flight", "flight to paris", "play a song", "play some music"]
INTENTS = ["travel", "travel", "music", "music"]
PYFUNC = ["models.pyfunc_model"]


def names(requirements: list[str]) -> list[str]:
    return [line.split("==")[0] for line in requirements]


def test_the_default_model_requires_what_it_is_made_of():
    model = build_batch_model(min_df=1).fit(TEXTS, INTENTS)
    requirements = model_requirements(model, modules=PYFUNC)
    assert {"scikit-learn", "numpy", "scipy", "joblib", "mlflow", "cloudpickle", "pandas"} <= set(
        names(requirements)
    )
    assert requirements == sorted(requirements, key=str.lower)
    for line in requirements:
        name, pinned = line.split("==")
        assert pinned == version(name), line
    # pyarrow only counts Parquet batches (in pipelines/); the project itself is shipped.
    assert not {"pyarrow", "lambda-ml", "river", "models"} & set(names(requirements))


def test_an_alternative_pipeline_requires_only_what_it_imports():
    """tfidf_logistic's module imports River, but the pipeline holds scikit-learn objects."""
    pipeline = tfidf_logistic().fit(TEXTS, INTENTS)
    assert names(model_requirements(pipeline, always=())) == ["numpy", "scikit-learn"]
    prepared, _ = prepare_batch_model(linear_svc())
    requirements = names(model_requirements(prepared.fit(TEXTS, INTENTS), modules=PYFUNC))
    assert "scikit-learn" in requirements and "scipy" in requirements  # models.batch's
    assert "pyarrow" not in requirements and "river" not in requirements


def test_mlflow_is_pinned_once_though_three_distributions_provide_it():
    requirements = model_requirements(None)
    assert names(requirements) == ["cloudpickle", "mlflow"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", line) for line in requirements)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A package `shipped_pkg` on the path, with imports of every kind."""
    package = tmp_path / "shipped_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import json\n")
    (package / "core.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING

            import pyarrow
            from . import helpers
            from shipped_pkg.data import TABLE

            if TYPE_CHECKING:
                import river

            try:
                import yaml
            except ImportError:
                yaml = None


            class Model:
                import csv

                def fit(self):
                    import pandas  # lazy: not followed

                    return self
            """
        )
    )
    (package / "helpers.py").write_text("import scipy.sparse\n")
    (package / "data.py").write_text("TABLE = {}\n")
    (tmp_path / "loose_module.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_the_shipped_modules_imports_are_followed_where_importing_runs_them(project):
    found = imported_modules(["shipped_pkg.core"], shipped=["shipped_pkg"])
    assert {"shipped_pkg", "shipped_pkg.helpers", "shipped_pkg.data", "json", "csv"} <= found
    assert {"pyarrow", "scipy.sparse", "yaml"} <= found
    assert "river" not in found and "pandas" not in found

    from shipped_pkg.core import Model

    requirements = model_requirements(Model(), shipped=["shipped_pkg"], always=())
    assert names(requirements) == ["pyarrow", "PyYAML", "scipy"]


def test_the_projects_own_code_not_shipped_is_refused():
    """A tokenizer from `common` would not be there where the model loads."""
    with pytest.raises(RequirementsError, match="common, the project's own code"):
        model_requirements(FunctionTransformer(free_port))


def test_a_module_of_no_distribution_is_refused(project):
    from loose_module import Thing

    with pytest.raises(RequirementsError, match="loose_module, which no installed distribution"):
        model_requirements(Thing())


def test_package_folders_are_the_shipped_packages():
    assert package_folders() == [str(Path(models.requirements.__file__).resolve().parent)]


def test_the_logged_model_records_them_and_loads_back(tmp_path):
    """The pyfunc model: requirements.txt is the derived list; pyfunc's answer is one column per
    intent, for a list of texts as for a DataFrame; the estimator loads back as it was, and so
    does an older scikit-learn flavour."""
    model = build_batch_model(min_df=1).fit(TEXTS, INTENTS)
    with fluent_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        artifacts = (tmp_path / "artifacts").as_uri()  # not ./mlruns, the default
        experiment = mlflow.create_experiment("requirements", artifact_location=artifacts)
        with mlflow.start_run(experiment_id=experiment):
            info = log_intent_model(model, TEXTS[:2])
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path)))
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    recorded = (local / "requirements.txt").read_text().split()
    assert recorded == model_requirements(model, modules=PYFUNC)
    code = local / "code" / "models"
    shipped = {path.relative_to(code).as_posix() for path in code.rglob("*.py")}
    assert {"__init__.py", "batch/distinct_rows.py", "pyfunc_model.py"} <= shipped

    texts = ["a flight to rome", "play a tune"]
    # Every shape of texts passes MLflow's schema check, a plain list included.
    for given in (texts, {"text": texts}, pd.DataFrame({"text": texts}), pd.Series(texts)):
        answer = pyfunc.predict(given)
        assert list(answer.columns) == ["music", "travel"], type(given)
        np.testing.assert_allclose(answer.sum(axis=1), 1.0)
        assert answer.idxmax(axis=1).tolist() == ["travel", "music"], type(given)
    assert isinstance(pyfunc.unwrap_python_model(), IntentProbabilities)

    loaded = load_estimator(local)
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS))
    legacy = tmp_path / "sklearn-flavour"
    mlflow.sklearn.save_model(model, str(legacy), serialization_format="cloudpickle")
    np.testing.assert_allclose(
        load_estimator(legacy).predict_proba(TEXTS), model.predict_proba(TEXTS)
    )


def test_docstring_examples():
    result = doctest.testmod(models.requirements)
    assert result.attempted > 0 and result.failed == 0
