"""Storage addressed by URL: a local folder, or a prefix of a bucket several machines share.

`Storage.from_url` picks the backend: a path (or `file://` URL) is a local folder, the embedded
default; `s3://bucket/prefix` is an S3-compatible store (`StorageSettings` says where it is).
Both give the same small API, by object name relative to the root (`a/b.json`):

- whole-object reads and writes, each write complete or absent (local: fsync and rename,
  `common.durable`; S3: one PUT);
- `create_exclusive` and `read_tagged` / `replace_if`, conditional writes for leases and other
  compare-and-swap state (S3: `If-None-Match: *` and `If-Match: <etag>`; local: a hard link of
  a staged file, and a lock file around compare-and-rename);
- a pyarrow filesystem and paths for reading Parquet in place.

A `Path`-typed setting holding `s3://bucket/x` collapses the double slash (`s3:/bucket/x`); such
a location is read as the same URL, so path settings such as `BATCH_MASTER_DIR` can hold either.

>>> import tempfile
>>> store = Storage.from_url(tempfile.mkdtemp(), StorageSettings())
>>> store.create_exclusive("lease", b"a"), store.create_exclusive("lease", b"b")
(True, False)
>>> data, tag = store.read_tagged("lease")
>>> store.replace_if("lease", b"c", tag), store.replace_if("lease", b"d", tag)
(True, False)
>>> store.read_bytes("lease"), store.list()
(b'c', ['lease'])
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from filelock import FileLock

from common.durable import fsync_directory, publish, stage, write_durably
from common.settings import StorageSettings

Location = str | os.PathLike[str]
_S3 = re.compile(r"^s3:/+(?P<bucket>[^/]+)/?(?P<prefix>.*)$")


class StorageError(OSError):
    """The store could not be reached or refused a request (a retry may succeed)."""


class Storage(ABC):
    """Objects under one root, by name; see the module docstring for what each backend does."""

    url: str

    @staticmethod
    def from_url(location: Location, settings: StorageSettings | None = None) -> Storage:
        """The storage at `location`: a local path or `file://` URL, or `s3://bucket/prefix`.

        Parameters
        ----------
        location
            Where the objects live; `s3:/bucket/prefix` (a URL that went through `Path`) is
            read as `s3://bucket/prefix`.
        settings
            The S3 endpoint and credentials, from the edge's settings tree; an `s3://`
            location needs them (nothing here reads the environment).
        """
        text = os.fspath(location)
        if match := _S3.match(text):
            if settings is None:
                raise StorageError(
                    f"{text} is on object storage: pass the STORAGE_* settings down from the edge"
                )
            return S3Storage(match["bucket"], match["prefix"], settings)
        if text.startswith("file://"):
            return LocalStorage(Path(urlsplit(text).path))
        if "://" in text:
            raise ValueError(f"unsupported storage URL {text!r}: use a path or s3://bucket/prefix")
        return LocalStorage(Path(text))

    @property
    def is_local(self) -> bool:
        return isinstance(self, LocalStorage)

    @abstractmethod
    def read_bytes(self, name: str) -> bytes:
        """The object's content; FileNotFoundError if there is none."""

    @abstractmethod
    def write_bytes(self, name: str, data: bytes) -> None:
        """Write (or replace) one object; readers see the old or the new content, whole."""

    def write_all(self, objects: Mapping[str, bytes]) -> None:
        """Write several objects, each complete or absent (there is no all-or-nothing)."""
        for name, data in objects.items():
            self.write_bytes(name, data)

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """The names of the objects under `prefix` (any depth), sorted; hidden files left out."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object; no error if there is none."""

    @abstractmethod
    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create the object only if it does not exist; False (and nothing written) if it does."""

    @abstractmethod
    def read_tagged(self, name: str) -> tuple[bytes, str]:
        """The content and a tag that changes whenever the object is replaced (its version)."""

    @abstractmethod
    def replace_if(self, name: str, data: bytes, tag: str) -> bool:
        """Replace the object only if its tag is still `tag`; False if it changed or is gone."""

    @abstractmethod
    def pyarrow_filesystem(self) -> pafs.FileSystem:
        """A pyarrow filesystem that reads these objects (with `pyarrow_path`)."""

    @abstractmethod
    def pyarrow_path(self, name: str) -> str:
        """Where `pyarrow_filesystem` finds the object `name`."""

    def exists(self, name: str) -> bool:
        try:
            self.read_bytes(name)
        except FileNotFoundError:
            return False
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LocalStorage(Storage):
    """A folder on this machine; writes are fsynced and renamed (`common.durable`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def read_bytes(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        write_durably(self._path(name), data)

    def write_all(self, objects: Mapping[str, bytes]) -> None:
        """All staged and fsynced before any is renamed, then the folders fsynced."""
        staged = []
        for name, data in objects.items():
            target = self._path(name)
            staged.append((stage(target, _writer(data)), target))
        self.root.mkdir(parents=True, exist_ok=True)
        publish(staged, also_fsync=[self.root])

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root).as_posix()
            if path.name.startswith(".") or not path.is_file():
                continue
            if relative.startswith(prefix):
                names.append(relative)
        return sorted(names)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """A staged, fsynced file hard-linked to the name: linking fails if the name exists,
        so the object appears complete, or not at all."""
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own (not `stage`'s per-process one): threads may contend too.
        staged = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with staged.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(staged, target)
        except FileExistsError:
            return False
        finally:
            staged.unlink(missing_ok=True)
        fsync_directory(target.parent)
        return True

    def read_tagged(self, name: str) -> tuple[bytes, str]:
        data = self.read_bytes(name)
        return data, hashlib.sha256(data).hexdigest()

    def replace_if(self, name: str, data: bytes, tag: str) -> bool:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(target.with_name(f".{target.name}.lock")):
            try:
                _, current = self.read_tagged(name)
            except FileNotFoundError:
                return False
            if current != tag:
                return False
            write_durably(target, data)
        return True

    def pyarrow_filesystem(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem()

    def pyarrow_path(self, name: str) -> str:
        return str(self._path(name).resolve())


class S3Storage(Storage):
    """The objects under `prefix` in `bucket` of an S3-compatible store, through botocore.

    Every call is one request (a list is one per thousand objects), with no cache, so several
    machines see each other's writes at once.
    """

    def __init__(self, bucket: str, prefix: str, settings: StorageSettings) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @cached_property
    def client(self) -> Any:
        return s3_client(self.settings)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, operation: str, **params: object) -> Any:
        """One request; a missing key is FileNotFoundError, any other failure StorageError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{self.url}: {params.get('Key')}") from exc
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise _PreconditionFailed(code) from exc
            raise StorageError(f"{self.url}: {operation} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{self.url}: {operation} failed: {exc}") from exc

    def read_bytes(self, name: str) -> bytes:
        return self.read_tagged(name)[0]

    def write_bytes(self, name: str, data: bytes) -> None:
        self._call("put_object", Key=self._key(name), Body=data)

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        names: list[str] = []
        token: str | None = None
        while True:
            params: dict[str, object] = {"Prefix": root + prefix}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list_objects_v2", **params)
            names.extend(item["Key"][len(root) :] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        # Folder markers (`a/`, which S3Proxy's filesystem backend lists) are not objects.
        return sorted(
            name for name in names if name and not name.endswith("/") and not _hidden(name)
        )

    def delete(self, name: str) -> None:
        self._call("delete_object", Key=self._key(name))

    def create_exclusive(self, name: str, data: bytes) -> bool:
        try:
            self._call("put_object", Key=self._key(name), Body=data, IfNoneMatch="*")
        except _PreconditionFailed:
            return False
        return True

    def read_tagged(self, name: str) -> tuple[bytes, str]:
        response = self._call("get_object", Key=self._key(name))
        with response["Body"] as body:
            return body.read(), str(response["ETag"])

    def replace_if(self, name: str, data: bytes, tag: str) -> bool:
        try:
            self._call("put_object", Key=self._key(name), Body=data, IfMatch=tag)
        except (_PreconditionFailed, FileNotFoundError):
            return False
        return True

    def pyarrow_filesystem(self) -> pafs.FileSystem:
        endpoint = urlsplit(self.settings.endpoint)
        return pafs.S3FileSystem(
            endpoint_override=endpoint.netloc,
            scheme=endpoint.scheme or "http",
            access_key=self.settings.access_key,
            secret_key=self.settings.secret_key,
            region=self.settings.region,
        )

    def pyarrow_path(self, name: str) -> str:
        return f"{self.bucket}/{self._key(name)}"


def _writer(data: bytes) -> Callable[[BinaryIO], object]:
    return lambda handle: handle.write(data)


def _hidden(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith(".")


class _PreconditionFailed(Exception):
    """A conditional write found the object not as required (internal to `S3Storage`)."""


def s3_client(settings: StorageSettings) -> Any:
    """A botocore S3 client of the configured store (path-style, as S3Proxy and MinIO want).

    Checksums only when an operation requires them: S3Proxy answers NotImplemented to the
    flexible checksums botocore sends by default. No proxy from the environment is used.
    """
    import botocore.session
    from botocore.config import Config

    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        proxies={},
    )
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=settings.endpoint,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        region_name=settings.region,
        config=config,
    )
