"""The small-batch engine (small_batch.py): small appends committed with delta-rs, equal to what Spark commits.

Each case loads the same files into two lakes, one with the engine (the default) and one with
``small_batch_max_bytes: 0`` (every batch through Spark), and requires the same table, the same tracker and the
same check results; the engine's commits must also be valid Delta commits for Spark (read back, data skipping on
their statistics) and carry the batch's txn and userMetadata like Spark's.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loader_assets.api import run_pipeline
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.small_batch import checkpoint_like_spark, delta_stats
from loader_assets.target import app_id, open_target, rows_per_source_file, target_txn_version
from loader_assets_tests.conftest import Lake, set_mtime

pytestmark = pytest.mark.spark

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64()), ("day", pa.date32()),
                    ("at", pa.timestamp("us", tz="UTC")), ("flag", pa.bool_()), ("small", pa.int32())])


def rows(ids: list[int], nulls: bool = False) -> pa.Table:
    def maybe(value, i):
        return None if nulls and i % 3 == 0 else value

    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "name": pa.array([maybe(f"name {i}'s", i) for i in ids], pa.string()),
        "score": pa.array([maybe(i / 7, i) for i in ids], pa.float64()),
        "day": pa.array([maybe(date(2024, 1, 1 + i % 28), i) for i in ids], pa.date32()),
        "at": pa.array([maybe(datetime(2024, 5, 1, 12, 0, i % 60, 123456 + i, tzinfo=UTC), i) for i in ids],
                       pa.timestamp("us", tz="UTC")),
        "flag": pa.array([maybe(i % 2 == 0, i) for i in ids], pa.bool_()),
        "small": pa.array([maybe(i * 3, i) for i in ids], pa.int32()),
    }, schema=SCHEMA)


def drop(lake: Lake, name: str, table: pa.Table, days_ago: float) -> Path:
    path = lake.landing / "events" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    set_mtime(path, days_ago)
    return path


def lakes(tmp_path: Path) -> dict[str, Lake]:
    return {"delta-rs": Lake(tmp_path / "small"), "spark": Lake(tmp_path / "spark")}


def configure(engine: str, lake: Lake, **overrides):
    return lake.config(**({"small_batch_max_bytes": 0} if engine == "spark" else {}), **overrides)


def table_of(spark, settings) -> list[tuple]:
    frame = spark.read.format("delta").load(settings.table_path("events"))
    columns = [c for c in frame.columns if c not in ("_load_timestamp", "_batch_id")]
    return sorted((tuple(r) for r in frame.select(*columns).collect()), key=repr)


def tracker_of(settings, root: Path) -> dict[str, tuple]:
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    return {str(Path(r["file_path"]).relative_to(root)): (r["status"], r["row_count"], r["error_message"])
            for r in tracker.read().to_pylist()}


def relative(table: list[tuple], root: Path) -> list[tuple]:
    return [tuple(str(Path(v).relative_to(root)) if isinstance(v, str) and v.startswith(str(root)) else v
                  for v in row) for row in table]


def engines_of(settings) -> list[str]:
    """The engine of each commit of the target, oldest first (delta-rs writes engineInfo, Spark does not)."""
    history = open_target(settings.table_path("events")).history()
    return ["delta-rs" if "delta-rs" in str(e.get("engineInfo") or e.get("clientVersion") or "") else "spark"
            for e in reversed(history)]


def test_a_small_append_commits_with_delta_rs_without_starting_spark(spark, lake, instance):
    first = drop(lake, "a.parquet", rows([1, 2, 3]), days_ago=3)
    settings = lake.config()
    assert run_pipeline(settings, instance=instance).total_files_processed == 1  # Spark creates the table
    b = drop(lake, "b c.parquet", rows([4, 5], nulls=True), days_ago=2)
    c = drop(lake, "c'd.parquet", rows([6, 7, 8, 9]).select(["small", "at", "id", "day", "flag", "score", "name"]),
             days_ago=1)
    summary = run_pipeline(settings, instance=instance)
    assert summary.success and summary.total_files_processed == 2 and summary.total_rows_loaded == 6
    assert not summary.spark_session_started  # the load, its commit and its checks: no JVM
    assert engines_of(settings) == ["spark", "delta-rs"]
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    rows_now = {r["file_path"]: r for r in tracker.read().to_pylist()}
    assert {p: (r["status"], r["row_count"]) for p, r in rows_now.items()} == {
        str(first): ("completed", 3), str(b): ("completed", 2), str(c): ("completed", 4)}
    seq = rows_now[str(b)]["batch_seq"]
    assert target_txn_version(settings.table_path("events"), "events") == seq
    commit = open_target(settings.table_path("events")).history(1)[0]
    meta = json.loads(commit["userMetadata"])
    assert (meta["batch_id"], meta["batch_seq"], meta["files"]) == (rows_now[str(b)]["batch_id"], seq, 2)
    # one data file per source file: the log alone says each file's rows
    logged = rows_per_source_file(settings.table_path("events"), "_source_file", "_batch_id")
    assert dict(zip(logged["file_path"].to_pylist(), logged["rows"].to_pylist(), strict=True)) == {
        str(first): 3, str(b): 2, str(c): 4}
    frame = spark.read.format("delta").load(settings.table_path("events"))
    assert frame.columns == ["id", "name", "score", "day", "at", "flag", "small", "_source_file", "_load_timestamp",
                             "_batch_id"]
    assert frame.count() == 9 and frame.where("_load_timestamp IS NULL OR _batch_id IS NULL").count() == 0
    assert sorted(r.id for r in frame.where(f"_batch_id = '{meta['batch_id']}'").collect()) == [4, 5, 6, 7, 8, 9]
    # Spark's data skipping on the engine's statistics finds exactly the rows a full scan finds
    for condition in ("id = 7", "id > 5", "at > timestamp'2024-05-01 12:00:05.123462'", "day = date'2024-01-05'",
                      "score < 0.75", "name = \"name 8's\"", "name IS NULL", "small >= 24"):
        skipped = sorted(r.id for r in frame.where(condition).collect())
        scanned = sorted(r.id for r in frame.collect() if _holds(r, condition))
        assert skipped == scanned, condition
    checks = instance.get_records_for_run(summary.tables["events"].run_ids[0]).records
    assert any(getattr(e.event_log_entry.dagster_event, "event_type_value", "") == "ASSET_CHECK_EVALUATION"
               for e in checks)


def test_the_engine_checkpoints_the_target_where_spark_would(spark, lake, instance):
    """Spark's appends checkpoint a table at every 10th version (``delta.checkpointInterval``'s default); the
    engine's commits do too, so opening the target never replays more than 9 JSON commits. The checkpoint
    carries the batches' txn: Spark, reading the table through it, skips a write of a batch already committed."""
    from pyspark.sql import functions as F

    settings = lake.config()
    path = settings.table_path("events")
    log = Path(path) / "_delta_log"
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    for n in range(11):  # version 0 by Spark (it creates the table), versions 1-10 by the engine
        drop(lake, f"{n:02d}.parquet", rows([n]), days_ago=1)
        summary = run_pipeline(settings, instance=instance)
        assert summary.success and summary.total_files_processed == 1, summary.to_json()
        assert sorted(p.name for p in log.glob("*.checkpoint.parquet")) == (
            ["00000000000000000010.checkpoint.parquet"] if n == 10 else [])
    assert json.loads((log / "_last_checkpoint").read_text())["version"] == 10
    last_seq = max(r["batch_seq"] for r in tracker.read().to_pylist())
    assert target_txn_version(path, "events") == last_seq  # delta-rs, reading checkpoint 10 alone
    # Spark's snapshot of version 10 comes from the checkpoint: the last batch's txn must be in it
    frame = spark.read.format("delta").load(path)
    assert sorted(r.id for r in frame.select("id").collect()) == list(range(11))
    (frame.limit(1).withColumn("id", F.lit(-1)).write.format("delta").mode("append")
     .option("txnAppId", app_id("events")).option("txnVersion", str(last_seq)).save(path))
    assert spark.read.format("delta").load(path).count() == 11  # skipped: the txn was already recorded
    drop(lake, "11.parquet", rows([11]), days_ago=1)
    assert run_pipeline(settings, instance=instance).total_files_processed == 1
    assert engines_of(settings) == ["spark"] + ["delta-rs"] * 11
    assert sorted(r.id for r in spark.read.format("delta").load(path).select("id").collect()) == list(range(12))


def test_a_checkpoint_is_written_at_every_tenth_version_of_a_table_without_the_property(tmp_path):
    """Without ``delta.checkpointInterval`` on the table: at 10, 20, 30, ... as Spark would (delta-rs's own hook
    adds 99); with the property set, never by this function (the hook follows the property: 9, 19, ...)."""
    from deltalake import DeltaTable, write_deltalake

    one = pa.table({"id": pa.array([1], pa.int64())})
    plain, configured = tmp_path / "plain", tmp_path / "configured"
    write_deltalake(plain, one)
    write_deltalake(configured, one, configuration={"delta.checkpointInterval": "10"})
    written = []
    for _ in range(110):
        write_deltalake(plain, one, mode="append")
        target = DeltaTable(plain)
        version = checkpoint_like_spark(target, target.metadata().configuration)
        if version is not None:
            written.append(version)
        if target.version() <= 20:
            write_deltalake(configured, one, mode="append")
            other = DeltaTable(configured)
            assert checkpoint_like_spark(other, other.metadata().configuration) is None

    def checkpoints(path: Path) -> list[int]:
        return sorted(int(p.name.split(".")[0]) for p in (path / "_delta_log").glob("*.checkpoint.parquet"))

    assert written == list(range(10, 111, 10))
    assert checkpoints(plain) == sorted([*written, 99])
    assert checkpoints(configured) == [9, 19]
    assert DeltaTable(plain).to_pyarrow_table().num_rows == 111


def _holds(row, condition: str) -> bool:
    """``condition`` evaluated in Python on a collected row (the scan side of the data-skipping comparison)."""
    return {
        "id = 7": row.id == 7, "id > 5": row.id > 5,
        "at > timestamp'2024-05-01 12:00:05.123462'":
            row.at is not None and row.at > datetime(2024, 5, 1, 12, 0, 5, 123462),
        "day = date'2024-01-05'": row.day == date(2024, 1, 5),
        "score < 0.75": row.score is not None and row.score < 0.75,
        "name = \"name 8's\"": row.name == "name 8's", "name IS NULL": row.name is None,
        "small >= 24": row.small is not None and row.small >= 24,
    }[condition]


def test_both_engines_load_the_same_files_into_the_same_table(spark, tmp_path, instance):
    """The same deliveries into two lakes: the engine's and Spark's tables, trackers and statistics agree."""
    both = lakes(tmp_path)
    steps = [
        [("01.parquet", rows([1, 2, 3]))],  # first load: Spark on both sides
        [("02.parquet", rows([4, 5, 6], nulls=True)), ("03.parquet", rows([7]).select(list(reversed(SCHEMA.names))))],
        [("04.parquet", rows([])), ("05.parquet", rows([8, 9]))],  # a parquet file with no rows
        [("06.parquet", rows([10]).append_column("extra", pa.array([1], pa.int64())))],  # a new column: fails
        [("07.parquet", rows([11]).cast(pa.schema([*SCHEMA][:6] + [pa.field("small", pa.int64())])))],  # retyped
        [("08.parquet", rows([12, 13], nulls=True))],
    ]
    tables, trackers = {}, {}
    for engine, lake in both.items():
        settings = configure(engine, lake)
        for n, step in enumerate(steps):
            for name, table in step:
                drop(lake, name, table, days_ago=10 - n)
            run_pipeline(settings, instance=instance, run_checks=True)
        tables[engine] = relative(table_of(spark, settings), lake.root)
        trackers[engine] = tracker_of(settings, lake.root)
    assert tables["delta-rs"] == tables["spark"]
    assert trackers["delta-rs"] == trackers["spark"]
    assert trackers["spark"]["landing/events/06.parquet"][0] == "failed"
    assert trackers["spark"]["landing/events/04.parquet"][:2] == ("completed", 0)
    small, plain = (configure(e, both[e]) for e in ("delta-rs", "spark"))
    assert engines_of(plain) == ["spark"] * len(engines_of(plain))
    # steps 2 and 3; step 6's batch also retries the files that failed in steps 4 and 5 (in Spark, which reports
    # them), and a file claimed before may have rows to replace, which only the Spark path does
    assert engines_of(small) == ["spark", "delta-rs", "delta-rs", "spark"]
    # the statistics the engine wrote for a source file equal what Spark wrote for the same file (where Spark's
    # data file holds that one file), but for a timestamp's maximum: Spark truncates it to milliseconds (and its
    # reader adds the millisecond back), the engine rounds it up, a bound for any reader
    mine = _stats_per_source(small, both["delta-rs"].root)
    spark_side = _stats_per_source(plain, both["spark"].root)
    assert set(mine) == {f"landing/events/0{n}.parquet" for n in (1, 2, 3, 5, 8)} <= set(spark_side)
    for source, stats in mine.items():
        theirs = spark_side[source]
        ours_max, their_max = stats.pop("max.at"), theirs.pop("max.at")
        assert stats == theirs, source
        assert (ours_max is None) == (their_max is None) and (
            ours_max is None or timedelta(0) <= ours_max - their_max < timedelta(milliseconds=1, microseconds=1))


def _stats_per_source(settings, root: Path) -> dict[str, dict]:
    """Per source file held alone in a data file: the statistics of its data columns, paths relative."""
    target = open_target(settings.table_path("events"))
    actions = pa.table(target.get_add_actions(flatten=True)).to_pylist()
    found = {}
    for action in actions:
        source = action.get("min._source_file")
        if source is None or source != action.get("max._source_file"):
            continue
        stats = {k: v for k, v in action.items() if k.split(".")[0] in ("min", "max", "null_count", "num_records")
                 and k.split(".")[-1] not in ("_load_timestamp", "_batch_id", "_source_file")}
        found[str(Path(source).relative_to(root))] = stats
    return found


def test_statistics_bound_every_value_and_leave_out_what_they_cannot_bound():
    table = pa.table({
        "i": pa.array([3, None, -2], pa.int64()), "f": pa.array([1.5, float("nan"), 0.0]),
        "s": pa.array(["b", "a", None]), "long": pa.array(["x" * 5000, "y", "z"]),
        "t": pa.array([datetime(2024, 1, 1, 0, 0, 0, 1500, tzinfo=UTC), None,
                       datetime(2024, 1, 1, 0, 0, 0, 999, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        "ntz": pa.array([datetime(2024, 1, 1), None, None], pa.timestamp("us")),
        "b": pa.array([True, False, None]), "nulls": pa.array([None, None, None], pa.string()),
        "st": pa.array([{"x": 1}, None, {"x": 2}]),
    })
    stats = json.loads(delta_stats(table, set(table.column_names) - {"b"}))
    assert stats["numRecords"] == 3
    assert stats["minValues"] == {"i": -2, "s": "a", "t": "2024-01-01T00:00:00.000Z"}
    # the timestamp maximum rounds up to Delta's milliseconds (1.5 ms -> 2 ms), so it still bounds the value
    assert stats["maxValues"] == {"i": 3, "s": "b", "t": "2024-01-01T00:00:00.002Z"}
    assert stats["nullCount"] == {"i": 1, "f": 0, "s": 1, "long": 0, "t": 1, "ntz": 2, "nulls": 3}
