"""The one launcher shape every local service shares, and the commands built from it.

The skeleton (`up`, `down`, `status`, `running`) runs here on a stand-in service, Python's own
HTTP server, so that it needs no Java; Kafka, S3Proxy and MLflow themselves run in
tests/integration/test_services.py.
"""

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.processes import ServiceError, free_port, http_ready
from common.settings import KafkaSettings, LocalBrokerSettings, Settings
from pipelines.cli.main import app
from pipelines.services import java
from pipelines.services.broker import KafkaLauncher
from pipelines.services.launcher import Launcher


@dataclass(frozen=True)
class WebSettings:
    port: int
    url: str = ""

    @property
    def uses_local_server(self) -> bool:
        return not self.url


@dataclass(frozen=True)
class WebHome:
    home: Path


class WebLauncher(Launcher[WebSettings, WebHome]):
    """A stand-in service: `python -m http.server`, serving its home."""

    name, product, command = "Web server", "Web", "web"
    prefix, address_variable = "WEB_", "WEB_URL"
    start_timeout_s = 20.0

    def __init__(self, settings: WebSettings, local: WebHome) -> None:
        address = settings.url or f"http://127.0.0.1:{settings.port}"
        super().__init__(settings, local, address, sys.version.split()[0])

    @classmethod
    def of(cls, tree: Settings) -> "WebLauncher":
        raise NotImplementedError("not in the settings tree")

    def fetch(self) -> Path:
        return Path(sys.executable)

    def start_command(self) -> list[str]:
        port = str(self.settings.port)
        return [str(self.fetch()), "-m", "http.server", port, "--bind", "127.0.0.1"]

    def answers(self) -> bool:
        return http_ready(self.address, timeout_s=0.5)()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebLauncher]:
    launcher = WebLauncher(WebSettings(free_port()), WebHome(tmp_path / "web"))
    try:
        yield launcher
    finally:
        launcher.down()


def test_up_starts_once_and_status_tells_the_truth(web: WebLauncher):
    assert web.status().running is False

    assert web.up() is True
    state = web.status()
    assert state.running and state.pid is not None and state.address == web.address
    assert state.log_file == web.local.home.resolve() / "web.log"
    assert web.up() is False  # already running: nothing started
    assert web.status().pid == state.pid

    assert web.down() is True
    assert web.down() is False
    assert web.status().running is False


def test_running_stops_only_what_it_started(web: WebLauncher):
    with web.running() as started:
        assert started and web.status().running
        with web.running() as again:  # already up: this block must leave it running
            assert again is False
        assert web.status().running
    assert not web.status().running


def test_a_busy_port_is_a_clear_error_naming_the_setting(web: WebLauncher):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", web.settings.port))
        taken.listen()
        with pytest.raises(ServiceError, match=rf"port {web.settings.port} .* set WEB_PORT"):
            web.up()
    assert not web.status().running


def test_a_service_elsewhere_is_checked_never_started_nor_stopped(tmp_path: Path):
    away = WebLauncher(WebSettings(free_port(), url="http://127.0.0.1:9"), WebHome(tmp_path))

    with pytest.raises(ServiceError, match="Web server at http://127.0.0.1:9 does not answer"):
        away.up()
    assert away.down() is False
    state = away.status()
    assert (state.running, state.pid, state.log_file) == (False, None, None)


def test_kafka_names_both_of_its_ports_when_they_are_busy(tmp_path: Path):
    port, controller = free_port(), free_port()
    kafka = KafkaLauncher(
        KafkaSettings(bootstrap_servers="", port=port),
        LocalBrokerSettings(home=tmp_path, controller_port=controller),
    )
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", port))
        b.bind(("127.0.0.1", controller))
        a.listen()
        b.listen()
        with pytest.raises(ServiceError, match="set KAFKA_PORT / KAFKA_CONTROLLER_PORT"):
            kafka.up()


def test_one_java_check_asks_for_java_17(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(java.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(java, "java_version", lambda path: "1.8.0_402")
    with pytest.raises(ServiceError, match="java 1.8.0_402 found, Java 17\\+ is needed"):
        java.require_java()

    monkeypatch.setattr(java, "java_version", lambda path: "17.0.15")
    assert java.require_java(maven=True) == "/usr/bin/java"

    monkeypatch.setattr(java.shutil, "which", lambda tool: None)
    with pytest.raises(ServiceError, match="openjdk-17-jre-headless maven"):
        java.require_java(maven=True)


@pytest.mark.parametrize("version, expected", [("17.0.15", 17), ("1.8.0_402", 8), ("21", 21)])
def test_java_major_version_by_either_numbering(version: str, expected: int):
    assert java.major(version) == expected


@pytest.mark.parametrize("group", ["kafka", "mlflow", "s3"])
def test_every_service_has_the_same_four_commands(group: str):
    result = CliRunner().invoke(app, [group, "--help"], env={"COLUMNS": "100"})

    assert result.exit_code == 0, result.output
    for command in ("fetch", "up", "down", "status"):
        assert f" {command} " in result.output


def test_mlflow_up_elsewhere_that_does_not_answer_fails_in_one_line():
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    result = CliRunner().invoke(app, ["mlflow", "up"], env=env)

    assert result.exit_code == 1
    assert result.output.strip() == "error: MLflow at http://127.0.0.1:9 does not answer"


def test_status_and_down_of_services_elsewhere(tmp_path: Path):
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "STORAGE_ENDPOINT_URL": "http://127.0.0.1:9",
        "STORAGE_HOME": str(tmp_path),
    }
    runner = CliRunner()

    kafka = runner.invoke(app, ["kafka", "down"], env=env)
    s3 = runner.invoke(app, ["s3", "status"], env=env)

    assert kafka.output.strip() == "Kafka at 127.0.0.1:9 is not ours to stop"
    assert s3.output.strip() == "Object store at http://127.0.0.1:9: not running"
