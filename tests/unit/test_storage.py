"""Storage by URL, local backend: whole writes, listing, conditional writes, pyarrow paths.

The S3 backend runs the same checks against the real S3Proxy in
tests/integration/test_object_store.py.
"""

import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.settings import StorageSettings
from common.storage import LocalStorage, S3Storage, Storage


def test_urls_pick_the_backend():
    settings = StorageSettings()
    assert isinstance(Storage.from_url("var/master", settings), LocalStorage)
    assert isinstance(Storage.from_url(Path("/tmp/x"), settings), LocalStorage)
    assert Storage.from_url("file:///tmp/x", settings).url == "/tmp/x"
    s3 = Storage.from_url("s3://bucket/some/prefix/", settings)
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.url == "s3://bucket/some/prefix"
    assert s3.pyarrow_path("a/b.parquet") == "bucket/some/prefix/a/b.parquet"
    # A URL that went through a Path-typed setting has lost a slash: it is the same URL.
    assert Storage.from_url(Path("s3://bucket/master"), settings).url == "s3://bucket/master"
    assert Storage.from_url("s3://bucket", settings).url == "s3://bucket"
    with pytest.raises(ValueError, match="unsupported"):
        Storage.from_url("gs://bucket/x", settings)


def test_local_reads_writes_lists_and_deletes(tmp_path):
    store = Storage.from_url(tmp_path / "root")
    assert store.list() == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("missing")
    store.write_bytes("a/b.txt", b"one")
    store.write_all({"a/c.txt": b"two", "d.txt": b"three"})
    (tmp_path / "root" / "a" / ".hidden.tmp").write_bytes(b"partial")
    assert store.list() == ["a/b.txt", "a/c.txt", "d.txt"]
    assert store.list("a/") == ["a/b.txt", "a/c.txt"]
    assert store.read_bytes("a/c.txt") == b"two" and store.exists("d.txt")
    store.delete("a/b.txt")
    store.delete("a/b.txt")  # deleting what is gone is no error
    assert store.list("a/") == ["a/c.txt"]
    assert not [p for p in (tmp_path / "root").rglob("*.tmp") if p.name != ".hidden.tmp"]


def test_local_create_exclusive_only_once_and_leaves_no_temporary_file(tmp_path):
    store = Storage.from_url(tmp_path)
    assert store.create_exclusive("locks/lease", b"first") is True
    assert store.create_exclusive("locks/lease", b"second") is False
    assert store.read_bytes("locks/lease") == b"first"
    assert sorted(os.listdir(tmp_path / "locks")) == ["lease"]


def test_local_create_exclusive_has_one_winner_among_threads(tmp_path):
    store = Storage.from_url(tmp_path)
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        if store.create_exclusive("lease", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.read_bytes("lease") == str(wins[0]).encode()


def test_local_replace_if_compares_the_tag(tmp_path):
    store = Storage.from_url(tmp_path)
    assert store.replace_if("absent", b"x", "any") is False
    store.write_bytes("state", b"v1")
    data, tag = store.read_tagged("state")
    assert data == b"v1"
    assert store.replace_if("state", b"v2", tag) is True
    assert store.replace_if("state", b"v3", tag) is False  # the tag is stale now
    data, new_tag = store.read_tagged("state")
    assert data == b"v2" and new_tag != tag


def test_local_pyarrow_filesystem_reads_parquet_in_place(tmp_path):
    store = Storage.from_url(tmp_path)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": [1, 2, 3]}), sink)
    store.write_bytes("t/x.parquet", sink.getvalue().to_pybytes())
    table = pq.read_table(store.pyarrow_path("t/x.parquet"), filesystem=store.pyarrow_filesystem())
    assert table["x"].to_pylist() == [1, 2, 3]
