"""What every Java service needs: a Java 17+ runtime, and its jars fetched from Maven Central.

Kafka 4 brokers need Java 17+, and S3Proxy 3 is built for it: one check serves both.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from common.processes import ServiceError

MINIMUM = 17
# The C1-only JIT and the serial GC make a JVM ready sooner on a small machine; the services'
# throughput is unchanged, as their Python clients are the bottleneck.
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
_INSTALL = {"java": "openjdk-17-jre-headless", "mvn": "maven"}


def require_java(maven: bool = False) -> str:
    """The path of a Java 17+ `java` (and check `mvn` if `maven`), or a clear error."""
    problems: dict[str, str] = {}
    java = shutil.which("java")
    if java is None:
        problems["java"] = f"java not found (Java {MINIMUM}+ is needed)"
    elif major(version := java_version(java)) < MINIMUM:
        problems["java"] = f"java {version} found, Java {MINIMUM}+ is needed"
    if maven and shutil.which("mvn") is None:
        problems["mvn"] = "mvn not found (Maven fetches the jars)"
    if problems or java is None:
        packages = " ".join(_INSTALL[tool] for tool in problems)
        raise ServiceError(
            f"{'; '.join(problems.values())}; install with: sudo apt-get install {packages}"
        )
    return java


@functools.cache
def java_version(java: str) -> str:
    """The version `java -version` reports, e.g. "17.0.15" (or "1.8.0_402" on Java 8)."""
    output = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    found = re.search(r'version "([^"]+)"', output)
    return found.group(1) if found else "0"


def major(version: str) -> int:
    """The major version, by either numbering scheme.

    >>> major("17.0.15"), major("1.8.0_402"), major("21")
    (17, 8, 21)
    """
    parts = [int(part) for part in re.findall(r"\d+", version)[:2]] + [0]
    return parts[1] if parts[0] == 1 else parts[0]


class JarCache(Protocol):
    """Where a Java service's settings keep its jars: `cache_dir`, or else its `home`."""

    @property
    def home(self) -> Path: ...

    @property
    def cache_dir(self) -> Path | None: ...


def cache_folder(local: JarCache, name: str) -> Path:
    """The folder `name` of the jar cache, shared by every home that names the same cache."""
    return (local.cache_dir or local.home).resolve() / name


def fetch_once(folder: Path, what: str, goal: Sequence[str], pom: Path | None = None) -> Path:
    """Have Maven copy jars into `folder` (`goal` names them; `pom` is the project that
    declares them, if any), once; returns `folder`.

    A marker file written last makes an interrupted fetch start over instead of leaving
    missing jars; the lock lets concurrent fetches (tests, CLI) share one download.
    """
    marker = folder / ".complete"
    if marker.exists():
        return folder
    require_java(maven=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{folder.name}.lock"):
        if marker.exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        command = ["mvn", "-q", "-B", "-Dstyle.color=never"]
        if pom is not None:  # Maven runs on a copy of the pom so the repository stays clean
            copy = folder.parent / f"{folder.name}.pom.xml"
            shutil.copyfile(pom, copy)
            command += ["-f", str(copy)]
        command += [*goal, f"-DoutputDirectory={folder}"]
        run_tool(command, f"Maven could not fetch {what}:")
        if not any(folder.glob("*.jar")):
            raise ServiceError(f"Maven fetched no jar of {what} into {folder}")
        marker.write_text(f"{what}\n")
    return folder


def write_properties(path: Path, properties: Mapping[str, str]) -> Path:
    """Write a Java properties file (its folder created); returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path


def run_tool(command: Sequence[str], failure: str) -> None:
    """Run a command to its end; a ServiceError saying `failure`, with the end of its output,
    if it fails."""
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise ServiceError(failure, tail)
