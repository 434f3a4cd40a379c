"""The project's own S3-compatible server (S3Proxy on its filesystem backend), without Docker.

Maven copies S3Proxy's single jar from Maven Central once (`fetch`), and the server runs as a
detached JVM (`ObjectStoreLauncher`), keeping its objects under `<home>/data`, so a restart
keeps them. With `STORAGE_ENDPOINT_URL` set, nothing is started: `up` only checks that store and
creates the bucket there.

S3Proxy 3 honours conditional writes (`If-None-Match`, `If-Match`), which the retrain lock's
lease relies on; older releases ignore them silently, so the version is pinned by default.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from common.processes import ServiceError
from common.settings import LocalObjectStoreSettings, Settings, StorageSettings
from common.storage import s3_client
from pipelines.services.java import (
    JVM_FLAGS,
    cache_folder,
    fetch_once,
    require_java,
    write_properties,
)
from pipelines.services.launcher import Launcher

_HOST = "127.0.0.1"


class ObjectStoreLauncher(Launcher[StorageSettings, LocalObjectStoreSettings]):
    """The local S3Proxy, or the store at STORAGE_ENDPOINT_URL."""

    name, product, command = "Object store", "S3Proxy", "s3"
    prefix, address_variable = "STORAGE_", "STORAGE_ENDPOINT_URL"
    start_timeout_s = 60.0

    def __init__(self, settings: StorageSettings, local: LocalObjectStoreSettings) -> None:
        super().__init__(settings, local, settings.endpoint, local.s3proxy_version)
        folder = cache_folder(local, f"s3proxy-{self.version}")
        self.jar = folder / f"s3proxy-{self.version}-jar-with-dependencies.jar"

    @classmethod
    def of(cls, tree: Settings) -> ObjectStoreLauncher:
        return cls(tree.storage, tree.local_object_store)

    def fetch(self) -> Path:
        """Copy S3Proxy's jar from Maven Central into STORAGE_CACHE_DIR (else STORAGE_HOME),
        once (needs java 17+ and mvn)."""
        artifact = f"org.gaul:s3proxy:{self.version}:jar:jar-with-dependencies"
        goal = ["dependency:copy", f"-Dartifact={artifact}"]
        fetch_once(self.jar.parent, f"S3Proxy {self.version}", goal)
        return self.jar

    def start_command(self) -> list[str]:
        jar = self.fetch()
        java = require_java()
        config = _write_properties(self.settings, self.local)
        heap = f"-Xmx{self.local.heap}"
        return [java, heap, *JVM_FLAGS, "-jar", str(jar), "--properties", str(config)]

    def answers(self) -> bool:
        """The port accepts connections and the store lists its buckets."""
        endpoint = urlsplit(self.address)
        try:
            socket.create_connection((endpoint.hostname, endpoint.port), timeout=1.0).close()
            _buckets(self.settings)
        except (OSError, ServiceError):
            return False
        return True

    def prepare(self) -> None:
        """Create the bucket if it is missing."""
        _ensure_bucket(self.settings)

    def contents(self) -> list[str]:
        return [f"bucket: {bucket}" for bucket in _buckets(self.settings)]


def _buckets(settings: StorageSettings) -> list[str]:
    """The store's buckets; a ServiceError if it cannot be reached."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = s3_client(settings).list_buckets()
    except (BotoCoreError, ClientError) as exc:
        raise ServiceError(f"the object store at {settings.endpoint}: {exc}") from exc
    return sorted(bucket["Name"] for bucket in answer.get("Buckets", []))


def _ensure_bucket(settings: StorageSettings) -> bool:
    """Create `settings.bucket` if it is missing; True if this call created it."""
    from botocore.exceptions import BotoCoreError, ClientError

    if settings.bucket in _buckets(settings):
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
    return write_properties(home / "s3proxy.properties", properties)
