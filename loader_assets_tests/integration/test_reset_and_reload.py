"""reset-state followed by a reload that takes several batches: nothing duplicated, nothing refused (issue 11).

Two operator paths that broke before the exactly-once redesign, as a new user would walk them: an append table
whose reload spans several batches (every batch of it must replace its files' rows, not only the first), and an
scd2 table whose later extracts repeat unchanged rows of earlier ones (the reload must recognise every row, also
those that started no version). The kill variants are in fault_injection/test_crash_windows.py. The loads skip
the per-run asset checks: ``validate-consistency`` at the end runs the same checks over the whole table.
"""

import pytest

from loader_assets.api import run_pipeline
from loader_assets.cli import main
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets_tests.conftest import target_rows

pytestmark = pytest.mark.spark


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()


def six_files(lake):
    return [lake.write_parquet("events", f"f{i}.parquet", list(range(i * 10, i * 10 + 10)), days_ago=3 - i * 0.1)
            for i in range(6)]


def tracker_of(settings, table):
    return DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table(table)


@pytest.mark.parametrize("max_files", [2, 1])
def test_append_reload_after_reset_spanning_several_batches_keeps_each_row_once(
        spark, lake, instance, home, max_files):
    paths = six_files(lake)
    settings = lake.config(max_files_per_run=max_files)
    expected = sorted((i * 10 + j, f"n{i * 10 + j}", str(p)) for i, p in enumerate(paths) for j in range(10))
    assert run_pipeline(settings, instance=instance, run_checks=False).total_rows_loaded == 60
    assert target_rows(spark, settings, "events") == expected
    assert main(["reset-state", "--config", str(lake.config_path), "--yes"]) == 0
    tracker = tracker_of(settings, "events")
    assert tracker.read().num_rows == 0 and tracker.baseline_txn() == 6 // max_files
    summary = run_pipeline(settings, instance=instance, run_checks=False)
    assert summary.total_files_processed == 6 and summary.total_files_failed == 0
    assert len(summary.tables["events"].run_ids) == 6 // max_files  # the reload took several batches
    rows = target_rows(spark, settings, "events")
    assert len(rows) == 60 and rows == expected
    assert {(r["status"], r["row_count"]) for r in tracker.read().to_pylist()} == {("completed", 10)}
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('events')}`").collect()
    reload_commits = [h for h in history if h["version"] >= 6 // max_files]
    assert {h["operation"] for h in reload_commits} == {"WRITE"}
    assert all(h["operationParameters"]["mode"] == "Overwrite" for h in reload_commits)  # each replaced rows
    assert main(["validate-consistency", "--config", str(lake.config_path)]) == 0


EXTRACTS = [  # (customer_id, name, email, updated_at); later extracts repeat unchanged rows of earlier ones
    [(1, "ann", "a@x", 1), (2, "bob", "b@x", 1), (3, "cy", "c@x", 1)],
    [(1, "ann", "a@x", 2), (2, "bobby", "b@x", 2), (3, "cy", "c@x", 2)],
    [(1, "ann", "a@x", 3), (2, "bobby", "b@x", 3), (4, "dee", "d@x", 3)],
    [(1, "anne", "a@x", 4), (3, "cy", "c2@x", 4)],
    [(1, "anne", "a@x", 5), (2, "bobby", "b@x", 5), (3, "cy", "c2@x", 5), (4, "dee", "d@x", 5)],
]
HISTORY = sorted([  # (customer_id, name, email, start day, end day, current)
    (1, "ann", "a@x", 1, 4, False), (1, "anne", "a@x", 4, None, True),
    (2, "bob", "b@x", 1, 2, False), (2, "bobby", "b@x", 2, None, True),
    (3, "cy", "c@x", 1, 4, False), (3, "cy", "c2@x", 4, None, True),
    (4, "dee", "d@x", 3, None, True),
], key=str)


def csv_customers():
    return {"table_name": "customers", "source_path": "landing/customers", "file_format": "csv",
            "read_options": {"header": True, "inferSchema": True}, "loading_strategy": "scd2",
            "primary_keys": ["customer_id"], "tracking_columns": ["name", "email"],
            "scd2_sequence_column": "updated_at"}


def write_extracts(lake):
    for number, rows in enumerate(EXTRACTS, start=1):
        text = "customer_id,name,email,updated_at\n" + "".join(
            f"{cid},{name},{email},2025-01-0{day}T00:00:00\n" for cid, name, email, day in rows)
        lake.write_bytes("customers", f"extract_{number}.csv", text.encode(), days_ago=6 - number)


def history(spark, settings):
    frame = spark.read.format("delta").load(settings.table_path("customers"))
    rows = frame.selectExpr("customer_id", "name", "email", "day(effective_date)", "day(end_date)",
                            "is_current").collect()
    return sorted((tuple(r) for r in rows), key=str)


@pytest.mark.parametrize("max_files", [5, 2, 1])
def test_scd2_reload_after_reset_recognises_every_row_and_keeps_the_history(
        spark, lake, instance, home, max_files):
    write_extracts(lake)
    settings = lake.config(tables=[csv_customers()], max_files_per_run=max_files)
    assert run_pipeline(settings, instance=instance, run_checks=False).total_files_processed == 5
    assert history(spark, settings) == HISTORY
    version_before = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('customers')}`").first()["version"]
    assert main(["reset-state", "--config", str(lake.config_path), "--yes"]) == 0
    summary = run_pipeline(settings, instance=instance, run_checks=False)
    assert (summary.total_files_processed, summary.total_files_failed) == (5, 0), summary.tables
    assert history(spark, settings) == HISTORY
    tracker = tracker_of(settings, "customers")
    # every file completes with the change rows it holds in the record (all of them were applied before)
    counts = {r["file_path"].rsplit("/", 1)[1]: (r["status"], r["row_count"]) for r in tracker.read().to_pylist()}
    assert counts == {f"extract_{n}.csv": ("completed", len(rows)) for n, rows in enumerate(EXTRACTS, start=1)}
    # the reload's commits are empty: they carry their batches' txns and change no row
    commits = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('customers')}`").where(
        f"version > {version_before}").collect()
    assert commits and all(int(c["operationMetrics"].get("numOutputRows", "0")) == 0 for c in commits)
    assert main(["validate-consistency", "--config", str(lake.config_path)]) == 0
