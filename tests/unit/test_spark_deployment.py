"""The Spark cluster in docker-compose.yml agrees with the code: the image is the pyspark pin's
version, the scheduler submits to its master, and the worker reads the master dataset where
the scheduler does."""

import json
import tomllib

from tests.unit.test_compose import ROOT, environment, mounted_volume, resolved_compose

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyspark_pin() -> str:
    (pin,) = [d for d in PYPROJECT["project"]["optional-dependencies"]["spark"] if "pyspark" in d]
    return pin.split("==")[1].split()[0]


def test_the_spark_image_is_the_version_pyspark_is_pinned_to():
    services = resolved_compose()["services"]
    for name in ("spark-master", "spark-worker"):
        image, _, tag = services[name]["image"].partition(":")
        assert image == "apache/spark" and tag == pyspark_pin(), name


def test_the_scheduler_submits_its_history_pass_to_the_spark_master():
    services = resolved_compose()["services"]
    schedule = services["schedule"]
    env = environment(schedule)
    assert env["BATCH_ENGINE"] == "spark"
    host, _, port = env["BATCH_SPARK_MASTER"].removeprefix("spark://").partition(":")
    master = services[host]
    assert port in master["command"] and host in master["command"]
    assert f"spark://{host}:{port}" in services["spark-worker"]["command"]
    conf = json.loads(env["BATCH_SPARK_CONF"])
    assert conf["spark.driver.host"] == schedule["hostname"]


def test_the_worker_reads_the_master_dataset_where_the_scheduler_does():
    services = resolved_compose()["services"]
    folder = environment(services["schedule"])["BATCH_MASTER_DIR"]
    read_by_scheduler = mounted_volume(services["schedule"], folder)
    read_by_worker = mounted_volume(services["spark-worker"], folder)
    assert read_by_scheduler and read_by_worker
    assert read_by_worker[:2] == read_by_scheduler[:2]


def test_the_bento_leaves_pyspark_out():
    bento = (ROOT / "bentofile.yaml").read_text()
    assert "pyspark" not in bento
    assert not any("pyspark" in d for d in PYPROJECT["project"]["dependencies"])
