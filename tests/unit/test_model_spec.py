"""Models chosen by configuration: specs that fail say which part failed, at configuration."""

import json

import pytest
from typer.testing import CliRunner

from models.alternatives import linear_svc, river_naive_bayes, river_softmax, tfidf_logistic
from models.contracts import (
    ModelContractError,
    check_batch_model,
    check_speed_model,
    gives_margins,
    gives_probabilities,
    has_vectorised_proba,
)
from models.model_spec import ModelSpec, ModelSpecError
from pipelines.cli.main import app


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        ("models.alternatives", None, "must look like package.module:factory"),
        ("no_such_package.models:build", None, "cannot import no_such_package.models"),
        ("models.alternatives:nothing_here", None, "has no nothing_here"),
        ("models.alternatives:river_softmax", "{not json", "are not JSON"),
        ("models.alternatives:river_softmax", "[1, 2]", "must be a JSON object"),
    ],
)
def test_a_bad_spec_names_what_is_wrong(factory, params, message):
    with pytest.raises(ModelSpecError, match=message):
        ModelSpec.parse(factory, params)


def test_an_unknown_parameter_fails_when_the_model_is_built():
    spec = ModelSpec.parse("models.alternatives:river_softmax", '{"no_such": 1}')
    with pytest.raises(ModelSpecError, match="could not be called"):
        spec.build()


def test_a_spec_as_json_is_the_same_for_the_same_model_and_only_for_it():
    spec = ModelSpec("models.alternatives:tfidf_logistic", {"C": 2.0, "ngrams": (1, 2)})
    parsed = ModelSpec.parse("models.alternatives:tfidf_logistic", '{"ngrams": [1, 2], "C": 2.0}')
    assert spec.as_json() == parsed.as_json()
    assert json.loads(spec.as_json()) == {
        "factory": spec.factory,
        "params": {"C": 2.0, "ngrams": [1, 2]},
    }
    other = ModelSpec("models.alternatives:tfidf_logistic", {"C": 3.0, "ngrams": (1, 2)})
    assert spec.as_json() != other.as_json()


def test_the_shipped_alternatives_keep_their_contracts():
    for build in (river_naive_bayes, river_softmax):
        check_speed_model(build())
    assert has_vectorised_proba(river_naive_bayes())
    assert not has_vectorised_proba(river_softmax())  # its pipeline has the method, not its end
    assert gives_probabilities(check_batch_model(tfidf_logistic()))
    margins = check_batch_model(linear_svc())
    assert gives_margins(margins) and not gives_probabilities(margins)


def test_a_non_model_is_refused_with_what_it_lacks():
    with pytest.raises(ModelContractError, match="lacks learn_one, predict_proba_one"):
        check_speed_model(object())
    with pytest.raises(ModelContractError, match="lacks fit, get_params"):
        check_batch_model(object())


@pytest.mark.parametrize(
    "args",
    [
        ["speed", "--speed-model", "nowhere:model"],
        ["retrain", "--batch-model", "models.alternatives:missing"],
        ["evaluate", "--speed-model-params", "{oops"],
    ],
)
def test_the_cli_refuses_a_bad_model_before_it_starts(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error:" in result.output
