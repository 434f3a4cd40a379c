"""The history pass as a Spark job, for a master dataset that outgrows one machine.

It counts what the local engine counts (`pipelines.batch.history.count_history_local`): Spark reads
the Parquet files of the complete flushes in place (a folder through `file://`, an `s3://`
master dataset through `s3a://`), keeps the labelled events below the cut-off, drops every
repeat of a query id but its lowest (partition, offset), and counts the distinct (text, intent)
rows. Only that aggregate and three totals reach this process; the holdout split is made from
the aggregate here, by the same function as the local engine's
(`pipelines.batch.counts.split_counts`).

The job is Spark SQL only, with no Python on the executors, so a cluster's workers need Java
and nothing of this project. One session is kept per process and reused by every run.
"""

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.settings import StorageSettings
from common.storage import Location, Storage
from pipelines.batch.counts import HistoryCounts, NoData, pass_lineage
from streams.master_dataset import SCHEMA, FlushFile, complete_files, open_root

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

APP_NAME = "lambda-ml-history"
MIN_JAVA = 17
_SPARK_TYPES = {
    "string": "STRING",
    "int32": "INT",
    "int64": "BIGINT",
    "timestamp[us, tz=UTC]": "TIMESTAMP",
}
_DDL = ", ".join(f"`{f.name}` {_SPARK_TYPES[str(f.type)]}" for f in SCHEMA)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SparkUnavailable(RuntimeError):
    """The spark engine cannot start here (no pyspark, no Java, or a session that cannot
    read the master dataset)."""


def java_version() -> int:
    """The major version of the Java that Spark would start (`JAVA_HOME`, else `java` on the
    PATH); `SparkUnavailable` if there is none."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise SparkUnavailable(
            f"the spark engine needs Java {MIN_JAVA} or newer: install it (for example "
            "openjdk-17-jre-headless) or set JAVA_HOME, or use BATCH_ENGINE=local"
        )
    shown = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', shown.stderr + shown.stdout)
    if not found:
        raise SparkUnavailable(f"cannot tell the version of {java}: {shown.stderr.strip()}")
    major = int(found[1])
    return int(found[2] or 0) if major == 1 else major


def hadoop_version() -> str:
    """The Hadoop version pyspark ships, which the s3a connector (`hadoop-aws`) must match."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    for jar in jars.glob("hadoop-client-api-*.jar"):
        return jar.name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    raise SparkUnavailable(f"no hadoop-client-api jar in {jars}")


def s3a_conf(settings: StorageSettings) -> dict[str, str]:
    """The session configuration that reads `s3a://` from the store `settings` describe:
    the `hadoop-aws` connector of pyspark's Hadoop (fetched from Maven Central into the Ivy
    cache on first use) and the endpoint, path-style, as S3Proxy and MinIO want."""
    endpoint = settings.endpoint
    hadoop = {
        "fs.s3a.endpoint": endpoint,
        "fs.s3a.endpoint.region": settings.region,
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https://")).lower(),
        "fs.s3a.access.key": settings.access_key,
        "fs.s3a.secret.key": settings.secret_key,
        "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
    }
    return {"spark.jars.packages": f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"} | {
        f"spark.hadoop.{key}": value for key, value in hadoop.items()
    }


def session_conf(master: str, conf: dict[str, str]) -> dict[str, str]:
    """The session's configuration: quiet (no UI; the console progress bar only on a
    terminal), UTC, and, in local mode, two shuffle partitions a core; `conf` over all that."""
    local = re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]|local", master)
    defaults = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
        "spark.sql.session.timeZone": "UTC",
        "spark.log.level": "ERROR",
    }
    if local:
        cores = local[1] if local[1] and local[1] != "*" else str(os.cpu_count() or 1)
        defaults["spark.sql.shuffle.partitions"] = str(2 * int(cores))
        defaults["spark.driver.memory"] = "4g"  # the executors run in the driver here
    return defaults | conf


_session: tuple[tuple, "SparkSession"] | None = None


def spark_session(master: str, conf: dict[str, str]) -> "SparkSession":
    """This process's Spark session on `master` with `conf` (`session_conf`), started on first
    use and reused while they stay the same; a change starts a new one. Connectors
    (`spark.jars.packages`) load with the process's first session only, so a later session that
    needs other ones raises `SparkUnavailable`."""
    global _session
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailable(
            "the spark engine needs pyspark: pip install 'lambda-ml[spark]'"
        ) from exc
    wanted = session_conf(master, conf)
    key = (master, tuple(sorted(wanted.items())))
    if _session is not None:
        if _session[0] == key:
            return _session[1]
        packages = dict(_session[0][1]).get("spark.jars.packages")
        if wanted.get("spark.jars.packages") != packages:
            raise SparkUnavailable(
                f"this process's Spark session started with connectors {packages!r}; "
                f"{wanted.get('spark.jars.packages')!r} needs a process of its own"
            )
        _session[1].stop()
        _session = None
    if (found := java_version()) < MIN_JAVA:
        raise SparkUnavailable(f"the spark engine needs Java {MIN_JAVA} or newer; found {found}")
    builder = SparkSession.builder.master(master).appName(APP_NAME)
    for name, value in wanted.items():
        builder = builder.config(name, value)
    session = builder.getOrCreate()
    _session = (key, session)
    return session


def _url(storage: Storage, flush: FlushFile) -> str:
    """Where Spark reads `flush`: Hadoop paths are not percent-encoded, so no `Path.as_uri`."""
    path = storage.pyarrow_path(flush.key)
    return f"file://{path}" if storage.is_local else f"s3a://{path}"


def _below(cutoff: dict[int, int]) -> "Column":
    """Spark's filter of the events below `cutoff` (`streams.master_dataset.history`'s)."""
    from pyspark.sql import functions as F

    return reduce(
        lambda a, b: a | b,
        [(F.col("partition") == p) & (F.col("offset") < o) for p, o in sorted(cutoff.items())],
    )


def count_history_spark(
    master_dir: Location | Storage,
    cutoff: dict[int, int],
    storage: StorageSettings | None,
    master: str,
    conf: dict[str, str],
) -> HistoryCounts:
    """The spark engine: `count_history_local`'s counts, computed by a Spark job on `master`
    (`conf` added to the session's), with the engine, master and application id in the
    lineage, and the size of the aggregate collected."""
    from pyspark.sql import functions as F

    root = open_root(master_dir, storage)
    files = complete_files(root)
    wanted = [f for f in files if f.first < cutoff.get(f.partition, 0)]
    if not wanted:
        raise NoData(f"no labelled events archived in {master_dir} up to {cutoff}")
    connectors = {} if root.is_local or storage is None else s3a_conf(storage)
    spark = spark_session(master, connectors | conf)
    spark.sparkContext.setJobDescription(f"history of {root.url} up to {cutoff}")
    events = (
        spark.read.schema(_DDL)
        .parquet(*(_url(root, f) for f in wanted))
        .where(_below(cutoff) & F.col("intent").isNotNull())
        .withColumn(
            "row", F.shiftleft(F.col("partition").cast("long"), 40).bitwiseOR(F.col("offset"))
        )
    )
    [(labelled, ts_min, ts_max)] = events.agg(
        F.count(F.lit(1)), F.unix_micros(F.min("ts")), F.unix_micros(F.max("ts"))
    ).collect()
    if labelled == 0:
        raise NoData(f"no labelled events archived in {master_dir} up to {cutoff}")
    repeated = (
        events.groupBy("query_id")
        .agg(F.min("row").alias("first_row"), F.count(F.lit(1)).alias("events"))
        .where(F.col("events") > 1)
        .select("query_id", "first_row")
    )
    first_of_each = events.join(repeated, "query_id", "left").where(
        F.col("first_row").isNull() | (F.col("row") == F.col("first_row"))
    )
    aggregate = first_of_each.groupBy("text", "intent").agg(F.count(F.lit(1)).alias("count"))
    table = aggregate.toArrow()
    job = {
        "spark_master": master,
        "spark_application_id": spark.sparkContext.applicationId,
        "aggregate_bytes": str(table.nbytes),
    }
    first, last = ((_EPOCH + timedelta(microseconds=ts)).isoformat() for ts in (ts_min, ts_max))
    rows = int(pc.sum(table["count"]).as_py())
    lineage = pass_lineage(rows, labelled - rows, first, last, [f.key for f in files], cutoff)
    return _counts(table, {"engine": "spark"} | lineage | job)


def _counts(table: pa.Table, lineage: dict[str, str]) -> HistoryCounts:
    """The collected aggregate in `HistoryCounts`' order. Rows without a text are events (the
    pass's `rows` counts them, as the local engine does) but not examples: they are left out."""
    table = table.filter(pc.is_valid(table["text"]))
    table = table.sort_by([("text", "ascending"), ("intent", "ascending")])
    counts = table["count"].to_numpy().astype(np.float64)
    return HistoryCounts(table["text"].to_pylist(), table["intent"].to_pylist(), counts, lineage)
