"""`bentoml build` from the repository gives a bento with the service, its packages pinned and
its settings documented, and the served OpenAPI page describes the service."""

import os
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import httpx
import pytest
import yaml

from common.processes import ChildProcess, free_port
from pipelines.cli.settings_reference import env_name
from serving.runtime import ServingEnvironment

ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def test_the_bento_lists_the_project_dependencies_and_documents_every_setting():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert bentofile["python"]["packages"] == dependencies
    documented = (ROOT / "serving" / "README.md").read_text()
    sections = typing.get_type_hints(ServingEnvironment).values()
    assert sections, "the service's settings are read somewhere else now"
    for cls in sections:
        for name in cls.model_fields:
            variable = env_name(cls, name)
            assert f"`{variable}`" in documented, f"{variable} (read by the service) undocumented"


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A bento built from the repository into a throwaway BentoML home: (tag, environment)."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run(
        [BENTOML, "build", "--output", "tag", str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag, env


def test_the_bento_holds_the_service_and_pinned_packages(bento):
    tag, env = bento
    name, version = tag.split(":")
    folder = Path(env["BENTOML_HOME"]) / "bentos" / name / version
    assert (folder / "src" / "serving" / "service.py").is_file()
    assert not (folder / "src" / "pipelines").exists(), "the bento needs no jobs or CLI"
    info = yaml.safe_load((folder / "bento.yaml").read_text())
    assert info["service"] == "serving.service:IntentClassifier"
    lines = (folder / "env" / "python" / "requirements.txt").read_text().splitlines()
    pins = [line for line in lines if line and not line.startswith(("#", "-"))]
    unpinned = [line for line in pins if "==" not in line]
    assert pins and not unpinned, unpinned
    pinned = {line.split("==")[0].lower() for line in pins}
    assert {"bentoml", "mlflow", "river", "scikit-learn"} <= pinned


def test_the_served_openapi_page_describes_the_service(bento, tmp_path: Path):
    """Served from the bento, with no model anywhere: the page answers all the same."""
    tag, env = bento
    port = free_port()
    server = ChildProcess(
        "bento",
        [BENTOML, "serve", tag, "--port", str(port), "--host", "127.0.0.1"],
        env={
            **env,
            "SERVING_SNAPSHOT_DIR": str(tmp_path / "none"),
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        },
        cwd=tmp_path,
        log_path=tmp_path / "bento.log",
        port=port,
    )
    with server:
        server.wait_ready(probe=lambda: _answers(f"{server.url}/docs.json"), timeout_s=120)
        spec = httpx.get(f"{server.url}/docs.json", timeout=10).json()
    info = spec["info"]
    assert info["title"] == "IntentClassifier"
    assert info["version"] not in ("None", "", None)
    assert info["description"].startswith("Intent classification for voice-assistant queries")
    assert "BentoML" not in info["description"].splitlines()[0]
    assert spec["paths"]["/predict"]["post"]["description"] == "The intent of one query."


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
