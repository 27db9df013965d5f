"""Rows per source file from the Delta log's statistics (``target.rows_per_source_file``), which the post-load
check uses instead of a Spark query when the log can say exactly: checked against Spark's own count of the
same table, over seeded random tables that mix the shapes the log cannot answer for (data files of several
source files, a file under two batch ids, null source files, paths longer than the statistics prefix). CI runs
seeds 0-2, the soak tier 3-11."""

import random

import pytest

from loader_assets.api import run_pipeline
from loader_assets.checks import compare_target_with_tracker
from loader_assets.reading import BATCH_ID_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.target import rows_per_source_file

pytestmark = pytest.mark.spark

LONG = "/landing/" + "d" * 200 + "/" + "e" * 120  # longer than the 256-character statistics prefix


def spark_truth(spark, path, files):
    """(rows per file, files with rows under more than one batch id), counted by Spark over the data."""
    from pyspark.sql import functions as F

    frame = spark.read.format("delta").load(path)
    if files is not None:
        frame = frame.where(F.col(SOURCE_FILE_COLUMN).isin(list(files)))
    rows = frame.groupBy(SOURCE_FILE_COLUMN).agg(F.count(F.lit(1)).alias("n"),
                                                 F.countDistinct(BATCH_ID_COLUMN).alias("b")).collect()
    return ({r[0]: r["n"] for r in rows if r[0] is not None}, {r[0] for r in rows if r["b"] > 1},
            any(r[0] is None for r in rows))


def append(spark, path, rows, one_data_file):
    """``rows`` appended: in one data file, or each source file's rows in a data file of their own, as a load
    writes them when each file is a read split of its own (a write per file here: Spark's optimizer folds a
    union of local rows into one scan)."""
    schema = f"id long, {SOURCE_FILE_COLUMN} string, {BATCH_ID_COLUMN} string"
    groups = {}
    for row in rows:
        groups.setdefault(row[1], []).append(row)
    for group in [rows] if one_data_file else groups.values():
        spark.createDataFrame(group, schema).coalesce(1).write.format("delta").mode("append").save(path)


@pytest.mark.parametrize("seed", [0, 1, 2, *[pytest.param(s, marks=pytest.mark.soak) for s in range(3, 12)]])
def test_log_counts_equal_sparks_whenever_the_log_answers(spark, tmp_path, seed):
    rng = random.Random(seed)
    path = str(tmp_path / "t")
    short = [f"/landing/f{i:02d}.parquet" for i in range(16)]
    names = [*short, LONG + "1", LONG + "2"]
    answered = 0
    for batch in range(8):
        # every shape the log must refuse poisons the files in its data file's range for good, so they are
        # rarer than the loads' own shape; the first batch is a load's, so each seed has scopes the log answers
        shape = "own" if batch == 0 else rng.choice(["own"] * 5 + ["mixed", "again", "null"])
        chosen = rng.sample(short if batch == 0 else names, rng.randint(1, 3))
        rows = [(i, name, f"batch-{batch}") for name in chosen for i in range(rng.randint(1, 4))]
        if shape == "again":  # a file already in the table, under this batch id too: a duplicate load
            rows.append((99, rng.choice(names), f"batch-{batch}"))
        if shape == "null":
            rows.append((98, None, f"batch-{batch}"))
        append(spark, path, rows, one_data_file=shape == "mixed")
        for files in (None, chosen, rng.sample(names, 3)):
            logged = rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, files)
            truth, twice, has_null = spark_truth(spark, path, files)
            if logged is None:
                continue
            answered += 1
            assert dict(zip(logged["file_path"].to_pylist(), logged["rows"].to_pylist(), strict=True)) == truth
            assert not twice, "a file under two batch ids must go to Spark, which names the batches"
            assert not (files is None and has_null), "rows without a source file must go to Spark"
            assert not any(f.startswith(LONG) for f in truth), "a path longer than the prefix cannot be exact"
    assert answered >= 1, "the log answered for no scope of this table"


def test_the_log_answers_after_a_load_and_refuses_a_mixed_data_file(spark, tmp_path):
    path = str(tmp_path / "t")
    append(spark, path, [(1, "/l/a", "b1"), (2, "/l/a", "b1"), (3, "/l/b", "b1")], one_data_file=False)
    logged = rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, ["/l/a"])
    assert logged is not None and logged.to_pylist() == [{"file_path": "/l/a", "rows": 2}]
    append(spark, path, [(4, "/l/c", "b2"), (5, "/l/e", "b2")], one_data_file=True)  # one data file: c..e
    assert rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, ["/l/d"]) is None  # inside c..e
    assert rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, ["/l/a", "/l/b"]).to_pylist() == [
        {"file_path": "/l/a", "rows": 2}, {"file_path": "/l/b", "rows": 1}]  # outside c..e: still exact
    assert rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN) is None  # the whole table: no


def test_a_table_with_deletion_vectors_goes_to_spark(spark, tmp_path):
    path = str(tmp_path / "t")
    append(spark, path, [(1, "/l/a", "b1"), (2, "/l/a", "b1")], one_data_file=False)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.sql(f"DELETE FROM delta.`{path}` WHERE id = 1")
    assert rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, ["/l/a"]) is None
    assert spark_truth(spark, path, ["/l/a"])[0] == {"/l/a": 1}  # what numRecords (2) would have got wrong


def test_the_post_load_check_reads_the_log_after_a_small_load_and_spark_after_a_packed_one(spark, lake, instance):
    # Spark's packing is under test: the small-batch engine would write the packed batch one file per source
    # file (test_small_batch.py), so it is off here
    settings = lake.config(small_batch_max_bytes=0)
    path = settings.table_path("events")
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    single = [lake.write_parquet("events", f"s{n}.parquet", list(range(n * 10, n * 10 + n + 1))) for n in range(2)]
    assert run_pipeline(settings, instance=instance).total_files_processed == 2  # two files, a split each
    logged = rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, [str(f) for f in single])
    assert logged is not None, "a file read as a split of its own is written to data files of its own"
    assert logged.to_pylist() == [{"file_path": str(single[0]), "rows": 1}, {"file_path": str(single[1]), "rows": 2}]
    # six parquet files of one schema: one scan, which Spark packs into shared splits (each file counts its
    # size plus the 4 MB open cost against a split of max(4 MB, bytes / cores))
    packed = [lake.write_parquet("events", f"p{n}.parquet", [100 + n], days_ago=0.5) for n in range(6)]
    assert run_pipeline(settings, instance=instance).total_files_processed == 6
    assert rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, [str(f) for f in packed]) is None
    for files in (single, packed, None):  # the check gives the same answer either way
        result = compare_target_with_tracker(spark, tracker, path, None if files is None else [str(f) for f in files])
        assert result.consistent, result
        assert result.target_files == (8 if files is None else len(files))


def test_csv_files_are_read_one_by_one_so_the_log_answers_for_a_batch_of_them(spark, lake, instance):
    settings = lake.config(tables=[{"table_name": "events", "source_path": "landing/events", "file_format": "csv",
                                    "partitioning": {"granularity": "day", "start": "2024-01-01"}}])
    files = [lake.write_bytes("events", f"{n}.csv", ("id\n" + "".join(f"{n * 10 + i}\n" for i in range(n + 1)))
                              .encode()) for n in range(5)]
    assert run_pipeline(settings, instance=instance).total_files_processed == 5
    logged = rows_per_source_file(settings.table_path("events"), SOURCE_FILE_COLUMN, BATCH_ID_COLUMN,
                                  [str(f) for f in files])
    assert logged is not None and logged["rows"].to_pylist() == [1, 2, 3, 4, 5]
