"""The project's own S3-compatible server (S3Proxy on its filesystem backend), without Docker.

Maven copies S3Proxy's single jar from Maven Central once (`fetch`), and the server runs as a
detached JVM tracked by `DetachedService` (`up`, `down`, `status`), keeping its objects under
`<home>/data`, so a restart keeps them. With `STORAGE_ENDPOINT_URL` set, nothing is started:
`up` only checks that store and creates the bucket there.

S3Proxy 3 honours conditional writes (`If-None-Match`, `If-Match`), which the retrain lock's
lease relies on; older releases ignore them silently, so the version is pinned by default.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock

from common.processes import DetachedService, ServiceError, port_is_free
from common.settings import LocalObjectStoreSettings, StorageSettings
from common.storage import s3_client

_HOST = "127.0.0.1"
_JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


@dataclass(frozen=True)
class ObjectStoreStatus:
    """What `status` reports; `pid` and `log_file` are None for an external store."""

    endpoint: str
    running: bool
    pid: int | None
    log_file: Path | None
    buckets: list[str]


def jar_path(local: LocalObjectStoreSettings) -> Path:
    """Where the jar of `local.s3proxy_version` is kept (shared by every home)."""
    folder = (local.cache_dir or local.home).resolve() / f"s3proxy-{local.s3proxy_version}"
    return folder / f"s3proxy-{local.s3proxy_version}-jar-with-dependencies.jar"


def fetch(local: LocalObjectStoreSettings) -> Path:
    """Copy S3Proxy's jar from Maven into `jar_path`, once; returns the jar.

    A marker file written last makes an interrupted fetch start over; the lock lets concurrent
    fetches (tests, CLI) share one download.
    """
    jar = jar_path(local)
    marker = jar.parent / ".complete"
    if marker.exists():
        return jar
    _require_tools(maven=True)
    jar.parent.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(jar.parent.parent / ".s3proxy-fetch.lock"):
        if marker.exists():
            return jar
        shutil.rmtree(jar.parent, ignore_errors=True)
        command = [
            "mvn",
            "-q",
            "-B",
            "-Dstyle.color=never",
            "dependency:copy",
            f"-Dartifact=org.gaul:s3proxy:{local.s3proxy_version}:jar:jar-with-dependencies",
            f"-DoutputDirectory={jar.parent}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not jar.exists():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise ServiceError(f"Maven could not fetch S3Proxy {local.s3proxy_version}:", tail)
        marker.write_text(f"{local.s3proxy_version}\n")
    return jar


def up(settings: StorageSettings, local: LocalObjectStoreSettings, timeout: float = 60.0) -> bool:
    """Start the local S3Proxy and create the bucket; True if this call started it.

    Already running, or an external store configured: nothing is started, but a missing
    bucket is still created.
    """
    process = _process(local)
    if not settings.uses_local_server or process.is_running():
        ensure_bucket(settings)
        return False
    jar = fetch(local)
    java = _require_tools(maven=False)
    if not port_is_free(settings.port):
        raise ServiceError(
            f"port {settings.port} on {_HOST} is already in use; "
            "stop what listens there or set STORAGE_PORT"
        )
    config = _write_properties(settings, local)
    process.start(
        [java, f"-Xmx{local.heap}", *_JVM_FLAGS, "-jar", str(jar), "--properties", str(config)]
    )
    try:
        process.wait_ready(lambda: _answers(settings), timeout)
        ensure_bucket(settings)
    except BaseException:
        process.stop()
        raise
    return True


def down(settings: StorageSettings, local: LocalObjectStoreSettings) -> bool:
    """Stop the local S3Proxy (its data stays); False if it was not running or is external."""
    if not settings.uses_local_server:
        return False
    return _process(local).stop()


def status(settings: StorageSettings, local: LocalObjectStoreSettings) -> ObjectStoreStatus:
    """Whether the store runs, where, and its buckets."""
    if settings.uses_local_server:
        process = _process(local)
        pid, log_file = process.pid(), process.log_file
        running = pid is not None
    else:
        pid, log_file, running = None, None, True
    buckets: list[str] = []
    if running:
        try:
            buckets = list_buckets(settings)
        except ServiceError:
            running = settings.uses_local_server  # a local server may still be starting
    return ObjectStoreStatus(settings.endpoint, running, pid, log_file, buckets)


def list_buckets(settings: StorageSettings) -> list[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = s3_client(settings).list_buckets()
    except (BotoCoreError, ClientError) as exc:
        raise ServiceError(f"the object store at {settings.endpoint}: {exc}") from exc
    return sorted(bucket["Name"] for bucket in answer.get("Buckets", []))


def ensure_bucket(settings: StorageSettings) -> bool:
    """Create `settings.bucket` if it is missing; True if this call created it."""
    from botocore.exceptions import BotoCoreError, ClientError

    if settings.bucket in list_buckets(settings):
        return False
    try:
        s3_client(settings).create_bucket(Bucket=settings.bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            return False
        raise ServiceError(f"creating bucket {settings.bucket}: {exc}") from exc
    except BotoCoreError as exc:
        raise ServiceError(f"creating bucket {settings.bucket}: {exc}") from exc
    return True


def _process(local: LocalObjectStoreSettings) -> DetachedService:
    return DetachedService("s3proxy", local.home.resolve())


def _write_properties(settings: StorageSettings, local: LocalObjectStoreSettings) -> Path:
    """S3Proxy's configuration, rewritten at every `up`: its data folder is kept."""
    home = local.home.resolve()
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    properties = {
        "s3proxy.endpoint": f"http://{_HOST}:{settings.port}",
        "s3proxy.authorization": "aws-v2-or-v4",
        "s3proxy.identity": settings.access_key,
        "s3proxy.credential": settings.secret_key,
        "jclouds.provider": "filesystem",
        "jclouds.filesystem.basedir": str(data),
    }
    path = home / "s3proxy.properties"
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path


def _answers(settings: StorageSettings) -> bool:
    """Readiness: the port accepts connections and the store lists its buckets."""
    endpoint = urlsplit(settings.endpoint)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port), timeout=1.0).close()
        list_buckets(settings)
    except (OSError, ServiceError):
        return False
    return True


def _require_tools(maven: bool) -> str:
    """The path of `java` (and check `mvn` if `maven`), or a clear error."""
    java = shutil.which("java")
    missing = [] if java else ["java (openjdk-17-jre-headless)"]
    if maven and shutil.which("mvn") is None:
        missing.append("mvn (maven)")
    if missing or java is None:
        raise ServiceError(f"not found: {', '.join(missing)}; install with apt-get")
    return java
