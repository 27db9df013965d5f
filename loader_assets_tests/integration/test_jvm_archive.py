"""The Spark class archive (resources/jvm_archive.py): built once per machine, and used by the loader's JVMs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loader_assets.resources import jvm_archive
from loader_assets.resources.spark import spark_config

# in a JVM of its own: the loader's session with the archive required (-Xshare:on makes a JVM that cannot map it
# refuse to start, where the loader's -Xshare:auto would quietly load classes from the jars instead)
_STRICT_START = """
import json, sys
from loader_assets.resources.spark import get_or_create_spark
args = json.loads(sys.argv[1])
spark = get_or_create_spark("local[1]", "archive-check", {"spark.ui.enabled": "false",
                                                          "spark.driver.extraJavaOptions": args["options"]})
spark.range(5).write.format("delta").save(args["table"])
print("ROWS", spark.read.format("delta").load(args["table"]).count())
"""


@pytest.mark.spark
def test_the_archive_exists_and_every_loader_session_is_started_with_it(spark):
    path = jvm_archive.archive_path()
    assert path is not None and path.is_file() and path.stat().st_size > 10_000_000, path  # built by conftest
    options = jvm_archive.java_options()
    assert f"-XX:SharedArchiveFile={path}" in options and "-Xshare:auto" in options
    assert f"-XX:SharedArchiveFile={path}" in spark.sparkContext.getConf().get("spark.driver.extraJavaOptions")
    built = spark_config("local[1]", "x", {"spark.driver.extraJavaOptions": "-Xmx1g"})
    assert built["spark.driver.extraJavaOptions"].endswith(f"-Xmx1g {options}")
    # a user's own archive option wins: the loader adds none
    own = spark_config("local[1]", "x", {"spark.driver.extraJavaOptions": "-XX:SharedArchiveFile=/mine.jsa"})
    assert "SharedArchiveFile" not in own["spark.driver.extraJavaOptions"].replace("-XX:SharedArchiveFile=/mine.jsa", "")


def test_the_archive_key_changes_with_what_the_jvm_checks(tmp_path):
    """A JVM refuses an archive whose class-path jar has another size or modification time; such a class path
    gets another key (CI once re-created its virtualenv at the same path, kept the archive of the old one, and
    every JVM quietly loaded its classes from the jars)."""
    java, home = tmp_path / "java", tmp_path / "spark"
    (home / "jars").mkdir(parents=True)
    java.write_bytes(b"java")
    jar = home / "jars" / "spark-core.jar"
    jar.write_bytes(b"classes")
    os.utime(jar, (1_700_000_000, 1_700_000_000))
    first = jvm_archive.archive_key(java, home, "4.1.0")
    assert jvm_archive.archive_key(java, home, "4.1.0") == first  # stable while nothing changes
    os.utime(jar, (1_700_000_100, 1_700_000_100))  # the same bytes, installed again
    touched = jvm_archive.archive_key(java, home, "4.1.0")
    jar.write_bytes(b"classes, another build")
    os.utime(jar, (1_700_000_100, 1_700_000_100))
    rebuilt = jvm_archive.archive_key(java, home, "4.1.0")
    (home / "jars" / "extra.jar").write_bytes(b"x")
    added = jvm_archive.archive_key(java, home, "4.1.0")
    other_spark = jvm_archive.archive_key(java, home, "4.1.1")
    assert len({first, touched, rebuilt, added, other_spark}) == 5


def test_the_archive_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(jvm_archive.DISABLE_ENV, "1")
    assert jvm_archive.java_options() == ""
    assert jvm_archive.build() is None
    assert "SharedArchiveFile" not in spark_config("local[1]", "x", {})["spark.driver.extraJavaOptions"]


@pytest.mark.spark
def test_a_spark_jvm_maps_the_archive_for_its_class_path(spark, tmp_path):
    """The archive fits the class path Spark's launcher gives the driver JVM: with sharing required, the JVM
    starts and writes a Delta table (with a class path that did not fit, it would refuse to start)."""
    path = jvm_archive.archive_path()
    args = json.dumps({"options": f"-XX:SharedArchiveFile={path} -Xshare:on", "table": str(tmp_path / "t")})
    done = subprocess.run([sys.executable, "-c", _STRICT_START, args], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0 and "ROWS 5" in done.stdout, done.stderr[-3000:]
    # and the same check does fail for an archive that does not fit (so the assertion above can fail)
    other = tmp_path / "not-an-archive.jsa"
    other.write_bytes(b"\0" * 4096)
    args = json.dumps({"options": f"-XX:SharedArchiveFile={other} -Xshare:on", "table": str(tmp_path / "u")})
    refused = subprocess.run([sys.executable, "-c", _STRICT_START, args], capture_output=True, text=True,
                             timeout=600, check=False)
    assert refused.returncode != 0 and "ROWS" not in refused.stdout


def test_prepare_spark_reports_the_jars_and_the_archive_it_finds(lake, capsys):
    from loader_assets.cli import main

    lake.config()
    assert main(["prepare-spark", "--config", str(lake.config_path)]) == 0
    out = capsys.readouterr().out
    assert f"Spark class archive: {jvm_archive.archive_path()}" in out  # built by conftest: found, not rebuilt
    assert "Spark jars: " in out and " resolved in " in out
