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
from loader_assets_tests.conftest import target_rows
from loader_assets_tests.integration.test_reset_and_reload import home, six_files  # noqa: F401 - a fixture

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


TAMPERS = ["optimize", "loaded_twice", "again_same_batch", "rows_lost", "rows_moved", "untracked_rows"]


def tamper_with(spark, path, tamper, victim, other):
    """One change to the table behind the loader's back."""
    from pyspark.sql import functions as F

    target = spark.read.format("delta").load(path)
    low = target.where(F.col(SOURCE_FILE_COLUMN) == victim).agg(F.min("id")).first()[0]
    if tamper == "optimize":
        spark.sql(f"OPTIMIZE delta.`{path}`")
    elif tamper in ("loaded_twice", "again_same_batch"):
        again = target.where(F.col(SOURCE_FILE_COLUMN) == victim)
        if tamper == "loaded_twice":
            again = again.withColumn(BATCH_ID_COLUMN, F.lit("99999999-again"))
        again.write.format("delta").mode("append").save(path)
    elif tamper == "rows_lost":
        spark.sql(f"DELETE FROM delta.`{path}` WHERE id = {low}")
    elif tamper == "rows_moved":  # one row of a file relabelled as another file of the same batch: counts kept
        spark.sql(f"UPDATE delta.`{path}` SET {SOURCE_FILE_COLUMN} = '{other}' WHERE id = {low}")
    else:
        (target.limit(1).withColumn(SOURCE_FILE_COLUMN, F.lit("/elsewhere/x.parquet"))
         .write.format("delta").mode("append").save(path))


@pytest.mark.parametrize("seed", [0, 1, 2, *[pytest.param(s, marks=pytest.mark.soak) for s in range(3, 12)]])
def test_a_proof_always_agrees_with_sparks_count_over_random_loads_and_changes(spark, lake, instance, seed):
    """Seeded: 1-3 packed runs of random files; the untouched table must be proven (so a proof that always
    refused fails here), then each change of ``TAMPERS`` in a random order, each on the loaded table (Delta's
    RESTORE in between puts the loaded files back). Whenever the fingerprint proves a run's files, the rows Spark
    counts are exactly the proven ones, no file is under two batch ids and, for a first load, nothing else is in
    the table. Replay: ``-k 'random and <seed>'``."""
    import random

    import pyarrow as pa
    import pyarrow.compute as pc

    from loader_assets.target import open_target
    from loader_assets_tests.integration.test_log_row_counts import spark_truth

    rng = random.Random(seed)
    runs, next_id = [], 0
    for run in range(rng.randint(1, 3)):
        sizes = [rng.randint(1, 30) for _ in range(rng.randint(3, 8))]
        settings = lake.config(small_batch_max_bytes=0)
        files = []
        for n, size in enumerate(sizes):
            files.append(str(lake.write_parquet("events", f"r{run}-{n}.parquet", list(range(next_id, next_id + size)),
                                                days_ago=3 - run)))
            next_id += size
        summary = run_pipeline(settings, instance=instance)
        assert summary.success and summary.total_files_processed == len(files)
        runs.append((files, observed_in_run(instance, summary.tables["events"].run_ids[-1], "events")))
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    path = settings.table_path("events")
    loaded = open_target(path).version()
    every_file = len(runs) == 1
    files, fingerprints = rng.choice(runs)
    expected = files_with_rows(tracker)
    expected = expected.filter(pc.is_in(expected["file_path"], pa.array(files, pa.string())))

    def proof_agrees(after):
        proof = verified_by_fingerprints(path, expected, fingerprints, every_file)
        if proof is not None:
            counts, twice, _ = spark_truth(spark, path, None if every_file else files)
            assert {r["file_path"]: r["rows"] for r in proof.to_pylist()} == counts, \
                f"seed {seed}: the proof disagrees with Spark after {after}"
            assert not twice, f"seed {seed}: proven although {sorted(twice)} are under two batch ids ({after})"
        return proof is not None

    assert proof_agrees("the loads"), f"seed {seed}: an untouched table must be proven"
    for tamper in rng.sample(TAMPERS, len(TAMPERS)):
        victim, other = rng.sample(files, 2)
        tamper_with(spark, path, tamper, victim, other)
        proof_agrees(tamper)
        spark.sql(f"RESTORE TABLE delta.`{path}` TO VERSION AS OF {loaded}")
    assert proof_agrees("RESTORE"), f"seed {seed}: RESTORE puts the written files back, which proves again"


@pytest.mark.usefixtures("home")  # the CLI's DAGSTER_HOME
def test_runs_of_several_batches_and_their_reload_after_reset_state_are_proven(spark, lake, instance):
    """The operator path: batches of three packed files (``max_files_per_run`` 3, one run each), then
    ``reset-state`` and the reload, whose batches replace the files' rows (``replaceWhere``). Every run's check
    passes, and it counts by the writes' fingerprints, not by reading the rows back."""
    from loader_assets.cli import main

    files = [str(f) for f in six_files(lake)]
    settings = lake.config(small_batch_max_bytes=0, max_files_per_run=3)
    path = settings.table_path("events")

    def checks_of_last(runs):
        from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("events"), "target_matches_tracker"), limit=runs,
            status={Status.SUCCEEDED, Status.FAILED})
        return [(h.event.dagster_event.event_specific_data.passed,
                 h.event.dagster_event.event_specific_data.metadata["counted_by"].value) for h in history]

    first = run_pipeline(settings, instance=instance)
    assert first.success and len(first.tables["events"].run_ids) == 2
    assert rows_per_source_file(path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN, files[3:]) is None  # packed
    assert checks_of_last(2) == [(True, COUNTED_BY_FINGERPRINTS)] * 2
    assert main(["reset-state", "--config", str(lake.config_path), "--yes"]) == 0
    reload = run_pipeline(settings, instance=instance)
    assert reload.success and reload.total_files_processed == 6 and len(reload.tables["events"].run_ids) == 2
    assert checks_of_last(2) == [(True, COUNTED_BY_FINGERPRINTS)] * 2
    assert sorted(target_rows(spark, settings, "events")) == sorted(
        (i * 10 + j, f"n{i * 10 + j}", f) for i, f in enumerate(files) for j in range(10))
    assert main(["validate-consistency", "--config", str(lake.config_path)]) == 0
