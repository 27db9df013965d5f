"""Bad input, one case per kind (docs/CONTRACT.md, "Bad input is contained"): the bad file fails alone with an error naming it, the table
and the cause (tracker row and Dagster metadata); the good file of the same batch loads; rows loaded before stay.

Each case first loads a base file, then drops a good file and the bad one together, so they share one batch.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loader_assets.api import run_pipeline
from loader_assets_tests.conftest import set_mtime, target_rows
from loader_assets_tests.integration.test_append_load import assert_consistent, tracker_rows

pytestmark = pytest.mark.spark


def _parquet_bytes(tmp: Path, ids: list[int], **columns: pa.Array) -> bytes:
    table = pa.table({"id": pa.array(ids, pa.int64()), "name": [f"n{i}" for i in ids], **columns})
    path = tmp / "scratch.parquet"
    pq.write_table(table, path, compression="none")
    return path.read_bytes()


def corrupt_data_page(tmp: Path) -> bytes:
    """A parquet file whose footer is fine (prechecks pass) but whose first data page header is garbage: Spark
    fails only when it reads the rows, so the whole batch's write fails and the batch must be split."""
    ids = list(range(500, 2500))
    data = bytearray(_parquet_bytes(tmp, ids))
    offset = pq.read_metadata(pa.BufferReader(bytes(data))).row_group(0).column(0).data_page_offset
    data[offset:offset + 40] = b"\xff" * 40
    return bytes(data)


# case id -> (file name, bytes factory, expected error fragment)
PARQUET_CASES = {
    "corrupt_parquet": ("bad.parquet", lambda tmp: b"this is not parquet at all" * 20, "not a readable parquet file"),
    "truncated_parquet": ("bad.parquet", lambda tmp: _parquet_bytes(tmp, [7, 8, 9])[:-30],
                          "not a readable parquet file (corrupt or truncated)"),
    "empty_parquet": ("bad.parquet", lambda tmp: b"", "file is empty (0 bytes)"),
    "wrong_column_type": ("bad.parquet",
                          lambda tmp: pq.write_table(pa.table({"id": ["x"], "name": ["y"]}), tmp / "w.parquet")
                          or (tmp / "w.parquet").read_bytes(),
                          "changed types ['id (bigint -> string)']"),
    "corrupt_data_page_isolated_by_bisect": ("bad.parquet", corrupt_data_page,
                                             "isolated by splitting a batch that failed as a whole"),
}


@pytest.mark.parametrize("case", sorted(PARQUET_CASES))
def test_bad_parquet_fails_alone_and_the_good_file_of_its_batch_loads(spark, lake, instance, case, tmp_path):
    name, make, expected = PARQUET_CASES[case]
    base = lake.write_parquet("events", "base.parquet", [1, 2], days_ago=2)
    settings = lake.config()
    assert run_pipeline(settings, instance=instance).total_files_processed == 1
    before = target_rows(spark, settings, "events")
    good = lake.write_parquet("events", "good.parquet", [3, 4], days_ago=1)
    good2 = lake.write_parquet("events", "good2.parquet", [5], days_ago=1)
    bad = lake.write_bytes("events", name, make(tmp_path), days_ago=1)
    summary = run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings)
    error = rows[str(bad)]["error_message"]
    assert rows[str(bad)]["status"] == "failed" and expected in error, error
    assert rows[str(bad)]["retry_count"] == 1
    assert summary.tables["events"].failed_files[str(bad)] == error  # named in the run's output
    assert str(bad) in summary.tables["events"].failed_files and "events" in json.dumps(summary.to_json())
    assert rows[str(good)]["status"] == rows[str(good2)]["status"] == "completed"
    assert rows[str(base)]["status"] == "completed"
    assert target_rows(spark, settings, "events") == sorted(
        before + [(3, "n3", str(good)), (4, "n4", str(good)), (5, "n5", str(good2))])
    assert_consistent(spark, settings)
    # Dagster shows the bad file's partition failed and the run failed, naming the file, table and cause; the
    # partition's numbers are on an observation of it (docs/ARCHITECTURE.md, "A partition with a failed file")
    import dagster as dg
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    from loader_assets.definitions import build_definitions

    records = instance.fetch_observations(dg.AssetKey("events"), limit=100).records
    failed_meta = [entry for record in records
                   for entry in getattr(record.asset_observation.metadata.get("failed_files"), "value", [])]
    assert {"file": str(bad), "error": error} in failed_meta
    (bad_partition,) = {record.partition_key for record in records}
    partitions = build_definitions(settings).resolve_assets_def("events").partitions_def
    status = get_and_update_asset_status_cache_value(instance, dg.AssetKey("events"), partitions)
    assert status.deserialize_failed_partition_subsets(partitions).get_partition_keys() == [bad_partition]
    failure = instance.get_run_records(limit=1)[0]
    assert failure.dagster_run.status == dg.DagsterRunStatus.FAILURE
    messages = [r.event_log_entry.dagster_event.step_failure_data.user_failure_data.description
                for r in instance.get_records_for_run(failure.dagster_run.run_id).records
                if r.event_log_entry.dagster_event and r.event_log_entry.dagster_event.is_step_failure]
    assert len(messages) == 1 and messages[0].startswith("table events: 1 file(s) failed in partition(s) ")
    assert f"{bad}: {error}" in messages[0]


def test_a_pending_file_that_vanished_before_its_run_is_failed_with_that_reason(spark, lake, instance):
    from loader_assets.core.discovery import list_source_files
    from loader_assets.core.partitions import partition_keys_for
    from loader_assets_tests.conftest import new_tracker

    settings = lake.config()
    good = lake.write_parquet("events", "good.parquet", [1], days_ago=1)
    gone = lake.write_parquet("events", "gone.parquet", [2], days_ago=1)
    tracker = new_tracker(settings.checkpoint_path, "events")
    listing = list_source_files(str(lake.landing / "events"))  # registered (by a run that was killed, say)
    tracker.register(listing, partition_keys_for(listing["file_modified_time"], "day", "2024-01-01"))
    gone.unlink()
    summary = run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings)
    assert rows[str(gone)]["status"] == "failed" and rows[str(gone)]["retry_count"] == 0  # no retry used
    assert "no longer in the source" in rows[str(gone)]["error_message"]
    assert rows[str(good)]["status"] == "completed"
    assert target_rows(spark, settings, "events") == [(1, "n1", str(good))]
    assert summary.total_files_failed == 1
    assert run_pipeline(settings, instance=instance).tables["events"].run_ids == []  # gone files are not work


def test_a_file_that_vanished_after_its_claim_fails_alone(spark, lake, instance, tmp_path):
    import threading

    from loader_assets.core import faults

    settings = lake.config()
    good = lake.write_parquet("events", "good.parquet", [1], days_ago=1)
    gone = lake.write_parquet("events", "gone.parquet", [2], days_ago=1)
    release = tmp_path / "release"
    os.environ[faults.PAUSE_AT_ENV] = faults.AFTER_CLAIM
    os.environ[faults.PAUSE_FILE_ENV] = str(release)
    runner = threading.Thread(target=lambda: run_pipeline(settings, instance=instance))
    runner.start()
    deadline = time.monotonic() + 120
    while not Path(f"{release}.reached").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    gone.unlink()  # between the claim and the read
    del os.environ[faults.PAUSE_AT_ENV]
    release.touch()
    runner.join(timeout=300)
    rows = tracker_rows(settings)
    assert rows[str(gone)]["status"] == "failed"
    assert "vanished between discovery and load" in rows[str(gone)]["error_message"]
    assert rows[str(good)]["status"] == "completed"
    assert target_rows(spark, settings, "events") == [(1, "n1", str(good))]


def test_a_file_still_being_written_waits_and_then_loads_whole(spark, lake, instance, tmp_path):
    """The run is held right after its claim while the writer rewrites the file with more rows: the claimed
    version is not what is on disk any more, so the file goes back to pending (no retry used) and is not loaded
    half-written; the next run loads the whole file."""
    import threading

    from loader_assets.core import faults

    settings = lake.config()
    good = lake.write_parquet("events", "good.parquet", [1], days_ago=1)
    growing = lake.write_bytes("events", "growing.parquet", _parquet_bytes(tmp_path, [2]), days_ago=1)
    release = tmp_path / "release"
    os.environ[faults.PAUSE_AT_ENV] = faults.AFTER_CLAIM
    os.environ[faults.PAUSE_FILE_ENV] = str(release)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(first=run_pipeline(settings, instance=instance)))
    runner.start()
    deadline = time.monotonic() + 120
    while not Path(f"{release}.reached").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    growing.write_bytes(_parquet_bytes(tmp_path, [2, 3, 4]))  # the writer goes on after the claim
    set_mtime(growing, 0.5)
    del os.environ[faults.PAUSE_AT_ENV]
    release.touch()
    runner.join(timeout=300)
    row = tracker_rows(settings)[str(growing)]
    assert row["status"] == "pending" and "still be being written" in row["error_message"]
    assert row["retry_count"] == 0 and outcome["first"].total_files_failed == 0
    assert target_rows(spark, settings, "events") == [(1, "n1", str(good))]  # not half a file
    run_pipeline(settings, instance=instance)
    assert tracker_rows(settings)[str(growing)]["status"] == "completed"
    assert target_rows(spark, settings, "events") == sorted(
        [(1, "n1", str(good))] + [(i, f"n{i}", str(growing)) for i in (2, 3, 4)])


def test_min_file_age_leaves_a_fresh_file_for_later(spark, lake, instance):
    settings = lake.config(tables=[{"table_name": "events", "source_path": "landing/events", "file_format": "parquet",
                                    "min_file_age_seconds": 3600}])
    old = lake.write_parquet("events", "old.parquet", [1], days_ago=1)
    fresh = lake.write_parquet("events", "fresh.parquet", [2], days_ago=0)
    run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings)
    assert rows[str(old)]["status"] == "completed" and rows[str(fresh)]["status"] == "pending"


UNREADABLE_PROBE = """
import os, sys
from loader_assets.reading import ExpectedFile, precheck_file
from loader_assets.settings import load_settings
settings = load_settings(sys.argv[1])
os.setgid(65534); os.setuid(65534)
print(precheck_file(ExpectedFile(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])), settings.tables[0]).problem)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_file_the_loader_cannot_read_is_reported_as_permission_denied(lake):
    """Root reads every file, so the probe drops to uid 65534 (nobody) in a child process before looking. The
    landing directory is world-readable; the file is not."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="loader-assets-perm-", dir="/tmp"))
    try:
        os.chmod(shared, 0o755)
        lake.landing = shared
        settings = lake.config(tables=[{"table_name": "events", "source_path": str(shared / "events"),
                                        "file_format": "parquet"}])
        secret = lake.write_parquet("events", "secret.parquet", [1], days_ago=1)
        os.chmod(shared / "events", 0o755)
        os.chmod(secret, 0o600)
        stat = secret.stat()
        out = _probe(lake, secret, stat)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert out.startswith("permission denied reading the file"), out
    assert settings.tables[0].table_name == "events"


def _probe(lake, secret, stat):
    return subprocess.run(
        [sys.executable, "-c", UNREADABLE_PROBE, str(lake.config_path), str(secret), str(stat.st_size),
         str(stat.st_mtime_ns // 1000)],
        capture_output=True, text=True, check=True,
    ).stdout


CSV_TABLE = {"table_name": "visits", "source_path": "landing/visits", "file_format": "csv",
             "read_options": {"header": True, "inferSchema": True}}
JSON_TABLE = {"table_name": "clicks", "source_path": "landing/clicks", "file_format": "json"}


def _text(lake, table, name, text, days_ago=1.0):
    return lake.write_bytes(table, name, text.encode(), days_ago=days_ago)


def test_csv_malformed_rows_fail_the_file_by_default(spark, lake, instance):
    settings = lake.config(tables=[CSV_TABLE])
    good = _text(lake, "visits", "good.csv", "id,page\n1,/a\n2,/b\n")
    bad = _text(lake, "visits", "bad.csv", "id,page\n3,/c\n4\n5,/e,extra\n6,/f\n")
    header_only = _text(lake, "visits", "header_only.csv", "id,page\n")
    run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings, "visits")
    assert rows[str(bad)]["status"] == "failed"
    error = rows[str(bad)]["error_message"]
    assert "2 malformed row(s)" in error and "bad_records=fail" in error, error
    assert rows[str(good)]["status"] == "completed" and rows[str(good)]["row_count"] == 2
    assert rows[str(header_only)]["status"] == "completed" and rows[str(header_only)]["row_count"] == 0
    assert target_rows(spark, settings, "visits") == [(1, "/a", str(good)), (2, "/b", str(good))]
    assert_consistent(spark, settings, "visits")


def test_csv_malformed_rows_are_quarantined_and_counted(spark, lake, instance):
    settings = lake.config(tables=[{**CSV_TABLE, "bad_records": "quarantine"}])
    good = _text(lake, "visits", "good.csv", "id,page\n1,/a\n")
    bad = _text(lake, "visits", "bad.csv", "id,page\n3,/c\n4\n5,/e,extra\n6,/f\n")
    summary = run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings, "visits")
    assert rows[str(bad)]["status"] == "completed" and rows[str(bad)]["row_count"] == 2
    assert rows[str(bad)]["quarantined_rows"] == 2 and rows[str(good)]["quarantined_rows"] is None
    assert target_rows(spark, settings, "visits") == [
        (1, "/a", str(good)), (3, "/c", str(bad)), (6, "/f", str(bad))]
    quarantine = spark.read.format("delta").load(settings.quarantine_path("visits"))
    assert sorted((r.raw_record, r._source_file) for r in quarantine.collect()) == [
        ("4", str(bad)), ("5,/e,extra", str(bad))]
    assert summary.total_files_failed == 0
    assert_consistent(spark, settings, "visits")
    # Reprocessing the file replaces its quarantined rows too: still 2, not 4.
    from loader_assets.operations import reprocess_files

    assert reprocess_files(settings, "visits", [str(bad)]).changed == [str(bad)]
    run_pipeline(settings, instance=instance)
    assert spark.read.format("delta").load(settings.quarantine_path("visits")).count() == 2
    assert len(target_rows(spark, settings, "visits")) == 3
    assert_consistent(spark, settings, "visits")


def test_csv_column_of_the_wrong_type_fails_naming_it(spark, lake, instance):
    settings = lake.config(tables=[CSV_TABLE])
    good = _text(lake, "visits", "a.csv", "id,page\n1,/a\n", days_ago=2)
    run_pipeline(settings, instance=instance)
    bad = _text(lake, "visits", "b.csv", "id,page\nseven,/b\n")
    run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings, "visits")
    assert rows[str(bad)]["status"] == "failed"
    error = rows[str(bad)]["error_message"]
    assert "1 malformed row(s)" in error and "column id: value 'seven' is not a valid int" in error, error
    assert target_rows(spark, settings, "visits") == [(1, "/a", str(good))]


def test_json_broken_line_fails_the_file_or_is_quarantined(spark, lake, instance):
    settings = lake.config(tables=[JSON_TABLE])
    good = _text(lake, "clicks", "good.json", '{"id": 1, "page": "/a"}\n')
    broken = _text(lake, "clicks", "broken.json", '{"id": 2, "page": "/b"}\n{"id": 3, "page": \n')
    empty = _text(lake, "clicks", "empty.json", "")
    run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings, "clicks")
    assert rows[str(broken)]["status"] == "failed"
    assert "1 malformed row(s) that the json parser cannot read" in rows[str(broken)]["error_message"]
    assert rows[str(empty)]["status"] == "completed" and rows[str(empty)]["row_count"] == 0
    assert target_rows(spark, settings, "clicks") == [(1, "/a", str(good))]
    # The same file under bad_records=quarantine: its good line loads, the broken one is kept aside.
    settings = lake.config(tables=[{**JSON_TABLE, "bad_records": "quarantine"}])
    from loader_assets.operations import retry_files

    assert retry_files(settings, "clicks", [str(broken)]).changed == [str(broken)]
    run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings, "clicks")
    assert rows[str(broken)]["status"] == "completed" and rows[str(broken)]["quarantined_rows"] == 1
    assert target_rows(spark, settings, "clicks") == [(1, "/a", str(good)), (2, "/b", str(broken))]
    assert_consistent(spark, settings, "clicks")
