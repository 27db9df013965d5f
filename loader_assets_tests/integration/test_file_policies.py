"""Per-table file policies: on_file_change, duplicate_content, schema_evolution; retries with backoff; and the
operator commands retry / reprocess / skip / history (each action recorded in the table's event log)."""

import json
import os
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loader_assets.api import run_pipeline
from loader_assets.cli import main
from loader_assets.operations import file_history, skip_files, validate_consistency
from loader_assets.scd2 import scd2_violations
from loader_assets_tests.conftest import set_mtime, target_rows
from loader_assets_tests.integration.test_append_load import assert_consistent, tracker_rows

pytestmark = pytest.mark.spark


def events_table(settings, policy):
    return [{"table_name": "events", "source_path": "landing/events", "file_format": "parquet",
             "on_file_change": policy}]


# ------------------------------------------------------------------------------------------- on_file_change
def test_on_file_change_reload_replaces_exactly_that_files_rows(spark, lake, instance):
    settings = lake.config(tables=events_table(None, "reload"))
    a = lake.write_parquet("events", "a.parquet", [1, 2], days_ago=2)
    b = lake.write_parquet("events", "b.parquet", [3], days_ago=2)
    run_pipeline(settings, instance=instance)
    lake.write_parquet("events", "a.parquet", [1, 20, 21], days_ago=1)  # re-delivered with new content
    summary = run_pipeline(settings, instance=instance)
    assert summary.total_files_processed == 1 and summary.total_rows_loaded == 3
    assert target_rows(spark, settings, "events") == sorted(
        [(i, f"n{i}", str(a)) for i in (1, 20, 21)] + [(3, "n3", str(b))])
    row = tracker_rows(settings)[str(a)]
    assert row["status"] == "completed" and row["file_version"] == 2 and row["row_count"] == 3
    # one commit for the reload (append + replaceWhere), and the history of versions is kept
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('events')}`").collect()
    assert len(history) == 2 and history[0]["operation"] == "WRITE"
    events = file_history(settings, "events", [str(a)])
    assert [e["event"] for e in events] == ["changed:reload"]
    assert events[0]["previous_row_count"] == 2 and events[0]["file_version"] == 2
    assert events[0]["old_fingerprint"] != events[0]["new_fingerprint"]
    assert_consistent(spark, settings)
    assert run_pipeline(settings, instance=instance).total_files_processed == 0  # rerun: nothing


def test_on_file_change_ignore_keeps_the_loaded_version(spark, lake, instance):
    settings = lake.config(tables=events_table(None, "ignore"))
    a = lake.write_parquet("events", "a.parquet", [1, 2], days_ago=2)
    run_pipeline(settings, instance=instance)
    lake.write_parquet("events", "a.parquet", [9], days_ago=1)
    assert run_pipeline(settings, instance=instance).total_files_processed == 0
    assert target_rows(spark, settings, "events") == [(1, "n1", str(a)), (2, "n2", str(a))]
    row = tracker_rows(settings)[str(a)]
    assert row["status"] == "completed" and "ignored (on_file_change=ignore)" in row["error_message"]
    assert [e["event"] for e in file_history(settings, "events")] == ["changed:ignore"]
    run_pipeline(settings, instance=instance)  # the same change is not recorded twice
    assert len(file_history(settings, "events")) == 1
    assert_consistent(spark, settings)


def test_on_file_change_fail_waits_for_an_operator_then_reprocess_loads_it(spark, lake, instance, capsys):
    settings = lake.config(tables=events_table(None, "fail"))
    a = lake.write_parquet("events", "a.parquet", [1, 2], days_ago=2)
    run_pipeline(settings, instance=instance)
    lake.write_parquet("events", "a.parquet", [7, 8, 9], days_ago=1)
    summary = run_pipeline(settings, instance=instance)
    row = tracker_rows(settings)[str(a)]
    assert row["status"] == "failed" and row["retryable"] is False
    assert "on_file_change=fail" in row["error_message"] and "reprocess" in row["error_message"]
    assert summary.total_files_failed == 0  # not failed by this run's load: it was never loaded again
    assert target_rows(spark, settings, "events") == [(1, "n1", str(a)), (2, "n2", str(a))]
    # no run retries it on its own
    run_pipeline(settings, instance=instance)
    assert tracker_rows(settings)[str(a)]["status"] == "failed"
    # the rows of the old version are still consistent with the tracker while it waits
    assert validate_consistency(settings, lambda: spark).tables[0].target.consistent
    capsys.readouterr()
    assert main(["reprocess", "--config", str(lake.config_path), "--table", "events", "--file", str(a),
                 "--reason", "vendor re-sent corrected file"]) == 0
    assert "1 file(s) queued for reprocessing" in capsys.readouterr().out
    run_pipeline(settings, instance=instance)
    assert target_rows(spark, settings, "events") == [(i, f"n{i}", str(a)) for i in (7, 8, 9)]
    assert tracker_rows(settings)[str(a)]["status"] == "completed"
    kinds = [e["event"] for e in file_history(settings, "events")]
    assert kinds == ["changed:fail", "reprocess"]
    assert_consistent(spark, settings)


def test_scd2_changed_file_is_applied_as_new_changes(spark, lake, instance):
    table = {"table_name": "customers", "source_path": "landing/customers", "file_format": "parquet",
             "loading_strategy": "scd2", "primary_keys": ["id"], "tracking_columns": ["name"]}
    settings = lake.config(tables=[table])
    path = lake.write_parquet("customers", "snapshot.parquet", [1, 2], days_ago=2)
    run_pipeline(settings, instance=instance)
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["n1", "renamed"]}), path)
    set_mtime(path, 1)
    run_pipeline(settings, instance=instance)
    frame = spark.read.format("delta").load(settings.table_path("customers"))
    rows = sorted((r.id, r.name, r.is_current) for r in frame.collect())
    assert rows == [(1, "n1", True), (2, "n2", False), (2, "renamed", True)]
    assert scd2_violations(spark, settings.table_path("customers"), settings.tables[0]).ok
    assert tracker_rows(settings, "customers")[str(path)]["file_version"] == 2


# -------------------------------------------------------------------------------------------- duplicate_content
def test_identical_content_at_a_new_path_loads_by_default_and_is_skipped_with_duplicate_content_skip(
        spark, lake, instance):
    settings = lake.config()
    a = lake.write_parquet("events", "a.parquet", [1], days_ago=2)
    run_pipeline(settings, instance=instance)
    copy = lake.write_bytes("events", "copy_of_a.parquet", a.read_bytes(), days_ago=1)
    run_pipeline(settings, instance=instance)
    assert target_rows(spark, settings, "events") == [(1, "n1", str(a)), (1, "n1", str(copy))]  # by path
    table = {"table_name": "events", "source_path": "landing/events", "file_format": "parquet",
             "duplicate_content": "skip"}
    settings = lake.config(tables=[table])
    lake.write_parquet("events", "b.parquet", [2], days_ago=1)
    b = lake.landing / "events" / "b.parquet"
    run_pipeline(settings, instance=instance)  # b loads and its hash is recorded
    again = lake.write_bytes("events", "b_again.parquet", b.read_bytes(), days_ago=0.5)
    twin = lake.write_bytes("events", "b_twin.parquet", b.read_bytes(), days_ago=0.5)
    summary = run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings)
    for dup in (again, twin):
        assert rows[str(dup)]["status"] == "skipped"
        assert f"as {str(b)!r}" in rows[str(dup)]["error_message"]
        assert "duplicate_content=skip" in rows[str(dup)]["error_message"]
    assert summary.total_files_failed == 0
    assert sorted(r[0] for r in target_rows(spark, settings, "events")) == [1, 1, 2]
    assert {e["event"] for e in file_history(settings, "events")} == {"skipped:duplicate_content"}
    assert_consistent(spark, settings)


# -------------------------------------------------------------------------------------------- schema_evolution
def _write(lake, name, columns, days_ago):
    path = lake.landing / "events" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    set_mtime(path, days_ago)
    return path


def test_schema_evolution_fail_names_new_and_missing_columns(spark, lake, instance):
    settings = lake.config()
    a = _write(lake, "a.parquet", {"id": pa.array([1], pa.int64()), "name": ["x"]}, 3)
    run_pipeline(settings, instance=instance)
    wider = _write(lake, "wider.parquet", {"id": pa.array([2], pa.int64()), "name": ["y"], "email": ["e"]}, 2)
    narrower = _write(lake, "narrower.parquet", {"id": pa.array([3], pa.int64())}, 2)
    run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings)
    assert "new columns ['email']" in rows[str(wider)]["error_message"]
    assert "missing columns ['name']" in rows[str(narrower)]["error_message"]
    assert "schema_evolution=fail" in rows[str(narrower)]["error_message"]
    assert target_rows(spark, settings, "events") == [(1, "x", str(a))]


def test_schema_evolution_add_new_columns_evolves_the_table_in_the_batch_commit(spark, lake, instance):
    table = {"table_name": "events", "source_path": "landing/events", "file_format": "parquet",
             "schema_evolution": "add_new_columns"}
    settings = lake.config(tables=[table])
    a = _write(lake, "a.parquet", {"id": pa.array([1], pa.int64()), "name": ["x"]}, 3)
    run_pipeline(settings, instance=instance)
    wider = _write(lake, "wider.parquet", {"id": pa.array([2], pa.int64()), "name": ["y"], "email": ["e"]}, 2)
    narrower = _write(lake, "narrower.parquet", {"id": pa.array([3], pa.int64())}, 2)
    retyped = _write(lake, "retyped.parquet", {"id": ["four"], "name": ["z"]}, 2)
    run_pipeline(settings, instance=instance)
    frame = spark.read.format("delta").load(settings.table_path("events"))
    assert frame.columns == ["id", "name", "_source_file", "_load_timestamp", "_batch_id", "email"]
    assert sorted((r.id, r.name, r.email, r._source_file) for r in frame.collect()) == [
        (1, "x", None, str(a)), (2, "y", "e", str(wider)), (3, None, None, str(narrower))]
    rows = tracker_rows(settings)
    assert rows[str(retyped)]["status"] == "failed"
    assert "changed types ['id (bigint -> string)']" in rows[str(retyped)]["error_message"]
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('events')}`").collect()
    assert len(history) == 2  # the new column arrived with the batch's one commit
    assert_consistent(spark, settings)


def test_schema_evolution_rescue_keeps_the_schema_and_rescues_unknown_and_mistyped_fields(spark, lake, instance):
    table = {"table_name": "events", "source_path": "landing/events", "file_format": "json",
             "schema_evolution": "rescue"}
    settings = lake.config(tables=[table])
    first = lake.write_bytes("events", "a.json", b'{"id": 1, "name": "x"}\n', days_ago=3)
    run_pipeline(settings, instance=instance)
    drift = lake.write_bytes(
        "events", "b.json",
        b'{"id": 2, "name": "y", "email": "e@x"}\n{"id": "three", "name": "z"}\n{"id": 4}\n', days_ago=2)
    summary = run_pipeline(settings, instance=instance)
    assert summary.total_files_failed == 0
    frame = spark.read.format("delta").load(settings.table_path("events"))
    assert "email" not in frame.columns and "_rescued_data" in frame.columns
    got = sorted(((r.id or 0), r.name, r._rescued_data and json.loads(r._rescued_data), r._source_file)
                 for r in frame.collect())
    assert got == [
        (0, "z", {"id": "three"}, str(drift)),
        (1, "x", None, str(first)),
        (2, "y", {"email": "e@x"}, str(drift)),
        (4, None, None, str(drift)),
    ]
    assert_consistent(spark, settings)


# -------------------------------------------------------------------------------------------- retries and actions
def test_failed_files_back_off_then_stay_failed_until_retry(spark, lake, instance, capsys):
    settings = lake.config(retry_backoff_seconds=3600, retry_backoff_max_seconds=86400, retry_attempts=2)
    bad = lake.write_bytes("events", "bad.parquet", b"garbage", days_ago=1)
    before = datetime.now(UTC)
    run_pipeline(settings, instance=instance)
    row = tracker_rows(settings)[str(bad)]
    assert row["retry_count"] == 1
    assert before + timedelta(seconds=3590) <= row["next_attempt_at"] <= datetime.now(UTC) + timedelta(seconds=3610)
    run_pipeline(settings, instance=instance)  # backoff not over: not retried
    assert tracker_rows(settings)[str(bad)]["retry_count"] == 1
    assert settings.retry_delay(1) == 3600 and settings.retry_delay(2) == 7200
    # the operator fixes the file and retries it: it loads with the next run
    lake.write_parquet("events", "bad.parquet", [5], days_ago=1)
    capsys.readouterr()
    assert main(["retry", "--config", str(lake.config_path), "--table", "events"]) == 0
    assert "1 file(s) queued for retry" in capsys.readouterr().out
    row = tracker_rows(settings)[str(bad)]
    assert row["status"] == "pending" and row["retry_count"] == 0 and row["next_attempt_at"] is None
    run_pipeline(settings, instance=instance)
    assert target_rows(spark, settings, "events") == [(5, "n5", str(bad))]
    retry_event = file_history(settings, "events", [str(bad)])[-1]
    assert retry_event["event"] == "retry" and "garbage" not in retry_event["detail"]
    assert "not a readable parquet file" in retry_event["detail"] and "@" in retry_event["actor"]


def test_skip_and_reprocess_and_their_refusals(spark, lake, instance, capsys):
    settings = lake.config(retry_backoff_seconds=3600)
    good = lake.write_parquet("events", "good.parquet", [1, 2], days_ago=2)
    bad = lake.write_bytes("events", "bad.parquet", b"garbage", days_ago=2)
    run_pipeline(settings, instance=instance)
    cfg = ["--config", str(lake.config_path), "--table", "events"]
    capsys.readouterr()
    # a completed file cannot be skipped; a path outside the source is refused
    assert main(["skip", *cfg, "--file", str(good), "--reason", "x"]) == 1
    assert "status is completed" in capsys.readouterr().out
    assert main(["skip", *cfg, "--file", "/etc/passwd", "--reason", "x"]) == 1
    assert "not below the table's source_path" in capsys.readouterr().out
    assert main(["skip", *cfg, "--file", str(bad), "--reason", "vendor confirmed the file is junk"]) == 0
    row = tracker_rows(settings)[str(bad)]
    assert row["status"] == "skipped" and "vendor confirmed the file is junk" in row["error_message"]
    assert main(["retry", *cfg, "--file", str(bad)]) == 1  # retry is for failed files
    # reprocess a completed file: the reload replaces its rows
    assert main(["reprocess", *cfg, "--file", str(good)]) == 0
    run_pipeline(settings, instance=instance)
    assert target_rows(spark, settings, "events") == [(1, "n1", str(good)), (2, "n2", str(good))]
    assert_consistent(spark, settings)
    capsys.readouterr()
    assert main(["history", *cfg, "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["event"] for e in events] == ["skip", "reprocess"]
    assert main(["status", "--config", str(lake.config_path), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)[0]["status_counts"]
    assert counts["skipped"] == 1 and counts["completed"] == 1


def test_a_skip_covers_the_version_in_the_landing_zone_when_it_is_given(spark, lake, instance):
    """Model soak seed 1045: a file failed, a valid version was delivered, and the operator skipped the file
    before any run saw the new version. The skip covers what is in the landing zone then; only a later delivery
    brings the file back."""
    settings = lake.config(retry_backoff_seconds=3600)
    bad = lake.write_bytes("events", "f.parquet", b"garbage", days_ago=3)
    assert run_pipeline(settings, instance=instance).total_files_failed == 1
    lake.write_parquet("events", "f.parquet", [1, 2, 3], days_ago=2)  # a valid version, not yet seen by a run
    delivered = bad.stat()
    skipped = skip_files(settings, "events", [str(bad)], reason="the vendor withdrew the file")
    assert skipped.changed == [str(bad)] and not skipped.refused
    row = tracker_rows(settings)[str(bad)]
    assert row["status"] == "skipped" and row["file_version"] == 2
    assert row["file_size"] == delivered.st_size and row["fingerprint"] == row["source_fingerprint"]
    assert row["content_hash"] is None  # the hash described the garbage version
    summary = run_pipeline(settings, instance=instance)
    assert summary.total_files_processed == 0
    assert not os.path.exists(settings.table_path("events"))  # nothing was ever loaded
    assert tracker_rows(settings)[str(bad)]["status"] == "skipped"
    assert [e["event"] for e in file_history(settings, "events")] == ["skip"]
    # a delivery after the skip is a change: it loads, as version 3
    lake.write_parquet("events", "f.parquet", [7, 8], days_ago=1)
    assert run_pipeline(settings, instance=instance).total_rows_loaded == 2
    assert target_rows(spark, settings, "events") == [(7, "n7", str(bad)), (8, "n8", str(bad))]
    row = tracker_rows(settings)[str(bad)]
    assert row["status"] == "completed" and row["file_version"] == 3
    events = file_history(settings, "events", [str(bad)])
    assert [(e["event"], e["previous_status"]) for e in events] == [("skip", "failed"),
                                                                      ("changed:refresh", "skipped")]
    assert_consistent(spark, settings)
