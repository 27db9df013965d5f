"""End-to-end loads through real Dagster runs, real Spark + Delta, and the real Delta tracker."""

import dagster as dg
import pytest

from loader_assets.api import run_pipeline
from loader_assets.assets import build_table_asset
from loader_assets.checks import compare_target_with_tracker
from loader_assets.definitions import build_resources
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.sensors import range_tags
from loader_assets_tests.conftest import target_rows

pytestmark = pytest.mark.spark


def tracker_rows(settings, table="events"):
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table(table)
    return {r["file_path"]: r for r in tracker.read().to_pylist()}


def assert_consistent(spark, settings, table="events"):
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table(table)
    result = compare_target_with_tracker(spark, tracker, settings.table_path(table))
    assert result.consistent, result


def test_first_load_is_the_union_of_the_files_with_audit_columns(spark, lake, instance):
    a = lake.write_parquet("events", "a.parquet", [1, 2, 3], days_ago=2)
    b = lake.write_parquet("events", "b.parquet", [4, 5], days_ago=1)
    settings = lake.config()
    summary = run_pipeline(settings, instance=instance)
    assert (summary.total_files_discovered, summary.total_files_processed, summary.total_files_failed) == (2, 2, 0)
    assert summary.total_rows_loaded == 5 and summary.success
    assert target_rows(spark, settings, "events") == sorted(
        [(i, f"n{i}", str(a)) for i in (1, 2, 3)] + [(i, f"n{i}", str(b)) for i in (4, 5)])
    frame = spark.read.format("delta").load(settings.table_path("events"))
    assert frame.columns == ["id", "name", "_source_file", "_load_timestamp", "_batch_id"]
    assert frame.where("_load_timestamp IS NULL OR _batch_id IS NULL").count() == 0
    rows = tracker_rows(settings)
    assert {r["status"] for r in rows.values()} == {"completed"}
    assert rows[str(a)]["row_count"] == 3 and rows[str(b)]["row_count"] == 2
    assert rows[str(a)]["batch_id"] == frame.select("_batch_id").distinct().collect()[0][0]
    assert rows[str(a)]["target_version"] == 0
    assert_consistent(spark, settings)
    # The run is a real Dagster run: materialisations and checks are recorded in the instance.
    run = instance.get_run_by_id(summary.tables["events"].run_ids[0])
    assert run.is_success and run.tags["loader_assets/table"] == "events"
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("events"), "target_matches_tracker")])
    assert list(checks.values())[0].status.value == "SUCCEEDED"


def test_seed_guide_idempotency_three_runs(spark, lake, instance):
    for i in range(4):
        lake.write_parquet("events", f"f{i}.parquet", list(range(i * 10, i * 10 + 5)), days_ago=3 - i * 0.5)
    settings = lake.config()
    results, tables = [], []
    for _ in range(3):
        results.append(run_pipeline(settings, instance=instance))
        tables.append(target_rows(spark, settings, "events"))
    assert all(r.total_files_discovered == results[0].total_files_discovered == 4 for r in results)
    processed = [r.total_files_processed for r in results]
    assert processed == [4, 0, 0]
    assert processed[1] <= processed[0] and processed[2] <= processed[1]
    assert tables[0] == tables[1] == tables[2] and len(tables[0]) == 20
    assert_consistent(spark, settings)


def test_second_run_with_nothing_new_starts_no_spark_session(spark, lake, instance):
    lake.write_parquet("events", "a.parquet", [1], days_ago=1)
    settings = lake.config()
    assert run_pipeline(settings, instance=instance).spark_session_started
    again = run_pipeline(settings, instance=instance)
    assert not again.spark_session_started
    assert again.total_files_processed == 0 and again.tables["events"].run_ids == []


def test_a_file_dropped_later_loads_alone(spark, lake, instance):
    lake.write_parquet("events", "a.parquet", [1, 2], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance)
    before = spark.read.format("delta").load(settings.table_path("events")).collect()
    late = lake.write_parquet("events", "late.parquet", [9], days_ago=0)
    summary = run_pipeline(settings, instance=instance)
    assert summary.total_files_processed == 1 and summary.total_rows_loaded == 1
    after = spark.read.format("delta").load(settings.table_path("events"))
    assert sorted(map(tuple, after.where(f"_source_file != '{late}'").collect())) == sorted(map(tuple, before))
    assert after.where(f"_source_file = '{late}'").count() == 1
    assert len({r["batch_id"] for r in tracker_rows(settings).values()}) == 2
    assert_consistent(spark, settings)


def test_ranged_run_over_several_day_partitions_is_one_run_one_commit(spark, lake, instance):
    for days_ago in (5, 4, 2):
        lake.write_parquet("events", f"d{days_ago}.parquet", [days_ago], days_ago=days_ago + 0.01)
    outside = lake.write_parquet("events", "outside.parquet", [99], days_ago=8)
    settings = lake.config()
    asset = build_table_asset(settings.tables[0], settings)
    keys = asset.partitions_def.get_partition_keys()
    start, end = keys[-6], keys[-3]  # the windows of the files 5, 4 and 2 days ago
    result = dg.materialize([asset], instance=instance, resources=build_resources(settings),
                            tags=range_tags(start, end))
    assert result.success
    materialized = {e.partition for e in result.get_asset_materialization_events()}
    assert materialized == set(keys[-6:-2])
    rows = tracker_rows(settings)
    assert rows[str(outside)]["status"] == "pending"  # registered, but outside the range: not loaded
    loaded = {p for p, r in rows.items() if r["status"] == "completed"}
    assert len(loaded) == 3 and len({rows[p]["batch_id"] for p in loaded}) == 1
    assert sorted(r[0] for r in target_rows(spark, settings, "events")) == [2, 4, 5]
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('events')}`").collect()
    assert len(history) == 1


@pytest.mark.parametrize("before", [None, "7"])
def test_a_group_read_lists_local_files_in_the_driver_and_leaves_the_session_as_it_was(spark, lake, instance,
                                                                                        before):
    from loader_assets.reading import PARALLEL_LISTING_CONF

    files = [lake.write_parquet("events", f"g{n}.parquet", [n]) for n in range(40)]  # above Spark's 32
    if before is None:
        spark.conf.unset(PARALLEL_LISTING_CONF)
    else:
        spark.conf.set(PARALLEL_LISTING_CONF, before)
    try:
        settings = lake.config(small_batch_max_bytes=0)
        summary = run_pipeline(settings, instance=instance)
        assert summary.total_files_processed == 40 and summary.total_rows_loaded == 40
        assert spark.conf.get(PARALLEL_LISTING_CONF, None) == before
        assert target_rows(spark, settings, "events") == sorted((n, f"n{n}", str(f)) for n, f in enumerate(files))
    finally:
        spark.conf.unset(PARALLEL_LISTING_CONF)


def test_file_names_with_quotes_commas_spaces_unicode_and_glob_characters(spark, lake, instance):
    names = ["it's, \"quoted\".parquet", "with space ü 名前.parquet", "glob [a] {b} *.parquet", "percent%20+plus.parquet"]
    paths = [lake.write_parquet("events", name, [i], days_ago=1) for i, name in enumerate(names)]
    settings = lake.config()
    summary = run_pipeline(settings, instance=instance)
    assert summary.total_files_processed == 4 and summary.success
    assert target_rows(spark, settings, "events") == sorted((i, f"n{i}", str(p)) for i, p in enumerate(paths))
    assert_consistent(spark, settings)


def test_corrupt_and_empty_files_fail_alone_while_good_files_load(spark, lake, instance):
    good = lake.write_parquet("events", "good.parquet", [1, 2], days_ago=1)
    corrupt = lake.write_bytes("events", "corrupt.parquet", b"PAR1 this is not parquet", days_ago=1)
    empty = lake.write_bytes("events", "empty.parquet", b"", days_ago=1)
    settings = lake.config()
    summary = run_pipeline(settings, instance=instance)
    assert (summary.total_files_processed, summary.total_files_failed) == (1, 2) and not summary.success
    rows = tracker_rows(settings)
    assert rows[str(good)]["status"] == "completed"
    assert rows[str(corrupt)]["status"] == "failed" and rows[str(corrupt)]["retry_count"] == 1
    assert "not a readable parquet file" in rows[str(corrupt)]["error_message"]
    assert rows[str(empty)]["error_message"].startswith("file is empty (0 bytes)")
    assert summary.tables["events"].failed_files[str(corrupt)] == rows[str(corrupt)]["error_message"]
    assert target_rows(spark, settings, "events") == [(1, "n1", str(good)), (2, "n2", str(good))]
    # Dagster shows it: the failed-files check fails (WARN while retries remain) naming the files. The run failed
    # its asset step (the partition shows failed), so the run reported that evaluation itself, after its planned one
    run_id = summary.tables["events"].run_ids[0]
    latest, planned = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("events"), "no_failed_files"), limit=2)
    assert planned.run_id == run_id and latest.run_id == ""
    failed_check = latest.evaluation
    assert not failed_check.passed and failed_check.severity == dg.AssetCheckSeverity.WARN
    assert "corrupt.parquet" in str(failed_check.metadata["sample"].value)
    # Retries stop at retry_attempts; the good file is never touched again.
    loaded = {k: rows[str(good)][k] for k in ("batch_id", "batch_seq", "target_version", "updated_at")}
    commits = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('events')}`").count()
    for _ in range(3):
        run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings)
    assert rows[str(corrupt)]["retry_count"] == 3
    assert {k: rows[str(good)][k] for k in loaded} == loaded
    assert spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('events')}`").count() == commits
    assert target_rows(spark, settings, "events") == [(1, "n1", str(good)), (2, "n2", str(good))]
    assert run_pipeline(settings, instance=instance).tables["events"].run_ids == []
    assert_consistent(spark, settings)


def test_csv_with_header_only_loads_zero_rows_and_mismatched_columns_fail(spark, lake, instance):
    table = {"table_name": "views", "source_path": "landing/views", "file_format": "csv",
             "read_options": {"header": True}}
    ok = lake.write_bytes("views", "a.csv", b"id,page\n1,/\n2,/docs\n", days_ago=1)
    header_only = lake.write_bytes("views", "b.csv", b"id,page\n", days_ago=1)
    other = lake.write_bytes("views", "c.csv", b"id,url\n3,/x\n", days_ago=1)
    settings = lake.config(tables=[table])
    summary = run_pipeline(settings, instance=instance)
    rows = tracker_rows(settings, "views")
    assert rows[str(ok)]["row_count"] == 2 and rows[str(header_only)]["status"] == "completed"
    assert rows[str(header_only)]["row_count"] == 0
    assert rows[str(other)]["status"] == "failed"
    assert "missing columns ['page']" in rows[str(other)]["error_message"]
    assert "new columns ['url']" in rows[str(other)]["error_message"]
    assert summary.total_files_failed == 1
    assert_consistent(spark, settings, "views")


def test_consistency_check_detects_duplicates_untracked_rows_and_count_mismatches(spark, lake, instance):
    from pyspark.sql import functions as F

    a = lake.write_parquet("events", "a.parquet", [1, 2], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance)
    assert_consistent(spark, settings)
    path = settings.table_path("events")
    frame = spark.read.format("delta").load(path)
    # a second load of a.parquet under another batch id, and rows of a file the tracker never completed
    frame.withColumn("_batch_id", F.lit("rogue")).write.format("delta").mode("append").save(path)
    frame.limit(1).withColumn("_source_file", F.lit("/elsewhere/x.parquet")).write.format("delta") \
        .mode("append").save(path)
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    result = compare_target_with_tracker(spark, tracker, path)
    assert not result.consistent
    assert [d["file_path"] for d in result.duplicate_loads] == [str(a)]
    assert result.untracked_files == ["/elsewhere/x.parquet"]
    assert result.count_mismatches == [{"file": str(a), "tracker_rows": 2, "target_rows": 4}]


def test_whole_table_check_catches_rows_moved_between_files_of_one_batch(spark, lake, instance):
    """Per-batch totals still match when a row is attributed to the wrong file of the same batch; the batch's
    file-path hash sums do not, so the file-by-file comparison runs and names both files."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    a = lake.write_parquet("events", "a.parquet", [1, 2], days_ago=1)
    b = lake.write_parquet("events", "b.parquet", [3, 4], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance)
    path = settings.table_path("events")
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    clean = compare_target_with_tracker(spark, tracker, path)
    assert clean.consistent and (clean.completed_files, clean.target_files) == (2, 2)
    DeltaTable.forPath(spark, path).update(F.col("id") == 3, {"_source_file": F.lit(str(a))})
    assert spark.read.format("delta").load(path).groupBy("_batch_id").count().count() == 1  # one batch
    result = compare_target_with_tracker(spark, tracker, path)
    assert sorted(result.count_mismatches, key=lambda m: m["file"]) == [
        {"file": str(a), "tracker_rows": 2, "target_rows": 3},
        {"file": str(b), "tracker_rows": 2, "target_rows": 1},
    ]
    assert not result.duplicate_loads and not result.untracked_files and result.target_files == 2
