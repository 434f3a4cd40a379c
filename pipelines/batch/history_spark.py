"""The history pass as a Spark job, for a master dataset that outgrows one machine.

It counts what the local engine counts (`pipelines.batch.history.count_history_local`), by the
same join rule: Spark reads the Parquet files of the complete flushes of both topics in place (a
folder through `file://`, an `s3://` master dataset through `s3a://`), keeps the events below
the cut-off, drops every repeat of a query id but its lowest (partition, offset), joins each
query to the last label of the feedback topic for its id, and counts the distinct (text,
label) rows. Only that aggregate, with the join's totals, reaches this process; the holdout
split is made from the aggregate here, by the same function as the local engine's
(`pipelines.batch.counts.split_counts`).

The job is Spark SQL only, with no Python on the executors, so a cluster's workers need Java
and nothing of this project. One session is kept per process and reused by every run.
"""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.settings import StorageSettings
from common.storage import Location, Storage
from pipelines.batch.counts import HistoryCounts, NoData, PassTotals, pass_lineage
from streams.master_dataset import (
    FEEDBACK,
    QUERIES,
    ArchivedTopic,
    Cutoff,
    FlushFile,
    complete_files,
    open_root,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

APP_NAME = "lambda-ml-history"
MIN_JAVA = 17
_SPARK_TYPES = {
    "string": "STRING",
    "int32": "INT",
    "int64": "BIGINT",
    "timestamp[us, tz=UTC]": "TIMESTAMP",
}
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


def _ddl(topic: ArchivedTopic) -> str:
    """The Spark schema of `topic`'s files."""
    return ", ".join(f"`{f.name}` {_SPARK_TYPES[str(f.type)]}" for f in topic.schema)


def _url(storage: Storage, flush: FlushFile) -> str:
    """Where Spark reads `flush`: Hadoop paths are not percent-encoded, so no `Path.as_uri`."""
    path = storage.pyarrow_path(flush.key)
    return f"file://{path}" if storage.is_local else f"s3a://{path}"


def _below(offsets: dict[int, int]) -> "Column":
    """Spark's filter of the events below `offsets` (`streams.master_dataset.history`'s)."""
    from pyspark.sql import functions as F

    return reduce(
        lambda a, b: a | b,
        [(F.col("partition") == p) & (F.col("offset") < o) for p, o in sorted(offsets.items())],
        F.lit(False),
    )


def _read(
    spark: "SparkSession",
    root: Storage,
    topic: ArchivedTopic,
    files: list[FlushFile],
    below: dict[int, int],
) -> "DataFrame":
    """The events of `topic` in `files` below the offsets `below`, each with its `row`: one
    long from (partition, offset), ordered as they are."""
    from pyspark.sql import functions as F

    return (
        spark.read.schema(_ddl(topic))
        .parquet(*(_url(root, f) for f in files))
        .where(_below(below))
        .withColumn(
            "row", F.shiftleft(F.col("partition").cast("long"), 40).bitwiseOR(F.col("offset"))
        )
    )


def _joined(queries: "DataFrame", labels: "DataFrame | None") -> "DataFrame":
    """One row per query (its first event) and per query id of labels without a query, with
    the query's inline intent, the last label of the feedback topic (`late_intent`) and how
    many labels the topic holds for it (`late_labels`)."""
    from pyspark.sql import functions as F

    repeated = (
        queries.groupBy("query_id")
        .agg(F.min("row").alias("first_row"), F.count(F.lit(1)).alias("events"))
        .where(F.col("events") > 1)
    )
    kept = (
        queries.join(repeated, "query_id", "left")
        .where(F.col("first_row").isNull() | (F.col("row") == F.col("first_row")))
        .withColumn("repeats", F.coalesce(F.col("events") - 1, F.lit(0)))
    )
    if labels is None:
        return kept.withColumn("late_intent", F.lit(None).cast("string")).withColumn(
            "late_labels", F.lit(0)
        )
    last = labels.groupBy("query_id").agg(
        F.max_by("intent", "row").alias("late_intent"), F.count(F.lit(1)).alias("late_labels")
    )
    return kept.join(last, "query_id", "full_outer").fillna(0, ["late_labels", "repeats"])


def count_history_spark(
    master_dir: Location | Storage,
    cutoff: Cutoff | Mapping[int, int],
    storage: StorageSettings | None,
    master: str,
    conf: dict[str, str],
) -> HistoryCounts:
    """The spark engine: `count_history_local`'s counts, computed by a Spark job on `master`
    (`conf` added to the session's), with the engine, master and application id in the
    lineage, and the size of the aggregate collected.

    One aggregate holds the examples, one row per distinct (text, label), and the totals of
    the join as sums over its rows, so the job is read once."""
    from pyspark.sql import functions as F

    cutoff = Cutoff.of(cutoff)
    root = open_root(master_dir, storage)
    files = complete_files(root)
    label_files = complete_files(root, topic=FEEDBACK)
    wanted = [f for f in files if f.first < cutoff.queries.get(f.partition, 0)]
    wanted_labels = [f for f in label_files if f.first < cutoff.feedback.get(f.partition, 0)]
    if not wanted:
        raise NoData(f"no labelled queries archived in {master_dir} up to {cutoff}")
    connectors = {} if root.is_local or storage is None else s3a_conf(storage)
    spark = spark_session(master, connectors | conf)
    spark.sparkContext.setJobDescription(f"history of {root.url} up to {cutoff}")
    queries = _read(spark, root, QUERIES, wanted, cutoff.queries)
    labels = _read(spark, root, FEEDBACK, wanted_labels, cutoff.feedback) if wanted_labels else None
    rows = _joined(queries, labels)
    query = F.col("row").isNotNull()
    late = query & F.col("late_intent").isNotNull()
    inline = query & F.col("intent").isNotNull()
    counted = late | inline
    ts = F.when(counted, F.unix_micros("ts"))
    aggregate = rows.groupBy(
        F.when(counted, F.col("text")).alias("text"),
        F.when(counted, F.coalesce("late_intent", "intent")).alias("intent"),
    ).agg(
        F.count(F.when(counted, 1)).alias("count"),
        F.count(F.when(query, 1)).alias("queries"),
        F.sum("repeats").alias("duplicates_dropped"),
        F.count(F.when(inline & ~late, 1)).alias("labels_inline"),
        F.count(F.when(late, 1)).alias("labels_joined"),
        F.sum(F.when(late, F.col("late_labels") - F.when(inline, 0).otherwise(1))).alias(
            "labels_superseded"
        ),
        F.sum(F.when(~query, F.col("late_labels"))).alias("labels_without_query"),
        F.sum("late_labels").alias("feedback_labels"),
        F.min(ts).alias("ts_min"),
        F.max(ts).alias("ts_max"),
    )
    table = aggregate.toArrow()
    totals = {name: int(pc.sum(table[name]).as_py() or 0) for name in _TOTALS}
    if totals["labels_inline"] + totals["labels_joined"] == 0:
        raise NoData(f"no labelled queries archived in {master_dir} up to {cutoff}")
    micros = (pc.min(table["ts_min"]).as_py(), pc.max(table["ts_max"]).as_py())
    first, last = ((_EPOCH + timedelta(microseconds=ts)).isoformat() for ts in micros)
    found = PassTotals(
        queries=totals["queries"],
        duplicates_dropped=totals["duplicates_dropped"],
        labels_inline=totals["labels_inline"],
        labels_joined=totals["labels_joined"],
        labels_superseded=totals["labels_superseded"],
        labels_without_query=totals["labels_without_query"],
        feedback_labels=totals["feedback_labels"],
        ts_min=first,
        ts_max=last,
    )
    job = {
        "spark_master": master,
        "spark_application_id": spark.sparkContext.applicationId,
        "aggregate_bytes": str(table.nbytes),
    }
    lineage = pass_lineage(found, [f.key for f in files], [f.key for f in label_files], cutoff)
    return _counts(table, {"engine": "spark"} | lineage | job)


_TOTALS = (
    "queries",
    "duplicates_dropped",
    "labels_inline",
    "labels_joined",
    "labels_superseded",
    "labels_without_query",
    "feedback_labels",
)


def _counts(table: pa.Table, lineage: dict[str, str]) -> HistoryCounts:
    """The collected aggregate's examples in `HistoryCounts`' order: its one row without a
    text holds the queries without a label and the labels without a query, which are no
    examples."""
    table = table.filter(pc.is_valid(table["text"]))
    table = table.sort_by([("text", "ascending"), ("intent", "ascending")])
    counts = table["count"].to_numpy().astype(np.float64)
    return HistoryCounts(table["text"].to_pylist(), table["intent"].to_pylist(), counts, lineage)
