"""Runs over Spark Connect: the CLI attaches to a real server (no JVM in its process), loads append and SCD2
tables exactly as a local session does, replayed commits are skipped, and a client killed during a write
leaves the batch to land once. docs/ARCHITECTURE.md, "Spark Connect"."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loader_assets.core import faults
from loader_assets.settings import load_settings
from loader_assets_tests.conftest import TEST_SPARK_CONF, set_mtime
from loader_assets_tests.connect.conftest import run_client
from loader_assets_tests.deployments import cli, two_tables, wait_for, write_small_files

pytestmark = [pytest.mark.connect, pytest.mark.spark]

def table_rows(spark, path: Path, drop_prefix: str) -> list[tuple]:
    """Every row but the load timestamp and batch id, with ``_source_file`` relative to the lake."""
    frame = spark.read.format("delta").load(str(path))
    columns = sorted(c for c in frame.columns if c not in ("_load_timestamp", "_batch_id"))
    return sorted(tuple(str(v).replace(drop_prefix, "") if isinstance(v, str) else v for v in row)
                  for row in frame.select(*columns).collect())


def test_cli_over_connect_loads_like_a_local_session_without_a_jvm(spark, connect_server, tmp_path):
    from loader_assets_tests.conftest import Lake

    remote_lake, local_lake = Lake(tmp_path / "remote"), Lake(tmp_path / "local")  # Lake creates its root
    remote_lake.config(two_tables(), spark={"master": "local[2]", "remote": connect_server.url, "conf": TEST_SPARK_CONF})
    local_lake.config(two_tables())
    for lake in (remote_lake, local_lake):
        write_small_files(lake)

    # JAVA_HOME pointing nowhere: if the CLI started a JVM of its own, it would fail
    code, out, err = cli(remote_lake, "run", "--json", env={"JAVA_HOME": "/nonexistent"})
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert {name: (t["files_processed"], t["files_failed"]) for name, t in summary["tables"].items()} == {
        "events": (4, 0), "customers": (3, 0)}
    code, out, err = cli(remote_lake, "validate-consistency", env={"JAVA_HOME": "/nonexistent"})
    assert code == 0, out + err[-2000:]

    from loader_assets.cli import main
    os.environ["DAGSTER_HOME"] = str(local_lake.root / "dagster_home")
    os.chdir(local_lake.root)
    assert main(["run", "--config", str(local_lake.config_path)]) == 0

    remote, local = load_settings(remote_lake.config_path), load_settings(local_lake.config_path)
    for table in ("events", "customers"):
        over_connect = table_rows(spark, Path(remote.table_path(table)), str(remote_lake.root))
        assert over_connect == table_rows(spark, Path(local.table_path(table)), str(local_lake.root))
    assert len(table_rows(spark, Path(remote.table_path("events")), "")) == 2000
    history = spark.read.format("delta").load(remote.table_path("customers")).where("customer_id = 1")
    assert sorted(tuple(r) for r in history.select("updated_at", "email", "is_current").collect()) == [
        (10, "a@x", False), (20, "a1@x", False), (30, "a2@x", True)]  # the late row bisected [10, 30)


def test_replayed_append_and_merge_are_skipped_over_connect(connect_server, tmp_path):
    done = run_client(connect_server.url, "replay", str(tmp_path / "replayed"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["after_append"] == 10  # the second append with txnVersion 1 wrote nothing
    assert result["operations"] == ["MERGE", "WRITE"]  # one commit each: the replays made none
    assert result["txn_version"] == 2
    assert result["final"] == [[i, f"w{i}"] for i in range(5, 15)]


def test_read_tasks_fill_the_servers_cores_over_connect(connect_server, tmp_path):
    """The client tells the server's 2 cores from a planned range (no SparkContext over Connect), and the split
    set around a write decides how the server packs the files: 3 partitions with Spark's split, the balanced
    split's count with it, every row written, the session's conf restored (loader_assets.read_tasks)."""
    done = run_client(connect_server.url, "read-tasks", str(tmp_path / "read_tasks"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2, 2, result["cap"], 1024]
    assert result["spark_partitions"] == 3 and result["split"] is not None
    assert result["balanced_partitions"] != 3
    assert result["written"] == {"spark": 3, "balanced": result["balanced_partitions"]}
    assert result["restored"] == str(result["cap"])
    assert result["rows"] == 9 * 40


def test_delta_table_api_needs_the_delta_connect_plugin(connect_server, tmp_path):
    """Why the loader's MERGE and DELETE are SQL (target.sql_table): delta-spark's DeltaTable over Connect
    sends Delta Connect relations, which a server without Delta Connect's plugin (not published for this
    Spark and Delta pair) refuses; the same table read through SQL works."""
    done = run_client(connect_server.url, "delta-table-api", str(tmp_path / "t"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "NO_HANDLER_FOR_EXTENSION" in result["message"] and "delta.connect.DeltaRelation" in result["message"]
    assert result["sql_rows"] == 3


@pytest.mark.fault
def test_client_killed_during_a_write_lands_once(spark, connect_server, lake):
    """SIGKILL of the CLI while the server writes: the server may finish that write after the client died. The
    next runs (recovery, the txn) leave every file's rows exactly once."""
    lake.config(two_tables()[:1], spark={"master": "local[2]", "remote": connect_server.url, "conf": TEST_SPARK_CONF})
    for i in range(6):
        lake.write_parquet("events", f"big {i}.parquet", list(range(i * 100_000, i * 100_000 + 60_000)),
                           days_ago=3 - i * 0.3)
    code, _, err = cli(lake, "run", env={faults.KILL_AT_ENV: faults.DURING_TARGET_WRITE,
                                         faults.KILL_DELAY_ENV: "0.3"})
    assert code == -9, f"the client was not killed during the write (exit {code}): {err[-2000:]}"
    for _attempt in range(3):
        code, out, err = cli(lake, "run")
        if code == 0 and "Files failed:     0" in out:
            break
    assert code == 0, err[-3000:]
    code, out, err = cli(lake, "validate-consistency")
    assert code == 0, out + err[-2000:]
    frame = spark.read.format("delta").load(load_settings(lake.config_path).table_path("events"))
    assert frame.count() == 6 * 60_000
    assert frame.select("id").distinct().count() == 6 * 60_000


def write_customers(lake, name: str, keys: int, email: str, sequence: int, days_ago: float) -> None:
    path = lake.landing / "customers" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"customer_id": pa.array(range(keys), pa.int64()),
                             "name": pa.array([f"c{i}" for i in range(keys)]),
                             "email": pa.array([f"{email}{i}@x" for i in range(keys)]),
                             "updated_at": pa.array([sequence] * keys, pa.int64())}), path)
    set_mtime(path, days_ago)


def fences(target_path: str) -> list[dict]:
    from loader_assets.target import open_target

    table = open_target(target_path)
    entries = [json.loads(h["userMetadata"]) for h in (table.history() if table else []) if h.get("userMetadata")]
    return [e["fence"] for e in entries if "fence" in e]


@pytest.mark.fault
def test_a_late_merge_of_a_killed_client_is_fenced_out(spark, connect_server, lake):
    """The crash window Spark Connect adds: the client dies during an SCD2 MERGE that the server goes on
    running. The next run's recovery finds the batch uncommitted and fences it (record and target) before it
    fails its files for retry; the test holds that run after its claim until the server is idle, so the late
    MERGE has had every chance to land. It cannot: the history holds each version once. (Without the fence,
    the late MERGE commits during the hold and the reload inserts every new version a second time.)"""
    # 300k changes: the server's MERGE runs for seconds after the REST API shows it running, and the kill lands
    # within 0.1 s of that (an earlier 400k took six minutes of CI for the same window; 100k stopped being enough
    # once the in-order MERGE made it short: the MERGE committed before the rerun's recovery, which then rightly
    # completed the batch, and the test's window never opened)
    keys = 300_000
    lake.config(two_tables()[1:], spark={"master": "local[2]", "remote": connect_server.url, "conf": TEST_SPARK_CONF})
    write_customers(lake, "extract-0.parquet", keys, "a", 10, days_ago=2)
    code, _, err = cli(lake, "run")
    assert code == 0, err[-3000:]
    write_customers(lake, "extract-1.parquet", keys, "b", 20, days_ago=1)
    # held once the change record took the batch; released, and SIGKILLed once the server runs its MERGE
    held = lake.root / "held"
    killed = cli(lake, "run", wait=False, env={faults.PAUSE_AT_ENV: faults.AFTER_CHANGE_RECORD,
                                               faults.PAUSE_FILE_ENV: str(held)})
    wait_for(Path(f"{held}.reached"), killed)
    held.touch()
    deadline = time.monotonic() + 120
    # the loader's next SQL statement after the record append is the MERGE (its description: "sql_command")
    while not any("sql_command" in statement for statement in connect_server.running_statements()):
        assert killed.poll() is None and time.monotonic() < deadline, "the MERGE never ran on the server"
        time.sleep(0.1)
    killed.kill()
    killed.communicate()
    release = lake.root / "release"
    rerun = cli(lake, "run", wait=False, env={faults.PAUSE_AT_ENV: faults.AFTER_CLAIM,
                                              faults.PAUSE_FILE_ENV: str(release)})
    wait_for(Path(f"{release}.reached"), rerun)
    connect_server.wait_until_idle()
    release.touch()
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "Files failed:     0" in out, out + err[-3000:]
    target_path = load_settings(lake.config_path).table_path("customers")
    assert fences(target_path), "recovery found the killed client's MERGE committed: the window was missed"
    code, out, err = cli(lake, "validate-consistency")
    assert code == 0, out + err[-2000:]
    frame = spark.read.format("delta").load(target_path)
    assert frame.count() == 2 * keys  # one closed and one current version per key, none twice
    assert frame.where("is_current").count() == keys
    assert frame.where("is_current AND email LIKE 'b%'").count() == keys
