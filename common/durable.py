"""Durable writes: a file is complete on disk under its final name, or not there at all.

Every writer of the project (snapshots, the master dataset, the drift signal, pid files, champion
files) goes through here, so all of them survive a crash the same way: write to a temporary name
in the target's folder, fsync the file, rename it over the target, fsync the folder.
"""

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]


def fsync_directory(path: Path) -> None:
    """fsync a folder, so that files created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage(target: Path, write: Writer) -> Path:
    """Write `target`'s content with `write` to a temporary file beside it, fsynced; returns
    the temporary file, which `publish` renames into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return temporary


def publish(staged: Sequence[tuple[Path, Path]], also_fsync: Sequence[Path] = ()) -> None:
    """Rename each staged (temporary, target) pair into place, then fsync every folder that
    changed (and `also_fsync`, such as a parent that gained a new folder)."""
    for temporary, target in staged:
        os.replace(temporary, target)
    for folder in {target.parent for _, target in staged} | set(also_fsync):
        fsync_directory(folder)


def write_durably(target: Path, content: bytes | Writer) -> Path:
    """Write one file durably: `content` is its bytes, or a function writing to the handle.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_durably(folder / "a.txt", b"hello").read_bytes()
    b'hello'
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
    """
    write = content if callable(content) else (lambda handle: handle.write(content))
    publish([(stage(target, write), target)])
    return target
