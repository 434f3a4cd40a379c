"""docker-compose.yml, .env and the Dockerfile agree with the code, without a Docker engine.

Each lambda-ml service must run a `lambda-ml` subcommand and options that the CLI has (parsed by
click itself, with the `.env` defaults filled in), set only environment variables that a
settings class reads (or that are on the third-party allow-list below), and share its folders
with the services that read them through the same named volume. Every `${VAR}` has a default
in `.env`, and every `depends_on` names a service that can meet its condition.

The checks are small functions that return what is wrong; the last tests feed them broken
input, to show that they fail when they should.
"""

import ast
import importlib
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from pydantic_settings import BaseSettings

from pipelines.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_FILE = ROOT / ".env"
DOCKERFILE = ROOT / "Dockerfile"
MLFLOW_ENTRYPOINT = ROOT / "mlflow" / "entrypoint.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The packages the project installs (pyproject's `packages.find.include`, without the `*`).
PROJECT_PACKAGES = tuple(
    pattern.rstrip("*")
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
)

# The long-running and one-shot jobs: each runs in exactly one service.
JOBS = ("produce", "speed", "archive", "schedule", "serve")

# Services that do not run `lambda-ml`: their environment is read by other programs.
THIRD_PARTY_SERVICES = {
    # The official apache/kafka image: it turns KAFKA_* into broker properties, CLUSTER_ID too.
    "kafka",
    # The official postgres image: POSTGRES_*.
    "postgres",
    # The MinIO image, the shared S3-compatible store: MINIO_*.
    "s3",
    # The official apache/spark image: the batch layer's standalone cluster.
    "spark-master",
    "spark-worker",
    # The official prom/prometheus image: its configuration is a mounted file, no variables.
    "prometheus",
    # MLflow's own server, started by mlflow/entrypoint.sh from the project image: the variables
    # are the script's (checked against it below).
    "mlflow",
}

# Variables that a library reads by itself inside a lambda-ml process, allowed on the lambda-ml
# services beside the settings classes' own. Not here on purpose: BENTOML_CONFIG_OVERRIDES
# (`lambda-ml serve` overwrites it from its options) and anything a settings class reads.
THIRD_PARTY_ENV = {
    # MLflow's client (mlflow.environment_variables): retries and timeout of its HTTP requests.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    # BentoML: no usage tracking (the image and `lambda-ml serve` set it already).
    "BENTOML_DO_NOT_TRACK",
    # CPython: unbuffered output (the image sets it already).
    "PYTHONUNBUFFERED",
}

# Which clients a lambda-ml subcommand opens: these must not fall back to localhost.
NEEDS = {
    ("kafka", "up"): {"kafka"},
    ("produce",): {"kafka"},
    ("s3", "up"): {"storage"},
    ("speed",): {"kafka", "mlflow", "storage"},
    ("archive",): {"kafka"},
    ("schedule",): {"mlflow", "storage"},
    ("serve",): {"mlflow", "storage"},
}

# (writer, setting it writes) -> [(reader, setting it reads)]: the same folder, on one volume.
SHARED_FOLDERS = {
    ("speed", "SPEED_SNAPSHOT_DIR"): [("serve", "SERVING_SNAPSHOT_DIR")],
    ("speed", "SPEED_SIGNAL_DIR"): [("schedule", "SPEED_SIGNAL_DIR")],
    ("archive", "BATCH_MASTER_DIR"): [("schedule", "BATCH_MASTER_DIR")],
}

CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
_VARIABLE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


# --- reading the files -----------------------------------------------------------------------


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """`NAME=value` lines of a compose `.env` file; blank lines and `#` comments skipped."""
    values = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_]\w*", name.strip()), f"{path}:{number}: {raw!r}"
        values[name.strip()] = value.strip()
    return values


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML document (keys excluded, as compose does)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def variables_used(document: Any) -> set[str]:
    """The names of the `${VAR}` / `$VAR` that compose interpolates in `document`."""
    names = set()
    for text in strings(document):
        for match in _VARIABLE.finditer(text):
            if match["dollar"]:
                continue
            braced = match["braced"]
            if braced is not None:
                parsed = _BRACED.match(braced)
                assert parsed, f"cannot read ${{{braced}}} in {text!r}"
                names.add(parsed["name"])
                if parsed["arg"]:
                    names |= variables_used(parsed["arg"])
            else:
                names.add(match["bare"])
    return names


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """`node` with compose's interpolation applied, from `env` (as `docker compose` does)."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            if match["dollar"]:
                return "$"
            parsed = _BRACED.match(match["braced"]) if match["braced"] is not None else None
            name = parsed["name"] if parsed else match["bare"]
            op, arg = (parsed["op"], parsed["arg"]) if parsed else (None, None)
            value = env.get(name)
            if op in (":-", "-"):
                unset = value is None or (op == ":-" and value == "")
                return interpolate(arg, env) if unset else value
            if value is None:
                raise KeyError(f"${{{name}}} has no value")
            return value

        return _VARIABLE.sub(substitute, node)
    if isinstance(node, Mapping):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as handle:
        return yaml.safe_load(handle)


def resolved_compose() -> dict[str, Any]:
    return interpolate(load_compose(), read_env_file())


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, mapping or list form, values as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: value for name, _, value in pairs}
    return {name: "" if value is None else str(value) for name, value in env.items()}


def command(service: Mapping[str, Any]) -> list[str]:
    value = service.get("command") or []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def project_image(compose: Mapping[str, Any]) -> set[str]:
    """The image names given to services built from this repository's Dockerfile."""
    return {s["image"] for s in compose["services"].values() if "build" in s and "image" in s}


def uses_project_image(service: Mapping[str, Any], images: set[str]) -> bool:
    return "build" in service or service.get("image") in images


def job_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run `lambda-ml` (project image, not third-party)."""
    images = project_image(compose)
    return {
        name: service
        for name, service in compose["services"].items()
        if uses_project_image(service, images) and name not in THIRD_PARTY_SERVICES
    }


# --- what the code accepts -------------------------------------------------------------------


def settings_classes() -> list[type[BaseSettings]]:
    """Every BaseSettings subclass defined in the project's packages.

    Found in the source (so that an unrelated module that does not import yet cannot break
    this test), then imported to read their prefixes and fields.
    """
    found = []
    for package in PROJECT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            names = [
                node.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef)
                and any(
                    getattr(base, "id", getattr(base, "attr", None)) == "BaseSettings"
                    for base in node.bases
                )
            ]
            if names:
                module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                module = importlib.import_module(module_name)
                found += [getattr(module, name) for name in names]
    return found


def settings_variables() -> set[str]:
    """The environment variables the settings classes read (upper case: not case-sensitive)."""
    names = set()
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            names.add(f"{prefix}{field_name}".upper())
            for alias in (field.alias, field.validation_alias):
                if isinstance(alias, str):
                    names.add(alias.upper())
    return names


def settings_prefixes() -> set[str]:
    return {cls.model_config.get("env_prefix", "").upper() for cls in settings_classes()} - {""}


def cli_command() -> Any:
    """The click command that `lambda-ml` runs (typer ships its own copy of click)."""
    return typer.main.get_command(app)


def is_group(command: Any) -> bool:
    return hasattr(command, "commands") and hasattr(command, "get_command")


def _message(exc: typer.TyperException) -> str:
    return exc.format_message() if hasattr(exc, "format_message") else str(exc)


def command_problems(args: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """(subcommand path, what is wrong) for `lambda-ml ARGS`, parsed by the CLI's own parser.

    Each group's own options are parsed up to its subcommand; the subcommand then parses the
    rest, so an unknown subcommand or option, a bad value (type, range, choice) or a stray
    argument is reported. Nothing is invoked.
    """
    command, parent, name = cli_command(), None, "lambda-ml"
    path: list[str] = []
    rest = list(args)
    while is_group(command):
        options: list[str] = []
        while rest and rest[0].startswith("-"):
            token = rest.pop(0)
            options.append(token)
            option = next((p for p in command.params if token.split("=", 1)[0] in p.opts), None)
            if option is None:
                return tuple(path), [f"`{name} {token}`: no such option"]
            takes_value = not (getattr(option, "is_flag", False) or getattr(option, "count", False))
            if takes_value and "=" not in token and rest:
                options.append(rest.pop(0))
        if not rest:
            return tuple(path), [f"`{name}` needs a subcommand"]
        sub_name = rest.pop(0)
        try:
            context = command.make_context(name, [*options, sub_name], parent=parent)
        except typer.TyperException as exc:
            return tuple(path), [f"`{name}`: {_message(exc)}"]
        sub = command.get_command(context, sub_name)
        if sub is None:
            return tuple(path), [f"`{name}` has no subcommand {sub_name!r}"]
        path.append(sub_name)
        command, parent, name = sub, context, sub_name
    try:
        command.make_context(name, rest, parent=parent)
    except typer.TyperException as exc:
        return tuple(path), [f"`lambda-ml {' '.join(path)}`: {_message(exc)}"]
    return tuple(path), []


def env_problems(env: Mapping[str, str], known: set[str]) -> list[str]:
    return [
        f"{name} is read by no settings class and is not on THIRD_PARTY_ENV"
        for name in env
        if name.upper() not in known and name not in THIRD_PARTY_ENV
    ]


def undefined_variables(document: Any, defaults: Mapping[str, str]) -> set[str]:
    return variables_used(document) - set(defaults)


def depends_on_problems(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, spec in depends.items():
            condition = (spec or {}).get("condition", "service_started")
            if target not in services:
                problems.append(f"{name} depends on {target}, which is not a service")
                continue
            if target == name:
                problems.append(f"{name} depends on itself")
            if condition not in CONDITIONS:
                problems.append(f"{name} -> {target}: unknown condition {condition!r}")
            if condition == "service_healthy" and "healthcheck" not in services[target]:
                problems.append(f"{name} waits for {target} to be healthy; it has no healthcheck")
            if condition == "service_completed_successfully" and str(
                services[target].get("restart", "no")
            ) not in ("no", "on-failure"):
                problems.append(f"{name} waits for {target} to exit, but it restarts")
    return problems


def mounted_volume(service: Mapping[str, Any], folder: str) -> tuple[str, str, bool] | None:
    """(volume, folder inside that volume, read-only) of `folder` in `service`, or None."""
    best: tuple[int, str, str, bool] | None = None
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target, _, mode = rest.partition(":")
            read_only = "ro" in mode.split(",")
        else:
            source, target = volume.get("source", ""), volume["target"]
            read_only = bool(volume.get("read_only"))
        target_path, folder_path = PurePosixPath(target), PurePosixPath(folder)
        if folder_path == target_path or target_path in folder_path.parents:
            depth = len(target_path.parts)
            if best is None or depth > best[0]:
                inside = str(folder_path.relative_to(target_path))
                best = (depth, source, inside, read_only)
    return None if best is None else best[1:]


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments skipped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


# --- the compose file ------------------------------------------------------------------------


def test_compose_file_parses_into_services():
    compose = load_compose()
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict)
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, f"{name}: no image and no build"


def test_values_have_the_types_compose_accepts():
    """YAML reads `no`, `true` and `false` as booleans, which compose refuses in these places."""
    for name, service in load_compose()["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, dict):
            for variable, value in env.items():
                assert not isinstance(value, bool), f"{name}: quote {variable}'s value"
                assert value is None or isinstance(value, str | int | float), (name, variable)
        assert isinstance(service.get("restart", "no"), str), f"{name}: quote restart's value"
        for port in service.get("ports") or []:
            assert isinstance(port, str), f"{name}: write port {port} as a string"


def test_every_service_is_a_lambda_ml_job_or_a_known_third_party_one():
    compose = load_compose()
    services = compose["services"]
    assert set(services) >= THIRD_PARTY_SERVICES, "THIRD_PARTY_SERVICES names a missing service"
    jobs = job_services(compose)
    for name, service in services.items():
        if name in jobs:
            assert service.get("build") in (".", {"context": "."}), f"{name}: not `build: .`"
            assert "entrypoint" not in service, f"{name}: must use the image's lambda-ml entrypoint"
            assert command(service), f"{name}: runs no subcommand"
        else:
            assert name in THIRD_PARTY_SERVICES, f"{name}: neither a lambda-ml job nor third-party"


def test_every_variable_has_a_default_in_the_env_file():
    compose, defaults = load_compose(), read_env_file()
    assert not undefined_variables(compose, defaults), "used in docker-compose.yml, not in .env"
    unused = {name for name in defaults if not name.startswith("COMPOSE_")} - variables_used(
        compose
    )
    assert not unused, f".env defaults that docker-compose.yml does not use: {sorted(unused)}"


def test_env_file_names_with_a_settings_prefix_are_settings():
    """A `.env` name like KAFKA_TOPIC must be the setting itself, not a look-alike."""
    known, prefixes = settings_variables(), settings_prefixes()
    look_alikes = [
        name
        for name in read_env_file()
        if any(name.upper().startswith(prefix) for prefix in prefixes) and name.upper() not in known
    ]
    assert not look_alikes, f"look like settings but are not: {look_alikes}"


def test_every_job_service_runs_a_command_the_cli_has():
    jobs = job_services(resolved_compose())
    assert jobs
    for name, service in jobs.items():
        path, problems = command_problems(command(service))
        assert not problems, f"service {name}: {problems}"
        assert path, f"service {name}: no subcommand"


def test_each_job_runs_in_exactly_one_service():
    runs: dict[str, list[str]] = {job: [] for job in JOBS}
    for name, service in job_services(resolved_compose()).items():
        path, _ = command_problems(command(service))
        if path and path[0] in runs:
            runs[path[0]].append(name)
    assert all(len(names) == 1 for names in runs.values()), runs


def test_job_environment_is_read_by_the_settings_classes():
    known = settings_variables()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI", "SERVING_PORT"} <= known
    for name, service in job_services(load_compose()).items():
        assert not env_problems(environment(service), known), name


def test_jobs_reach_the_other_containers_not_localhost(monkeypatch):
    """Settings built from each service's environment point at the kafka and mlflow services."""
    from common.settings import KafkaSettings, MlflowSettings, StorageSettings

    compose = resolved_compose()
    services = compose["services"]
    prefixes = settings_prefixes()
    classes = settings_classes()
    for name, service in job_services(compose).items():
        path, _ = command_problems(command(service))
        for variable in list(os.environ):
            if any(variable.upper().startswith(prefix) for prefix in prefixes):
                monkeypatch.delenv(variable)
        for variable, value in environment(service).items():
            monkeypatch.setenv(variable, value)
        for cls in classes:
            cls()  # every value in the compose file is valid for its setting's type
        needs = NEEDS.get(path, set())
        if "kafka" in needs:
            kafka = KafkaSettings()
            assert not kafka.uses_local_server, f"{name}: KAFKA_BOOTSTRAP_SERVERS unset"
            for address in kafka.bootstrap.split(","):
                host = address.rsplit(":", 1)[0]
                assert host in services, f"{name}: Kafka at {address}, not a compose service"
            advertised = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
            assert f"://{kafka.bootstrap}" in advertised, (
                f"{name}: {kafka.bootstrap} not advertised"
            )
        if "mlflow" in needs:
            mlflow = MlflowSettings()
            assert not mlflow.uses_local_server, f"{name}: MLFLOW_TRACKING_URI unset"
            url = urlsplit(mlflow.uri)
            assert url.hostname in services, f"{name}: MLflow at {mlflow.uri}, not a service"
            mlflow_env = environment(services[url.hostname])
            assert str(url.port) == mlflow_env["MLFLOW_PORT"], f"{name}: wrong MLflow port"
        if "storage" in needs:
            storage = StorageSettings()
            assert not storage.uses_local_server, f"{name}: STORAGE_ENDPOINT_URL unset"
            url = urlsplit(storage.endpoint)
            assert url.hostname in services, f"{name}: the store at {url}, not a service"
            store_env = environment(services[url.hostname])
            assert (storage.access_key, storage.secret_key) == (
                store_env["MINIO_ROOT_USER"],
                store_env["MINIO_ROOT_PASSWORD"],
            ), f"{name}: not the store's credentials"


def test_writers_and_readers_share_folders_through_named_volumes_or_the_store():
    compose = resolved_compose()
    services, declared = compose["services"], set(compose.get("volumes") or {})
    for (writer, setting), readers in SHARED_FOLDERS.items():
        folder = environment(services[writer]).get(setting)
        if folder and folder.startswith("s3://"):  # on the shared store: the same URL
            for reader, reader_setting in readers:
                assert environment(services[reader]).get(reader_setting) == folder, (
                    f"{reader}: {reader_setting} is not {writer}'s {setting} ({folder})"
                )
            continue
        assert folder and folder.startswith("/"), f"{writer}: {setting} must be an absolute path"
        written = mounted_volume(services[writer], folder)
        assert written, f"{writer}: {setting}={folder} is on no volume"
        volume, inside, read_only = written
        assert volume in declared, f"{writer}: {volume} is not a named volume"
        assert not read_only, f"{writer}: {folder} is mounted read-only"
        for reader, reader_setting in readers:
            reader_folder = environment(services[reader]).get(reader_setting)
            assert reader_folder, f"{reader}: {reader_setting} unset"
            read = mounted_volume(services[reader], reader_folder)
            assert read and read[:2] == (volume, inside), (
                f"{reader}: {reader_setting}={reader_folder} is not {writer}'s {setting}"
            )


def test_depends_on_names_services_that_can_meet_the_condition():
    assert not depends_on_problems(load_compose()["services"])


def test_published_ports_are_on_the_loopback_only():
    for name, service in resolved_compose()["services"].items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is open to the network"


def test_every_job_logs_json_lines(monkeypatch):
    """Each lambda-ml service's settings, built from its environment, log JSON: a container's
    log goes to a shipper, not to a terminal."""
    from common.settings import LogSettings

    for name, service in job_services(resolved_compose()).items():
        monkeypatch.delenv("LOG_FORMAT", raising=False)
        for variable, value in environment(service).items():
            monkeypatch.setenv(variable, value)
        assert LogSettings().format == "json", f"{name}: logs Rich lines, not JSON"


def test_healthchecks_ask_the_right_port_and_path():
    services = resolved_compose()["services"]
    serve, mlflow = services["serve"], services["mlflow"]
    serve_port = environment(serve)["SERVING_PORT"]
    assert f"127.0.0.1:{serve_port}/readyz" in " ".join(serve["healthcheck"]["test"])
    assert any(str(p).endswith(f":{serve_port}") for p in serve["ports"])
    mlflow_port = environment(mlflow)["MLFLOW_PORT"]
    assert f"127.0.0.1:{mlflow_port}/health" in " ".join(mlflow["healthcheck"]["test"])
    assert any(str(p).endswith(f":{mlflow_port}") for p in mlflow["ports"])
    assert "/opt/kafka/bin/kafka-topics.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert "--list" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_the_long_running_jobs_healthchecks_ask_their_own_healthz(monkeypatch):
    """Each job's healthcheck asks `/healthz` on the port its settings give it, and serve's
    start and the scheduler's wait on those checks."""
    from common.settings import MetricsSettings

    services = resolved_compose()["services"]
    for job in ("speed", "archive", "schedule"):
        for variable in list(os.environ):
            if variable.startswith("METRICS_"):
                monkeypatch.delenv(variable)
        for variable, value in environment(services[job]).items():
            monkeypatch.setenv(variable, value)
        settings = MetricsSettings()
        port = getattr(settings, f"{job}_port")
        assert port and settings.host == "0.0.0.0", f"{job}: no metrics endpoint for Prometheus"
        check = " ".join(services[job]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in check, f"{job}: {check}"
    assert services["serve"]["depends_on"]["speed"]["condition"] == "service_healthy"
    assert services["schedule"]["depends_on"]["archive"]["condition"] == "service_healthy"


def test_kafka_is_a_single_kraft_node_with_internal_topics_replicated_once():
    env = environment(load_compose()["services"]["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    listeners = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert all(f"{name}:" in listeners for name in ("PLAINTEXT", "CONTROLLER"))
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
    ):
        assert env[name] == "1", name


def test_mlflow_service_sets_what_its_entrypoint_reads():
    service = load_compose()["services"]["mlflow"]
    script = MLFLOW_ENTRYPOINT.read_text()
    read = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", script))
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", script))
    env = environment(service)
    assert set(env) <= read, f"not read by {MLFLOW_ENTRYPOINT.name}: {set(env) - read}"
    assert required <= set(env)
    assert service["entrypoint"] == ["/app/mlflow/entrypoint.sh"]
    artifacts = mounted_volume(service, env["MLFLOW_ARTIFACTS_DESTINATION"])
    assert artifacts and not artifacts[2], "MLflow artifacts are not on a writable volume"


# --- the Dockerfile --------------------------------------------------------------------------


def test_dockerfile_installs_the_project_and_runs_lambda_ml_as_a_user():
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    arguments = {keyword: [a for k, a in instructions if k == keyword] for keyword in keywords}
    assert arguments["FROM"] == ["python:3.11-slim"]
    assert arguments["ENTRYPOINT"][-1] == '["lambda-ml"]'
    assert PYPROJECT["project"]["scripts"]["lambda-ml"] == "pipelines.cli.main:app"
    assert any("pip install -c constraints.txt ." in run for run in arguments["RUN"])
    user = arguments["USER"][-1]
    assert user not in ("root", "0"), "the image must not run as root"
    copied = {args.split()[0] for args in arguments["COPY"]}
    packages = set(PROJECT_PACKAGES)
    assert packages | {"mlflow/entrypoint.sh"} <= copied
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not ignored & (packages | {"mlflow", "constraints.txt", "pyproject.toml"})


# --- the checks fail when they should --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["nonsense"], "no subcommand"),
        (["speed", "--no-such-option"], "No such option"),
        (["produce", "--rate", "fast"], "--rate"),
        (["produce", "--rate", "-1"], "--rate"),
        (["produce", "--scenario", "bogus"], "bogus"),
        (["--log-level"], "needs a subcommand"),
        (["kafka"], "needs a subcommand"),
        (["kafka", "sideways"], "no subcommand"),
        (["archive", "extra"], "unexpected extra argument"),
    ],
)
def test_command_check_rejects_what_the_cli_rejects(args, problem):
    _, problems = command_problems(args)
    assert problems and problem.lower() in problems[0].lower(), problems


def test_command_check_accepts_nested_commands_and_group_options():
    assert command_problems(["--log-level", "DEBUG", "kafka", "up"]) == (("kafka", "up"), [])
    assert command_problems(["schedule", "--interval", "60"]) == (("schedule",), [])


def test_env_check_rejects_a_misspelt_setting():
    known = settings_variables()
    assert env_problems({"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}, known) == []
    assert env_problems({"kafka_topic": "queries"}, known) == []
    assert env_problems({"KAFKA_BOOTSTRAP_SERVER": "kafka:9092"}, known)
    assert env_problems({"SPEED_SNAPSHOTS_DIR": "/data"}, known)


def test_variable_check_sees_missing_defaults_and_skips_escapes():
    document = {"a": "${ONE} ${TWO:-x} $$THREE ${FOUR:-$FIVE}", "b": ["$SIX"]}
    assert variables_used(document) == {"ONE", "TWO", "FOUR", "FIVE", "SIX"}
    assert undefined_variables(document, {"ONE": "1", "TWO": "", "FOUR": ""}) == {"FIVE", "SIX"}
    assert interpolate(document["a"], {"ONE": "1", "FIVE": "5"}) == "1 x $THREE 5"
    with pytest.raises(KeyError):
        interpolate("${MISSING}", {})


def test_depends_on_check_sees_missing_services_and_unmeetable_conditions():
    services = {
        "a": {"depends_on": {"ghost": {"condition": "service_started"}}},
        "b": {"depends_on": {"c": {"condition": "service_healthy"}}},
        "c": {"restart": "unless-stopped"},
        "d": {"depends_on": {"c": {"condition": "service_completed_successfully"}}},
    }
    problems = depends_on_problems(services)
    assert len(problems) == 3, problems


def test_the_speed_layer_runs_as_a_consumer_group_of_two_workers_on_the_shared_store():
    speed = resolved_compose()["services"]["speed"]
    env = environment(speed)
    assert int(speed["deploy"]["replicas"]) >= 2
    assert int(read_env_file()["KAFKA_PARTITIONS"]) >= int(speed["deploy"]["replicas"])
    assert env["SPEED_SNAPSHOT_DIR"].startswith("s3://")
    assert not speed.get("volumes"), "workers on several machines share no volume"


def prometheus_targets(config: Mapping[str, Any]) -> dict[str, set[tuple[str, int]]]:
    """Job name -> the (host, port) pairs it scrapes: static targets, and DNS names."""
    targets: dict[str, set[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                found.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            found |= {(name, int(dns["port"])) for name in dns["names"]}
    return targets


def prometheus_problems(config: Mapping[str, Any], services: Mapping[str, Any]) -> list[str]:
    """What is wrong with the scrape configuration against the compose services: each
    long-running job scraped once, at the port compose serves its metrics on."""
    ports = {
        "speed": environment(services["speed"])["METRICS_SPEED_PORT"],
        "archive": environment(services["archive"])["METRICS_ARCHIVE_PORT"],
        "schedule": environment(services["schedule"])["METRICS_SCHEDULE_PORT"],
        "serve": environment(services["serve"])["SERVING_PORT"],
    }
    targets = prometheus_targets(config)
    problems = [f"{job} is not scraped" for job in ports if job not in targets]
    problems += [f"{job} is not a long-running job" for job in targets if job not in ports]
    for job, port in ports.items():
        if job in targets and targets[job] != {(job, int(port))}:
            problems.append(f"{job}: scraped at {sorted(targets[job])}, serves on {job}:{port}")
    return problems


def prometheus_config(services: Mapping[str, Any]) -> dict[str, Any]:
    (mount,) = [v for v in services["prometheus"]["volumes"] if v.endswith("prometheus.yml:ro")]
    return yaml.safe_load((ROOT / mount.split(":")[0]).read_text())


def test_prometheus_scrapes_every_long_running_job_where_compose_serves_its_metrics():
    services = resolved_compose()["services"]
    config = prometheus_config(services)
    assert prometheus_problems(config, services) == []
    speed = next(job for job in config["scrape_configs"] if job["job_name"] == "speed")
    assert "dns_sd_configs" in speed  # every replica of the speed service, not one of them
    assert environment(services["speed"]).get("METRICS_HOST") == "0.0.0.0"


def test_a_prometheus_target_on_the_wrong_port_or_missing_is_caught():
    services = resolved_compose()["services"]
    config = prometheus_config(services)
    archive = next(job for job in config["scrape_configs"] if job["job_name"] == "archive")
    archive["static_configs"] = [{"targets": ["archive:9"]}]
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] != "serve"]
    assert prometheus_problems(config, services) == [
        "serve is not scraped",
        "archive: scraped at [('archive', 9)], serves on archive:9102",
    ]
