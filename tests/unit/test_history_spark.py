"""The Spark session's configuration and the clear failure without Java: no session started."""

import pytest

from pipelines.batch.history_spark import SparkUnavailable, java_version, session_conf


def test_local_mode_is_quiet_and_shuffles_into_two_partitions_a_core():
    conf = session_conf("local[2]", {})
    assert conf["spark.sql.shuffle.partitions"] == "4"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.ui.showConsoleProgress"] == "false"  # pytest's stderr is no terminal
    assert conf["spark.sql.session.timeZone"] == "UTC"


def test_a_cluster_keeps_its_own_shuffle_and_the_settings_come_last():
    conf = session_conf("spark://spark-master:7077", {"spark.ui.enabled": "true"})
    assert "spark.sql.shuffle.partitions" not in conf
    assert conf["spark.ui.enabled"] == "true"


def test_without_java_the_spark_engine_says_what_it_needs(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(SparkUnavailable, match="needs Java 17 or newer.*BATCH_ENGINE=local"):
        java_version()


def test_this_machine_has_a_java_spark_can_use():
    assert java_version() >= 17
