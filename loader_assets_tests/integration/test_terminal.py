"""What an operator's terminal shows (README "Two commands"): the loader's own lines, not Spark's jar
resolution or its startup warnings; and a jar list resolved once per machine."""

import hashlib
import os
import re
import subprocess
import sys

import pytest

from loader_assets.resources.spark import delta_packages, jar_cache_dir, resolve_jars

pytestmark = pytest.mark.spark

# What Spark prints when it resolves spark.jars.packages with Ivy, and its log4j lines at startup
NOISE = re.compile(r"^(::|Ivy Default Cache|The jars for the packages|\s*found |downloading |\s*\[SUCCESSFUL|"
                   r"\s*confs:|\s*\|.*\||-{10,}|Host .* not found|.* WARN |.* INFO |Using Spark's default log4j|"
                   r"Setting default log level|To adjust logging level)")


def test_a_cli_run_prints_the_loaders_summary_and_nothing_of_sparks(lake, spark):
    lake.write_parquet("events", "a.parquet", [1, 2, 3], days_ago=1)
    lake.config()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADER_ASSETS_KILL")}
    done = subprocess.run([sys.executable, "-m", "loader_assets", "run", "--config", str(lake.config_path),
                           "--skip-checks"], capture_output=True, text=True, cwd=lake.root, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert [line for line in lines if NOISE.match(line)] == [], "\n".join(lines)
    assert "=== LOAD SUMMARY ===" in done.stdout and "Overall Status: SUCCESS" in done.stdout
    # what remains besides the summary: the JVM's own notice of Spark's incubator module (no option silences it)
    assert [line for line in lines if line not in done.stdout.splitlines()] in (
        [], ["WARNING: Using incubator modules: jdk.incubator.vector"]), "\n".join(lines)


def test_the_jar_list_is_resolved_once_and_again_when_its_files_are_gone(tmp_path, monkeypatch, spark):
    packages = delta_packages()
    jars = resolve_jars(packages)  # the shared cache: the session fixture resolved it already
    assert any("delta-spark" in jar for jar in jars) and all(os.path.isfile(jar) for jar in jars)
    assert resolve_jars(packages) == jars

    monkeypatch.setenv("LOADER_ASSETS_JAR_CACHE", str(tmp_path / "cache"))
    jar_cache_dir().mkdir(parents=True)
    # a cached list whose files are gone is not trusted: resolution runs, and names the package it failed on
    bogus = "org.example.loader-assets:does-not-exist:0.0.1"
    stale = jar_cache_dir() / f"jars-{hashlib.sha256(bogus.encode()).hexdigest()[:16]}.txt"
    stale.write_text(str(tmp_path / "gone.jar") + "\n")
    with pytest.raises(RuntimeError, match="could not resolve the Spark packages " + re.escape(bogus)):
        resolve_jars(bogus)
    # a cached list whose files exist is used as it is
    present = tmp_path / "present.jar"
    present.write_bytes(b"")
    stale.write_text(f"{present}\n")
    assert resolve_jars(bogus) == [str(present)]
