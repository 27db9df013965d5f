"""What the Dagster UI shows, read through the webserver's GraphQL endpoint (the API the UI itself uses): each
partition's own numbers, the table's state, the files table, and the check results with their severities."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from loader_assets.api import run_pipeline

pytestmark = pytest.mark.spark

QUERY = """
query Table($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetMaterializations(limit: 50) {
        partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text }
          ... on TableMetadataEntry { table { records } }
          ... on TableSchemaMetadataEntry { schema { columns { name type } } }
        }
      }
      assetObservations(limit: 50) {
        partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
        }
      }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startKey endKey } }
      }
      assetChecksOrError {
        ... on AssetChecks { checks { name executionForLatestMaterialization {
          status evaluation { success severity description } } } }
      }
    }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


@pytest.fixture
def webserver(lake, tmp_path):
    """A dagster-webserver on 127.0.0.1 over the lake's config and a DAGSTER_HOME of its own."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOADER_ASSETS_CONFIG": str(lake.config_path)}
    log = open(tmp_path / "webserver.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
         "-m", "loader_assets.definitions"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield home, port, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _wait_until_up(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the webserver did not answer within 120 s:\n{log.read_text()[-3000:]}")


def test_the_ui_shows_each_partitions_numbers_the_tables_state_and_the_checks(spark, lake, tmp_path, webserver):
    for days_ago in (2, 1):
        lake.write_parquet("events", f"d{days_ago}.parquet", [days_ago * 10, days_ago * 10 + 1], days_ago=days_ago)
    lake.write_bytes("events", "bad.parquet", b"not parquet", days_ago=1)
    settings = lake.config()
    home, port, process = webserver
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_pipeline(settings, instance=instance)  # the load job: the asset and its checks
    _wait_until_up(port, process, tmp_path / "webserver.log")

    node = _graphql(port, QUERY, {"key": {"path": ["events"]}})["assetNodeOrError"]

    by_partition = {}
    for event in node["assetMaterializations"]:
        entries = {e["label"]: e for e in event["metadataEntries"]}
        by_partition.setdefault(event["partition"], entries)
    # the day without a failed file is materialized; the day with bad.parquet shows failed, with its numbers
    # on an observation (docs/ARCHITECTURE.md, "A partition with a failed file")
    (good_day,) = by_partition
    (observation,) = node["assetObservations"]
    failed_day = observation["partition"]
    observed = {e["label"]: e.get("intValue") for e in observation["metadataEntries"]}
    assert [observed["files_loaded"], observed["files_failed"], observed["num_rows"]] == [1, 1, 2]
    entries = by_partition[good_day]
    assert [entries[k]["intValue"] for k in ("files_loaded", "files_failed", "num_rows")] == [1, 0, 2]
    statuses = {(r["startKey"], r["endKey"]): r["status"] for r in node["assetPartitionStatuses"]["ranges"]}
    assert statuses[(failed_day, failed_day)] == "FAILED" and statuses[(good_day, good_day)] == "MATERIALIZED"
    for entries in by_partition.values():
        assert entries["dagster/row_count"]["intValue"] == 4 and entries["run_files_loaded"]["intValue"] == 2
        assert [c["name"] for c in entries["dagster/column_schema"]["schema"]["columns"]][:2] == ["id", "name"]
        files = [json.loads(r) for r in entries["files"]["table"]["records"]]
        assert {f["status"] for f in files} <= {"completed", "failed"} and files
    checks = {c["name"]: c["executionForLatestMaterialization"] for c in
              node["assetChecksOrError"]["checks"]}
    # the run failed its asset step, so its check steps did not run (Dagster resolves them as EXECUTION_FAILED);
    # the run reported no_failed_files itself, for the latest materialization
    assert checks["no_failed_files"]["evaluation"]["success"] is False
    assert checks["no_failed_files"]["evaluation"]["severity"] == "WARN"
    assert checks["target_matches_tracker"]["status"] == checks["lock_not_stale"]["status"] == "EXECUTION_FAILED"
