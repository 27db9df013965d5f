"""The post-load check of a Spark append proven by the data files its batch's commit added and the Delta log
(``written_rows.verified_by_commits``) instead of reading the batch back with Spark: it proves a packed batch
(data files shared by several source files, which the log alone cannot count per file), and every way the table
can differ from the tracker (a second load of a file, lost rows, rows of a file the tracker does not know, a
tracker count that does not match, a data file changed on disk behind the log) leaves it unproven, so the check
reads the rows in Spark and names the difference."""

import dagster as dg
import pytest

from loader_assets.api import run_pipeline
from loader_assets.checks import (
    COUNTED_BY_COMMITS,
    COUNTED_BY_SPARK,
    compare_target_with_tracker,
    files_with_rows,
)
from loader_assets.reading import BATCH_ID_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.target import files_added_by, rows_per_source_file
from loader_assets.written_rows import rows_per_file_in, verified_by_commits
from loader_assets_tests.conftest import target_rows
from loader_assets_tests.integration.test_reset_and_reload import home, six_files  # noqa: F401 - a fixture

pytestmark = pytest.mark.spark


def no_spark():
    raise AssertionError("the check asked for Spark: the commit's data files did not prove the rows")


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
        "the batch must be packed for the commit's data files to be what proves it"
    return settings, tracker, path, files


def batch_of(tracker, files):
    """(batch id, target version) of the one batch that loaded ``files``."""
    rows = [r for r in files_with_rows(tracker).to_pylist() if r["file_path"] in files]
    assert len({(r["batch_id"], r["target_version"]) for r in rows}) == 1, rows
    return rows[0]["batch_id"], rows[0]["target_version"]


def test_a_packed_append_is_proven_by_its_commits_data_files_without_spark(spark, lake, instance):
    settings, tracker, path, first = load_packed(lake, instance, "a", 0)
    passed, metadata = last_check(instance)
    assert passed and metadata["counted_by"] == COUNTED_BY_COMMITS
    assert metadata["files_in_target"] == 6
    batch, version = batch_of(tracker, first)
    added = files_added_by(path, version)
    assert 0 < len(added) < 6  # packed: fewer data files than source files
    assert rows_per_file_in(path, added, batch) == {f: n + 1 for n, f in enumerate(first)}  # 1 + ... + 6 rows
    assert rows_per_file_in(path, added, "another-batch") is None  # every row must carry the batch's id
    result = compare_target_with_tracker(no_spark, tracker, path, first)
    assert result.consistent and result.target_files == 6 and result.counted_by == COUNTED_BY_COMMITS

    # a second run's batch, checked on its own among the first run's data files
    _, _, _, second = load_packed(lake, instance, "b", 1000, days_ago=0.5)
    passed, metadata = last_check(instance)
    assert passed and metadata["counted_by"] == COUNTED_BY_COMMITS and metadata["files_in_target"] == 6
    result = compare_target_with_tracker(no_spark, tracker, path, second)
    assert result.consistent and result.target_files == 6 and result.counted_by == COUNTED_BY_COMMITS


@pytest.mark.parametrize("change", ["loaded_twice", "rows_lost", "untracked_rows"])
def test_any_difference_leaves_the_commit_unproven_and_spark_names_it(spark, lake, instance, change):
    from pyspark.sql import functions as F

    _, tracker, path, files = load_packed(lake, instance, "a", 0)
    target = spark.read.format("delta").load(path)
    if change == "loaded_twice":  # the rows of one file again, under another batch id
        (target.where(F.col(SOURCE_FILE_COLUMN) == files[2]).withColumn(BATCH_ID_COLUMN, F.lit("99999999-again"))
         .write.format("delta").mode("append").save(path))
    elif change == "rows_lost":
        spark.sql(f"DELETE FROM delta.`{path}` WHERE id = 31")  # one of the 4 rows of files[3] (30-33)
    else:
        (target.limit(1).withColumn(SOURCE_FILE_COLUMN, F.lit("/elsewhere/x.parquet"))
         .withColumn(BATCH_ID_COLUMN, F.lit("99999999-other")).write.format("delta").mode("append").save(path))
    assert verified_by_commits(path, files_with_rows(tracker), True) is None
    result = compare_target_with_tracker(spark, tracker, path, files)
    assert result.counted_by == COUNTED_BY_SPARK
    if change == "loaded_twice":
        assert [d["file_path"] for d in result.duplicate_loads] == [files[2]]
    elif change == "rows_lost":
        assert result.count_mismatches == [{"file": files[3], "tracker_rows": 4, "target_rows": 3}]
    else:
        assert result.untracked_files == ["/elsewhere/x.parquet"]


def test_a_data_file_changed_behind_the_log_is_not_proven(spark, lake, instance):
    """The proof reads the data files, not only the log: one row of a source file relabelled as another inside a
    data file (rewritten in place, the log and its statistics untouched) is refused, and the counts read from
    the commit's files show the move."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    _, tracker, path, files = load_packed(lake, instance, "a", 0)
    assert verified_by_commits(path, files_with_rows(tracker), True) is not None
    batch, version = batch_of(tracker, files)
    added = files_added_by(path, version)
    shared = [f for f in sorted(added)
              if len(pc.unique(pq.read_table(f"{path}/{f}", columns=[SOURCE_FILE_COLUMN])[0])) >= 2]
    assert shared, "a packed batch has a data file with two source files"
    table = pq.read_table(f"{path}/{shared[0]}")
    names = table[SOURCE_FILE_COLUMN].to_pylist()
    moved_from, moved_to = sorted(set(names))[:2]
    names[names.index(moved_from)] = moved_to
    column = table.schema.get_field_index(SOURCE_FILE_COLUMN)
    pq.write_table(table.set_column(column, table.schema.field(column), pa.array(names, pa.string())),
                   f"{path}/{shared[0]}")
    assert verified_by_commits(path, files_with_rows(tracker), True) is None
    rows = {f: n + 1 for n, f in enumerate(files)}
    rows[moved_from] -= 1
    rows[moved_to] += 1
    assert rows_per_file_in(path, added, batch) == {f: n for f, n in rows.items() if n}


def test_a_tracker_count_that_differs_from_the_data_files_is_not_proven(spark, lake, instance):
    """The tracker's counts are compared with what the data files hold, file by file: one count off by one (the
    table untouched) is refused, the true counts are proven."""
    import pyarrow as pa

    _, tracker, path, files = load_packed(lake, instance, "a", 0)
    expected = files_with_rows(tracker)
    proof = verified_by_commits(path, expected, True)
    assert proof is not None and dict(zip(proof["file_path"].to_pylist(), proof["rows"].to_pylist(),
                                          strict=True)) == {f: n + 1 for n, f in enumerate(files)}
    counts = [c + 1 if f == files[2] else c
              for f, c in zip(expected["file_path"].to_pylist(), expected["row_count"].to_pylist(), strict=True)]
    off_by_one = expected.set_column(expected.schema.get_field_index("row_count"), "row_count",
                                     pa.array(counts, expected.schema.field("row_count").type))
    assert verified_by_commits(path, off_by_one, True) is None


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
    RESTORE in between puts the loaded files back). Whenever the commits' data files prove a run's files, the rows Spark
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
        runs.append(files)
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    path = settings.table_path("events")
    loaded = open_target(path).version()
    every_file = len(runs) == 1
    files = rng.choice(runs)
    expected = files_with_rows(tracker)
    expected = expected.filter(pc.is_in(expected["file_path"], pa.array(files, pa.string())))

    def proof_agrees(after):
        proof = verified_by_commits(path, expected, every_file)
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
    passes, and it counts from the commits' data files, not by reading the rows back with Spark."""
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
    assert checks_of_last(2) == [(True, COUNTED_BY_COMMITS)] * 2
    assert main(["reset-state", "--config", str(lake.config_path), "--yes"]) == 0
    reload = run_pipeline(settings, instance=instance)
    assert reload.success and reload.total_files_processed == 6 and len(reload.tables["events"].run_ids) == 2
    assert checks_of_last(2) == [(True, COUNTED_BY_COMMITS)] * 2
    assert sorted(target_rows(spark, settings, "events")) == sorted(
        (i * 10 + j, f"n{i * 10 + j}", f) for i, f in enumerate(files) for j in range(10))
    assert main(["validate-consistency", "--config", str(lake.config_path)]) == 0
