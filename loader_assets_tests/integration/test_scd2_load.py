"""SCD2 as a sequence of loads (dlt's style), each followed by the exact expected table and the invariants."""

import os
import shutil
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from loader_assets.api import run_pipeline
from loader_assets.changes import ChangeRecord, changes_location
from loader_assets.checks import compare_record_with_tracker, keyed_report
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.scd2 import same_rows, scd2_violations
from loader_assets.target import target_txn_version
from loader_assets.writers.keyed import TXN_APP_ID_CONF, TXN_VERSION_CONF, delta_txn

pytestmark = pytest.mark.spark

SCHEMA = pa.schema([("customer_id", pa.int64()), ("name", pa.string()), ("email", pa.string()),
                    ("tier", pa.string()), ("updated_at", pa.timestamp("us", tz="UTC"))])


def t(day, hour=0):
    return datetime(2025, 1, day, hour, tzinfo=UTC)


def stamp(value):
    return value.strftime("%Y-%m-%dT%H:%M") if value else None


def customers_table(**overrides):
    table = {"table_name": "customers", "source_path": "landing/customers", "file_format": "parquet",
             "loading_strategy": "scd2", "primary_keys": ["customer_id"], "tracking_columns": ["name", "email"],
             "scd2_sequence_column": "updated_at"}
    table.update(overrides)
    return table


def drop(lake, name, rows, days_ago=1.0):
    """rows: (id, name, email, tier, updated_at)."""
    path = lake.landing / "customers" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(
        [dict(zip(SCHEMA.names, r, strict=True)) for r in rows], schema=SCHEMA), path)
    moment = datetime.now(UTC).timestamp() - days_ago * 86400
    os.utime(path, (moment, moment))
    return path


def table_state(spark, settings):
    frame = spark.read.format("delta").load(settings.table_path("customers"))
    rows = frame.select(
        "customer_id", "name", "email", "tier",
        F.date_format("effective_date", "yyyy-MM-dd'T'HH:mm").alias("start"),
        F.date_format("end_date", "yyyy-MM-dd'T'HH:mm").alias("end"), "is_current",
    ).collect()
    return ordered(tuple(r) for r in rows)


def ordered(rows):
    return sorted(rows, key=lambda r: tuple("" if v is None else str(v) for v in r))


def version(cid, name, email, tier, start, end):
    return (cid, name, email, tier, stamp(start), stamp(end), end is None)


def load_and_check(spark, settings, instance):
    summary = run_pipeline(settings, instance=instance)
    violations, difference = keyed_report(spark, settings.tables[0], settings)
    assert violations.ok, violations
    assert difference.ok, difference
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("customers")
    record = ChangeRecord(changes_location(settings.target_root, "customers"), settings.table_path("customers"),
                          "customers")
    consistency = compare_record_with_tracker(spark, tracker, record)
    assert consistency.consistent, consistency
    return summary


def tracker_rows(settings):
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("customers")
    return {os.path.basename(r["file_path"]): r for r in tracker.read().to_pylist()}


@pytest.mark.parametrize("engine", ["spark", "delta-rs"])
def test_scd2_history_over_a_sequence_of_loads(spark, lake, instance, engine):
    """Every batch after the first goes to the small-batch engine (delta-rs, ``small_keyed.py``) or, with it off,
    to Spark: the same tables either way."""
    settings = lake.config(tables=[customers_table()], small_batch_max_bytes=(32 << 20) if engine == "delta-rs" else 0)
    # load 1: initial
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1)), (2, "bob", "b@x", "free", t(1)),
                              (3, "cy", "c@x", "free", t(1))], days_ago=10)
    load_and_check(spark, settings, instance)
    expected = [version(1, "ann", "a@x", "gold", t(1), None), version(2, "bob", "b@x", "free", t(1), None),
                version(3, "cy", "c@x", "free", t(1), None)]
    assert table_state(spark, settings) == ordered(expected)

    # load 2: one tracking column changes
    drop(lake, "02.parquet", [(1, "anne", "a@x", "gold", t(2))], days_ago=9)
    load_and_check(spark, settings, instance)
    expected[0] = version(1, "ann", "a@x", "gold", t(1), t(2))
    expected.append(version(1, "anne", "a@x", "gold", t(2), None))
    assert table_state(spark, settings) == ordered(expected)

    # load 3: only a non-tracking column changes -> no new version; the change row is recorded (row count 1),
    # and the batch's commit on the table is empty (it carries the batch's txn and changes no row)
    drop(lake, "03.parquet", [(2, "bob", "b@x", "platinum", t(3))], days_ago=8)
    files_before_load_3 = DeltaTable(settings.table_path("customers")).get_add_actions().num_rows
    load_and_check(spark, settings, instance)
    assert table_state(spark, settings) == ordered(expected)
    assert tracker_rows(settings)["03.parquet"]["status"] == "completed"
    assert tracker_rows(settings)["03.parquet"]["row_count"] == 1
    last = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('customers')}`").first()
    if engine == "spark":
        assert last["operation"] == "MERGE" and {last["operationMetrics"][m] for m in (
            "numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted")} == {"0"}
    else:  # the engine's empty commit: no file added or removed
        assert last["operation"] == "WRITE" and "delta-rs" in last["engineInfo"]
        assert DeltaTable(settings.table_path("customers")).get_add_actions().num_rows == files_before_load_3
    assert target_txn_version(settings.table_path("customers"), "customers") == 3

    # load 4: new keys; and a key changing twice in one file; and across two files of one batch
    drop(lake, "04a.parquet", [(4, "dee", "d@x", "free", t(4)), (3, "cy", "c2@x", "free", t(5)),
                               (3, "cy", "c3@x", "free", t(6)), (3, "cy", "c3@x", "free", t(6))], days_ago=7)
    drop(lake, "04b.parquet", [(2, "rob", "b@x", "free", t(6))], days_ago=6.5)
    drop(lake, "04c.parquet", [(2, "bobby", "b@x", "free", t(7))], days_ago=6.4)
    summary = load_and_check(spark, settings, instance)
    assert summary.total_files_processed == 3 and len(summary.tables["customers"].run_ids) == 1
    expected[2] = version(3, "cy", "c@x", "free", t(1), t(5))
    expected[1] = version(2, "bob", "b@x", "free", t(1), t(6))
    expected += [version(4, "dee", "d@x", "free", t(4), None), version(3, "cy", "c2@x", "free", t(5), t(6)),
                 version(3, "cy", "c3@x", "free", t(6), None), version(2, "rob", "b@x", "free", t(6), t(7)),
                 version(2, "bobby", "b@x", "free", t(7), None)]
    assert table_state(spark, settings) == ordered(expected)

    # load 5: a key changes back to an earlier value; null transitions of a tracking column
    drop(lake, "05.parquet", [(1, "ann", "a@x", "gold", t(8)), (4, "dee", None, "free", t(8)),
                              (4, "dee", "d2@x", "free", t(9))], days_ago=5)
    load_and_check(spark, settings, instance)
    expected[3] = version(1, "anne", "a@x", "gold", t(2), t(8))
    expected[4] = version(4, "dee", "d@x", "free", t(4), t(8))
    expected += [version(1, "ann", "a@x", "gold", t(8), None), version(4, "dee", None, "free", t(8), t(9)),
                 version(4, "dee", "d2@x", "free", t(9), None)]
    assert table_state(spark, settings) == ordered(expected)

    # load 6: rerun with nothing new; then the same content under a new name -> no new version
    assert load_and_check(spark, settings, instance).total_files_processed == 0
    shutil.copy(lake.landing / "customers" / "02.parquet", lake.landing / "customers" / "02-again.parquet")
    shutil.copy(lake.landing / "customers" / "05.parquet", lake.landing / "customers" / "05-again.parquet")
    summary = load_and_check(spark, settings, instance)
    assert summary.total_files_processed == 2 and summary.total_files_failed == 0
    assert table_state(spark, settings) == ordered(expected)
    assert tracker_rows(settings)["05-again.parquet"]["row_count"] == 0


def test_scd2_bad_files_fail_alone_naming_file_and_key(spark, lake, instance):
    settings = lake.config(tables=[customers_table(late_arriving="refuse")])  # late rows fail, naming them
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(5)), (2, "bob", "b@x", "free", t(5))], days_ago=10)
    load_and_check(spark, settings, instance)
    before = table_state(spark, settings)

    drop(lake, "late.parquet", [(1, "old ann", "a@x", "gold", t(2))], days_ago=5)
    drop(lake, "ambiguous.parquet", [(7, "x", "x@x", "free", t(6)), (7, "y", "x@x", "free", t(6))], days_ago=5)
    drop(lake, "nullkey.parquet", [(None, "nobody", "n@x", "free", t(6))], days_ago=5)
    drop(lake, "clash.parquet", [(2, "robert", "b@x", "free", t(5))], days_ago=5)
    no_email = lake.landing / "customers" / "noemail.parquet"
    pq.write_table(pa.table({"customer_id": [8], "name": ["z"], "updated_at": pa.array([t(6)], SCHEMA[4].type)}),
                   no_email)
    drop(lake, "good.parquet", [(3, "cy", "c@x", "free", t(6))], days_ago=4)
    summary = load_and_check(spark, settings, instance)
    errors = {os.path.basename(k): v for k, v in summary.tables["customers"].failed_files.items()}
    assert set(errors) == {"late.parquet", "ambiguous.parquet", "nullkey.parquet", "clash.parquet", "noemail.parquet"}
    assert errors["late.parquet"].startswith("late-arriving change: 1 rows are older than their key's newest applied")
    assert '{"customer_id":1} at 2025-01-02' in errors["late.parquet"]
    assert "same sequence value but a different op or different values" in errors["ambiguous.parquet"]
    assert '{"customer_id":7}' in errors["ambiguous.parquet"]
    assert errors["nullkey.parquet"] == "1 rows with a null primary key (customer_id)"
    assert "same key and sequence value as a change already applied" in errors["clash.parquet"]
    assert errors["noemail.parquet"] == "missing configured columns ['email']"
    assert table_state(spark, settings) == ordered(before + [version(3, "cy", "c@x", "free", t(6), None)])
    rows = tracker_rows(settings)
    assert rows["late.parquet"]["status"] == "failed" and rows["good.parquet"]["status"] == "completed"


def test_scd2_without_sequence_column_uses_file_modification_time(spark, lake, instance):
    settings = lake.config(tables=[customers_table(scd2_sequence_column=None)])
    first = drop(lake, "a.parquet", [(1, "ann", "a@x", "gold", t(1))], days_ago=3)
    second = drop(lake, "b.parquet", [(1, "anne", "a@x", "gold", t(1))], days_ago=2)
    load_and_check(spark, settings, instance)
    m1 = datetime.fromtimestamp(first.stat().st_mtime, UTC)
    m2 = datetime.fromtimestamp(second.stat().st_mtime, UTC)
    assert table_state(spark, settings) == ordered([version(1, "ann", "a@x", "gold", m1, m2),
                                                    version(1, "anne", "a@x", "gold", m2, None)])


def test_merge_txn_confs_skip_a_replayed_batch_and_are_cleared(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.range(3).write.format("delta").save(path)
    from delta.tables import DeltaTable

    def merge_once(size=5):
        source = spark.range(size).withColumnRenamed("id", "k")
        (DeltaTable.forPath(spark, path).alias("t").merge(source.alias("s"), "t.id = s.k")
         .whenNotMatchedInsert(values={"id": "s.k"}).execute())

    with delta_txn(spark, "loader_assets/t", 7, '{"batch_id": "b7"}'):
        merge_once()
    assert target_txn_version(path, "t") == 7 and spark.read.format("delta").load(path).count() == 5
    assert spark.conf.get(TXN_APP_ID_CONF, None) is None and spark.conf.get(TXN_VERSION_CONF, None) is None
    spark.range(5, 6).write.format("delta").mode("append").save(path)  # not skipped: the confs are gone
    assert spark.read.format("delta").load(path).count() == 6
    versions_before = DeltaTable.forPath(spark, path).history().count()
    with delta_txn(spark, "loader_assets/t", 7, '{"batch_id": "b7-replay"}'):
        merge_once(size=10)  # a replayed MERGE of txn 7: Delta must skip it
    assert spark.read.format("delta").load(path).count() == 6
    with delta_txn(spark, "loader_assets/t", 8, '{"batch_id": "b8"}'):
        merge_once(size=10)  # the next batch applies
    assert spark.read.format("delta").load(path).count() == 10 and target_txn_version(path, "t") == 8
    assert DeltaTable.forPath(spark, path).history().count() == versions_before + 1


def test_invariant_check_detects_two_currents_flag_mismatch_and_gaps(spark, lake):
    settings = lake.config(tables=[customers_table()])
    rows = [  # key 1: two current rows; key 2: a gap (end t2, next starts t3); key 3: flag true with an end
        (1, t(1), None, True), (1, t(2), None, True),
        (2, t(1), t(2), False), (2, t(3), None, True),
        (3, t(1), t(2), True),
        (4, t(1), t(2), False), (4, t(2), None, True),  # a correct key
    ]
    spark.createDataFrame(rows, "customer_id long, effective_date timestamp, end_date timestamp, is_current boolean") \
        .write.format("delta").save(settings.table_path("customers"))
    violations = scd2_violations(spark, settings.table_path("customers"), settings.tables[0])
    assert not violations.ok
    assert violations.keys_without_one_current == 1  # key 1 has two current rows
    assert violations.flag_end_disagreements == 1  # key 3
    assert violations.interval_breaks == 3  # key 1 overlap, key 2 gap, key 3 ends without being superseded
    assert violations.samples["keys_without_one_current"] == ['{"customer_id":1}']


def test_same_rows_vouches_only_for_the_same_multiset(spark):
    base = [(1, "a", t(1)), (2, "b", t(1)), (3, None, t(2))]
    schema = "k long, v string, s timestamp"
    frame = spark.createDataFrame(base, schema)
    columns = ["k", "v", "s"]
    assert same_rows(frame, spark.createDataFrame(list(reversed(base)), schema), columns)  # order is no matter
    assert not same_rows(frame, spark.createDataFrame([*base[:2], (3, "c", t(2))], schema), columns)  # a value
    assert not same_rows(frame, spark.createDataFrame([*base[:2], (3, "", t(2))], schema), columns)  # NULL vs ''
    assert not same_rows(frame, spark.createDataFrame([*base, base[0]], schema), columns)  # a duplicate row
    assert not same_rows(frame, spark.createDataFrame(base[:2], schema), columns)  # a missing row
    swapped = [(1, "b", t(1)), (2, "a", t(1)), base[2]]  # the same values under other keys
    assert not same_rows(frame, spark.createDataFrame(swapped, schema), columns)
    assert same_rows(frame, spark.createDataFrame(swapped, schema), ["s"])  # only the columns named count
    # a value moved into a neighbouring NULL: Spark's xxhash64 skips NULLs, so these rows would hash alike
    shifted = spark.createDataFrame([(1, None, "x")], "k long, a string, b string")
    assert not same_rows(shifted, spark.createDataFrame([(1, "x", None)], "k long, a string, b string"),
                         ["k", "a", "b"])
    nested = "k long, s struct<a: string, b: string>, l array<string>"
    one = spark.createDataFrame([(1, (None, "x"), [None, "y"])], nested)
    assert same_rows(one, spark.createDataFrame([(1, (None, "x"), [None, "y"])], nested), ["k", "s", "l"])
    assert not same_rows(one, spark.createDataFrame([(1, ("x", None), [None, "y"])], nested), ["k", "s"])
    assert not same_rows(one, spark.createDataFrame([(1, (None, "x"), ["y", None])], nested), ["k", "l"])
    maps = spark.createDataFrame([(1, {"x": 1})], "k long, m map<string, int>")
    assert not same_rows(maps, maps, ["k", "m"])  # Spark cannot hash a map: the caller compares row by row


@pytest.mark.parametrize("strategy", ["scd2", "scd1"])
def test_the_history_check_finds_versions_written_by_hand(spark, lake, instance, strategy):
    """A table that equals its change record is vouched for by hash sums; a value changed, a row deleted or a
    row duplicated by hand is found row by row, with the key."""
    extra = {} if strategy == "scd2" else {"tracking_columns": []}
    settings = lake.config(tables=[customers_table(loading_strategy=strategy, **extra)])
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1)), (2, "bob", "b@x", "free", t(1)),
                              (3, "cy", None, "gold", t(1))], days_ago=3)
    drop(lake, "02.parquet", [(1, "anne", "a@x", "gold", t(2))], days_ago=2)
    run_pipeline(settings, instance=instance)
    violations, difference = keyed_report(spark, settings.tables[0], settings)
    assert difference.ok and difference.compared == "by hash sums", difference
    assert (violations is None) == (strategy == "scd1") and (violations is None or violations.ok), violations
    path = settings.table_path("customers")

    def found_row_by_row_then_repaired(change: str, repair: str, key: int) -> None:
        spark.sql(f"UPDATE delta.`{path}` SET {change} WHERE customer_id = {key}")
        _, difference = keyed_report(spark, settings.tables[0], settings)
        assert (difference.missing, difference.unexpected, difference.compared) == (1, 1, "row by row"), difference
        assert difference.samples["missing"][0].startswith(f'{{"customer_id":{key}}}')
        spark.sql(f"UPDATE delta.`{path}` SET {repair} WHERE customer_id = {key}")
        assert keyed_report(spark, settings.tables[0], settings)[1].compared == "by hash sums"

    found_row_by_row_then_repaired("tier = 'platinum'", "tier = 'free'", 2)
    # key 3 has no email: its tier moved into the email column is a different row, though Spark's xxhash64 of
    # the two rows is the same (it skips NULLs); the check's hash inputs mark each NULL in its place
    found_row_by_row_then_repaired("email = tier, tier = NULL", "tier = email, email = NULL", 3)
    spark.sql(f"DELETE FROM delta.`{path}` WHERE customer_id = 2")
    _, difference = keyed_report(spark, settings.tables[0], settings)
    assert (difference.missing, difference.unexpected) == (1, 0), difference
    assert difference.samples["missing"][0].startswith('{"customer_id":2}')
    extra = spark.read.format("delta").load(path).where("customer_id = 1").limit(1)
    extra.write.format("delta").mode("append").save(path)  # a version (or row) of key 1 twice
    violations, difference = keyed_report(spark, settings.tables[0], settings)
    assert (difference.missing, difference.unexpected) == (1, 1), difference
    if strategy == "scd2":  # the sums differ, so the invariants are the table's own: key 1's versions overlap
        assert violations.interval_breaks >= 1 and '{"customer_id":1}' in violations.samples["interval_breaks"]
    assert difference.samples["unexpected"][0].startswith('{"customer_id":1}')
    assert difference.samples["unexpected"][0].endswith("(in the table more than once)")
