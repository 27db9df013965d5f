"""Everything on S3 at once, through the CLI as a deployment runs it: landing zone, target tables (Spark through
Hadoop's S3A connector), tracker, lock and event log (delta-rs) all under ``s3://`` on a real S3-compatible
server (moto's server mode).

Every Spark step runs in a CLI process of its own (``python -m loader_assets``): its session is built from the
config's ``spark.conf`` (hadoop-aws on the classpath, the S3A endpoint, path-style access, plain http, credentials
from the environment), which a session already started in the test process could not take. The test process
itself reads the results with delta-rs and boto3 only.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable

from loader_assets.core import faults
from loader_assets_tests.conftest import TEST_SPARK_CONF

pytestmark = [pytest.mark.s3, pytest.mark.spark, pytest.mark.extended]


def hadoop_version() -> str:
    """The Hadoop version pyspark ships (``hadoop-client-api-<version>.jar``): hadoop-aws must match it."""
    import pyspark

    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert jars, "pyspark ships no hadoop-client-api jar"
    return jars[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def s3a_conf(endpoint: str) -> dict[str, str]:
    """The Spark confs that put target tables on S3 (what the README documents). No credential among them."""
    return {
        "spark.jars.packages": f"org.apache.hadoop:hadoop-aws:{hadoop_version()}",
        # s3:// paths (the ones pyarrow and delta-rs take) go through S3A too, so every component names a file alike
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.aws.credentials.provider":
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
    }


CUSTOMERS = pa.schema([("customer_id", pa.int64()), ("name", pa.string()),
                       ("updated_at", pa.timestamp("us", tz="UTC"))])
EVENTS = pa.schema([("id", pa.int64()), ("name", pa.string())])


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def events_file(ids: list[int]) -> bytes:
    return parquet_bytes(pa.table({"id": ids, "name": [f"n{i}" for i in ids]}, schema=EVENTS))


def customers_file(rows: list[tuple[int, str, int]]) -> bytes:
    return parquet_bytes(pa.Table.from_pylist(
        [{"customer_id": k, "name": n, "updated_at": datetime(2025, 1, day, tzinfo=UTC)} for k, n, day in rows],
        schema=CUSTOMERS))


class Deployment:
    """A config file on local disk naming only s3:// locations, and the CLI run against it."""

    def __init__(self, root: Path, s3) -> None:
        self.root, self.s3 = root, s3
        self.outputs: list[str] = []
        raw = {
            "target_root": s3.uri("lake"),
            "checkpoint_path": s3.uri("checkpoints"),
            "state_storage": {"provider": "s3"},
            "retry_attempts": 0,
            "retry_backoff_seconds": 0,
            "lock_wait_seconds": 60,
            "spark": {"master": "local[2]", "conf": {**TEST_SPARK_CONF, **s3a_conf(s3.server.endpoint)}},
            "tables": [
                {"table_name": "events", "source_path": s3.uri("landing/events"), "file_format": "parquet"},
                {"table_name": "customers", "source_path": s3.uri("landing/customers"), "file_format": "parquet",
                 "loading_strategy": "scd2", "primary_keys": ["customer_id"], "tracking_columns": ["name"],
                 "scd2_sequence_column": "updated_at"},
            ],
        }
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(raw))
        self.home = root / "dagster_home"
        self.home.mkdir()

    def cli(self, *args: str, kill_at: str | None = None) -> tuple[int, str]:
        env = {**os.environ, "DAGSTER_HOME": str(self.home)}
        env.pop(faults.KILL_AT_ENV, None)
        if kill_at:
            env[faults.KILL_AT_ENV] = kill_at
        done = subprocess.run([sys.executable, "-m", "loader_assets", *args, "--config", str(self.config)],
                              env=env, cwd=self.root, capture_output=True, text=True, timeout=900)
        self.outputs += [done.stdout, done.stderr]
        return done.returncode, done.stdout + "\n--- stderr ---\n" + done.stderr[-4000:]

    def table(self, name: str) -> list[dict]:
        return DeltaTable(self.s3.uri(f"lake/{name}")).to_pyarrow_table().to_pylist()

    def tracker(self, name: str) -> dict[str, str]:
        rows = DeltaTable(self.s3.uri(f"checkpoints/file_processing_tracker/{name}")).to_pyarrow_table()
        return dict(zip(rows["file_path"].to_pylist(), rows["status"].to_pylist(), strict=True))


def test_append_scd2_redelivery_corrupt_file_kill_and_validate_all_on_s3(tmp_path, s3):
    """The whole life of two tables on S3: a first run loads an append table and an scd2 table and fails a
    corrupt file (the others commit); a re-delivered, changed file replaces its rows and an scd2 change closes
    the old version; a run SIGKILLed right after its target commit is recovered by the next run without loading
    again; ``validate-consistency`` finds the tracker, the tables and the locks consistent. Then every output of
    every process, every object in the bucket and every local file is searched for the credentials: none holds
    them."""
    d = Deployment(tmp_path, s3)
    a = s3.put("landing/events/a.parquet", events_file([1, 2]))
    b = s3.put("landing/events/b.parquet", events_file([3]))
    bad = s3.put("landing/events/bad.parquet", b"this is not parquet" * 10)
    s3.put("landing/customers/c1.parquet", customers_file([(1, "ann", 1), (2, "bob", 1)]))

    code, out = d.cli("run", "--json")
    assert code == 1, out  # the corrupt file failed; the good ones are committed
    summary = json.loads(out.split("\n--- stderr ---\n")[0])
    assert summary["total_files_failed"] == 1 and summary["total_files_processed"] == 3, out
    assert sorted((r["id"], r["_source_file"]) for r in d.table("events")) == [(1, a), (2, a), (3, b)]
    assert d.tracker("events") == {a: "completed", b: "completed", bad: "failed"}
    assert sorted((r["customer_id"], r["name"], r["is_current"]) for r in d.table("customers")) == [
        (1, "ann", True), (2, "bob", True)]
    # Spark wrote the target through S3A: its Delta log is in the bucket
    assert any(k.startswith("lake/events/_delta_log/00000000000000000000.json") for k in s3.keys("lake/"))

    s3.put("landing/events/a.parquet", events_file([1, 2, 10]))  # re-delivered with another row
    s3.put("landing/customers/c2.parquet", customers_file([(1, "anne", 2)]))
    code, out = d.cli("skip", "--table", "events", "--file", bad, "--reason", "vendor sent junk")
    assert code == 0, out
    code, out = d.cli("run", "--json")
    assert code == 0, out
    assert sorted((r["id"], r["_source_file"]) for r in d.table("events")) == [(1, a), (2, a), (3, b), (10, a)]
    customers = sorted((r["customer_id"], r["name"], r["is_current"]) for r in d.table("customers"))
    assert customers == [(1, "ann", False), (1, "anne", True), (2, "bob", True)]

    c = s3.put("landing/events/c.parquet", events_file([20]))
    code, out = d.cli("run", kill_at=faults.AFTER_TARGET_COMMIT)
    assert code == -signal.SIGKILL, out
    assert d.tracker("events")[c] == "processing"  # the kill left the claim; the target has the commit
    code, out = d.cli("run", "--json")
    assert code == 0, out
    recovered = json.loads(out.split("\n--- stderr ---\n")[0])
    assert recovered["total_files_processed"] == 0, out  # the killed run's commit recovered, not loaded again
    assert sorted(r["id"] for r in d.table("events")) == [1, 2, 3, 10, 20]
    assert d.tracker("events") == {a: "completed", b: "completed", bad: "skipped", c: "completed"}

    code, out = d.cli("validate-consistency", "--json")
    assert code == 0, out
    report = json.loads(out.split("\n--- stderr ---\n")[0])
    assert report["overall_status"] == "CONSISTENT" and report["total_files_checked"] >= 6, out

    # no credential anywhere: process outputs, every object in the bucket (logs, commit metadata, data), local files
    client = s3.server.client()
    haystack = [text.encode() for text in d.outputs]
    haystack += [client.get_object(Bucket=s3.name, Key=key)["Body"].read() for key in s3.keys()]
    haystack += [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert any(s3.name.encode() in item for item in haystack)  # the search does see what the runs wrote
    for secret in (s3.server.secret_access_key, s3.server.access_key_id):
        assert not [item[:200] for item in haystack if secret.encode() in item]
