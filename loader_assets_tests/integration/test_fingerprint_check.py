"""The post-load check of a Spark append proven by the write's observed fingerprint and the Delta log
(``fingerprint.verified_by_fingerprints``) instead of reading the batch back: it proves a packed batch (data files
shared by several source files, which the log alone cannot count per file), and every way the table can differ
from the tracker (a second load of a file, lost rows, rows of a file the tracker does not know, a fingerprint
that does not match) leaves it unproven, so the check reads the rows in Spark and names the difference."""

import dagster as dg
import pytest

from loader_assets.api import run_pipeline
from loader_assets.checks import (
    COUNTED_BY_FINGERPRINTS,
    COUNTED_BY_SPARK,
    compare_target_with_tracker,
    files_with_rows,
)
from loader_assets.fingerprint import observe, observed, observed_in_run, verified_by_fingerprints
from loader_assets.reading import BATCH_ID_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.target import rows_per_source_file

pytestmark = pytest.mark.spark


def no_spark():
    raise AssertionError("the check asked for Spark: the fingerprint did not prove the rows")


def last_check(instance, name="target_matches_tracker"):
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("events"), name), limit=1)
    evaluation = history[0].event.dagster_event.event_specific_data
    return evaluation.passed, {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def load_packed(lake, instance, prefix, first_id, days_ago=1.0):
    """Six parquet files of one schema loaded in one run with Spark (the small-batch engine off): one scan,
    which Spark packs into shared splits, so a data file holds rows of several source files."""
    settings = lake.config(small_batch_max_bytes=0)
    files = [str(lake.write_parquet("events", f"{prefix}{n}.parquet", list(range(first_id + 10 * n,
                                                                               first_id + 10 * n + n + 1)),
                                    days_ago=days_ago)) for n in range(6)]
    summary = run_pipeline(settings, instance=instance)
    assert summary.total_files_processed == 6 and summary.success
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    path = settings.table_path("events")
    assert rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, files) is None, \
        "the batch must be packed for the fingerprint route to be what is tested"
    return settings, tracker, path, files, summary.tables["events"].run_ids[-1]


def test_a_packed_append_is_proven_by_its_fingerprint_without_reading_rows(spark, lake, instance):
    settings, tracker, path, first, run_id = load_packed(lake, instance, "a", 0)
    passed, metadata = last_check(instance)
    assert passed and metadata["counted_by"] == COUNTED_BY_FINGERPRINTS
    assert metadata["files_in_target"] == 6
    fingerprints = observed_in_run(instance, run_id, "events")
    assert [rows for rows, _, _ in fingerprints.values()] == [21]  # 1 + 2 + ... + 6 rows, one batch
    result = compare_target_with_tracker(no_spark, tracker, path, first, fingerprints)
    assert result.consistent and result.target_files == 6 and result.counted_by == COUNTED_BY_FINGERPRINTS

    # a second run's batch, checked on its own among the first run's data files
    _, _, _, second, run_id = load_packed(lake, instance, "b", 1000, days_ago=0.5)
    passed, metadata = last_check(instance)
    assert passed and metadata["counted_by"] == COUNTED_BY_FINGERPRINTS and metadata["files_in_target"] == 6
    result = compare_target_with_tracker(no_spark, tracker, path, second, observed_in_run(instance, run_id, "events"))
    assert result.consistent and result.target_files == 6


@pytest.mark.parametrize("change", ["loaded_twice", "rows_lost", "untracked_rows", "other_fingerprint"])
def test_any_difference_leaves_the_fingerprint_unproven_and_spark_names_it(spark, lake, instance, change):
    from pyspark.sql import functions as F

    _, tracker, path, files, run_id = load_packed(lake, instance, "a", 0)
    fingerprints = observed_in_run(instance, run_id, "events")
    (batch, (rows, h1, h2)), = fingerprints.items()
    target = spark.read.format("delta").load(path)
    if change == "loaded_twice":  # the rows of one file again, under another batch id
        (target.where(F.col(SOURCE_FILE_COLUMN) == files[2]).withColumn(BATCH_ID_COLUMN, F.lit("99999999-again"))
         .write.format("delta").mode("append").save(path))
    elif change == "rows_lost":
        spark.sql(f"DELETE FROM delta.`{path}` WHERE id = 31")  # one of the 4 rows of files[3] (30-33)
    elif change == "untracked_rows":
        (target.limit(1).withColumn(SOURCE_FILE_COLUMN, F.lit("/elsewhere/x.parquet"))
         .withColumn(BATCH_ID_COLUMN, F.lit("99999999-other")).write.format("delta").mode("append").save(path))
    else:  # the tracker's files and counts are right, the observation says otherwise
        fingerprints = {batch: (rows, h1 + 1, h2)}
    assert verified_by_fingerprints(path, files_with_rows(tracker), fingerprints, True) is None
    result = compare_target_with_tracker(spark, tracker, path, files, fingerprints)
    assert result.counted_by == COUNTED_BY_SPARK
    if change == "loaded_twice":
        assert [d["file_path"] for d in result.duplicate_loads] == [files[2]]
    elif change == "rows_lost":
        assert result.count_mismatches == [{"file": files[3], "tracker_rows": 4, "target_rows": 3}]
    elif change == "untracked_rows":
        assert result.untracked_files == ["/elsewhere/x.parquet"]
    else:
        assert result.consistent  # the table is right: only the proof was refused


def test_a_write_delta_skips_observes_nothing_and_never_blocks(spark, tmp_path):
    from pyspark.sql import functions as F

    path = str(tmp_path / "t")
    frame = spark.range(3).withColumn(SOURCE_FILE_COLUMN, F.lit("/l/a"))
    for attempt in range(2):  # the second write carries the txn already recorded: Delta skips it
        rows, observation = observe(frame)
        rows.write.format("delta").mode("append").option("txnAppId", "t").option("txnVersion", "1").save(path)
        found = observed(observation)
        if attempt == 0:
            assert found is not None and found[0] == 3 and None not in found
        else:
            assert found is None
    assert spark.read.format("delta").load(path).count() == 3
