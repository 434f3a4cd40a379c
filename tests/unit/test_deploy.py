"""The Kubernetes CronJob of the retrain agrees with the CLI and the settings: its command line
parses with the CLI's own parser, its environment is read by a settings class, and it never
runs two retrains at once. `tests/integration/test_retrain.py` runs its script for real."""

import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_compose import command_problems, env_problems, settings_variables

ROOT = Path(__file__).resolve().parents[2]
CRONJOB = ROOT / "deploy" / "k8s" / "retrain-cronjob.yaml"


def retrain_container(document: dict[str, Any]) -> dict[str, Any]:
    (container,) = document["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def script(container: dict[str, Any]) -> str:
    """The shell script the container runs (`sh -c SCRIPT`)."""
    assert container["command"] == ["/bin/sh", "-c"]
    (text,) = container["args"]
    return text


def lambda_ml_lines(text: str) -> list[list[str]]:
    """The script's `lambda-ml` command lines, as argument lists without the program."""
    lines = (shlex.split(line, comments=True) for line in text.splitlines())
    return [words[1:] for words in lines if words and words[0] == "lambda-ml"]


def test_the_cronjob_runs_one_retrain_at_a_time_through_the_cli():
    document = yaml.safe_load(CRONJOB.read_text())
    assert document["apiVersion"] == "batch/v1" and document["kind"] == "CronJob"
    assert document["spec"]["concurrencyPolicy"] == "Forbid"
    container = retrain_container(document)
    (args,) = lambda_ml_lines(script(container))
    path, problems = command_problems(args)
    assert not problems, problems
    assert path == ("retrain",)
    assert "--json" in args and "--wait" in args
    env = {item["name"]: item.get("value", "") for item in container["env"]}
    assert not env_problems(env, settings_variables())
    assert env["BATCH_LOCK_PATH"].startswith("s3://"), "pods on several nodes share no lock file"


def test_the_checks_fail_on_a_broken_command_line():
    path, problems = command_problems(["retrain", "--no-such-flag"])
    assert problems and path == ("retrain",)
    assert lambda_ml_lines("echo hi\nlambda-ml status  # a comment\n") == [["status"]]
    assert env_problems({"BATCH_LOCK_PAHT": "x"}, settings_variables())
