"""Change data capture, case by case, each with the exact table expected (issue 12).

Late rows re-thread the history, deletes end versions and wait as tombstones when they come early, full extracts
delete the keys absent from them (per ``hard_deletes``), and scd1 keeps the latest row. Every case loads files
one batch at a time in a chosen order, then checks the table row by row, its invariants, and the table against
what its change record defines.
"""

import os
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loader_assets.api import run_pipeline
from loader_assets.checks import keyed_report
from loader_assets_tests.integration.test_small_keyed import engines

pytestmark = pytest.mark.spark

SCHEMA = pa.schema([("customer_id", pa.int64()), ("name", pa.string()), ("tier", pa.string()),
                    ("updated_at", pa.timestamp("us", tz="UTC")), ("op", pa.string())])
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def day(n):
    return EPOCH + timedelta(days=n)


def table(**overrides):
    spec = {"table_name": "customers", "source_path": "landing/customers", "file_format": "parquet",
            "loading_strategy": "scd2", "primary_keys": ["customer_id"], "tracking_columns": ["name"],
            "scd2_sequence_column": "updated_at", "delete_condition": "op = 'D'"}
    spec.update(overrides)
    return spec


class Feed:
    """Files of (customer_id, name, tier, day, op) dropped one by one, each loaded before the next."""

    def __init__(self, lake, spark, instance, **overrides):
        self.lake, self.spark, self.instance = lake, spark, instance
        self.settings = lake.config(tables=[table(**overrides)])
        self.count = 0

    def write(self, *rows, name):
        """Drop a file of (customer_id, name, tier, day, op) rows into the landing zone."""
        path = self.lake.landing / "customers" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [dict(zip(SCHEMA.names, (cid, nm, tier, day(d), op), strict=True)) for cid, nm, tier, d, op in rows]
        pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), path)
        moment = (datetime.now(UTC) - timedelta(days=2) + timedelta(minutes=self.count)).timestamp()
        os.utime(path, (moment, moment))

    def load(self, *rows, name=None):
        self.count += 1
        self.write(*rows, name=name or f"f{self.count:02d}.parquet")
        summary = run_pipeline(self.settings, instance=self.instance, run_checks=False)
        assert summary.total_files_failed == 0, summary.tables["customers"].failed_files
        violations, difference = keyed_report(self.spark, self.settings.tables[0], self.settings)
        assert difference.ok, difference
        assert violations is None or violations.ok, violations
        return summary

    def versions(self):
        frame = self.spark.read.format("delta").load(self.settings.table_path("customers"))
        deleted = ["is_deleted"] if "is_deleted" in frame.columns else []
        rows = frame.selectExpr("customer_id", "name", "tier", "dayofyear(effective_date) - 1",
                                "dayofyear(end_date) - 1", "is_current", *deleted).collect()
        return sorted((tuple(r) for r in rows), key=repr)

    def rows(self):
        frame = self.spark.read.format("delta").load(self.settings.table_path("customers"))
        return sorted(tuple(r) for r in frame.select("customer_id", "name", "tier").collect())


def v(cid, name, tier, start, end, *deleted):
    return (cid, name, tier, start, end, end is None, *deleted)


def test_a_late_row_inside_a_closed_version_splits_it(spark, lake, instance):
    feed = Feed(lake, spark, instance)
    feed.load((1, "A", "x", 1, "U"))
    feed.load((1, "A", "y", 3, "U"))  # repeats A: no version, but it is recorded
    feed.load((1, "B", "z", 2, "U"))  # late: B from 2 to 3, then A again from 3
    assert feed.versions() == sorted([v(1, "A", "x", 1, 2), v(1, "B", "z", 2, 3), v(1, "A", "y", 3, None)], key=repr)


def test_a_late_row_equal_to_its_covering_version_adds_nothing(spark, lake, instance):
    feed = Feed(lake, spark, instance)
    feed.load((1, "A", "x", 1, "U"))
    feed.load((1, "B", "x", 3, "U"))
    before = feed.versions()
    feed.load((1, "A", "other tier", 2, "U"))  # same tracked value as the version covering day 2
    assert feed.versions() == before == sorted([v(1, "A", "x", 1, 3), v(1, "B", "x", 3, None)], key=repr)


def test_a_late_row_before_the_first_version_becomes_the_first(spark, lake, instance):
    feed = Feed(lake, spark, instance)
    feed.load((1, "A", "x", 2, "U"))
    feed.load((1, "Z", "x", 1, "U"))
    assert feed.versions() == sorted([v(1, "Z", "x", 1, 2), v(1, "A", "x", 2, None)], key=repr)


def test_a_late_delete_ends_the_version_it_falls_in(spark, lake, instance):
    feed = Feed(lake, spark, instance)
    feed.load((1, "A", "x", 1, "U"), (2, "C", "x", 1, "U"))
    feed.load((1, "B", "x", 3, "U"))
    feed.load((1, "A", "x", 2, "D"), (2, "C", "x", 5, "D"))  # key 1 deleted on day 2 (late); key 2 on day 5
    assert feed.versions() == sorted([v(1, "A", "x", 1, 2), v(1, "B", "x", 3, None), v(2, "C", "x", 1, 5)],
                                     key=repr)


def test_a_delete_that_comes_before_its_rows_waits_as_a_tombstone(spark, lake, instance):
    feed = Feed(lake, spark, instance)
    feed.load((1, "A", "x", 4, "D"))  # nothing to delete yet
    assert not os.path.exists(feed.settings.table_path("customers")) or feed.versions() == []
    feed.load((1, "A", "x", 1, "U"), (1, "B", "x", 6, "U"))
    assert feed.versions() == sorted([v(1, "A", "x", 1, 4), v(1, "B", "x", 6, None)], key=repr)


def test_a_key_revives_after_a_delete_with_a_new_version(spark, lake, instance):
    feed = Feed(lake, spark, instance)
    feed.load((1, "A", "x", 1, "U"))
    feed.load((1, "A", "x", 2, "D"))
    assert feed.versions() == [v(1, "A", "x", 1, 2)]  # no current row for a deleted key
    feed.load((1, "A", "y", 3, "U"))  # the same tracked value as before the delete: still a new version
    assert feed.versions() == sorted([v(1, "A", "x", 1, 2), v(1, "A", "y", 3, None)], key=repr)


EXTRACTS = [  # whole source at days 1, 2 and 3: key 2 is absent on day 2
    [(1, "A", "x", 1, "U"), (2, "B", "x", 1, "U"), (3, "C", "x", 1, "U")],
    [(1, "A", "x", 2, "U"), (3, "C2", "x", 2, "U")],
    [(1, "A", "x", 3, "U"), (2, "B", "x", 3, "U"), (3, "C2", "x", 3, "U")],
]


@pytest.mark.parametrize(("mode", "expected"), [
    ("ignore", [v(1, "A", "x", 1, None), v(2, "B", "x", 1, None), v(3, "C", "x", 1, 2), v(3, "C2", "x", 2, None)]),
    ("invalidate", [v(1, "A", "x", 1, None), v(2, "B", "x", 1, 2), v(2, "B", "x", 3, None), v(3, "C", "x", 1, 2),
                    v(3, "C2", "x", 2, None)]),
    ("new_record", [v(1, "A", "x", 1, None, False), v(2, "B", "x", 1, 2, False), v(2, "B", "x", 2, 3, True),
                    v(2, "B", "x", 3, None, False), v(3, "C", "x", 1, 2, False), v(3, "C2", "x", 2, None, False)]),
])
def test_full_extracts_delete_absent_keys_per_hard_deletes(spark, lake, instance, mode, expected):
    feed = Feed(lake, spark, instance, extract_mode="full", hard_deletes=mode, delete_condition=None)
    for rows in [EXTRACTS[0], EXTRACTS[2], EXTRACTS[1]]:  # the day-2 extract arrives last
        feed.load(*rows)
    assert feed.versions() == sorted(expected, key=repr)


def test_scd1_keeps_the_latest_row_discards_stale_ones_and_deletes(spark, lake, instance):
    feed = Feed(lake, spark, instance, loading_strategy="scd1", tracking_columns=[])
    feed.load((1, "A", "x", 1, "U"), (2, "B", "x", 1, "U"), (3, "C", "x", 1, "U"))
    feed.load((1, "A2", "x", 3, "U"), (2, "B", "x", 2, "D"))
    assert feed.rows() == [(1, "A2", "x"), (3, "C", "x")]
    feed.load((1, "A-stale", "x", 2, "U"), (2, "B-stale", "x", 0, "U"))  # both older than what the keys have
    assert feed.rows() == [(1, "A2", "x"), (3, "C", "x")]
    feed.load((3, "C", "x", 4, "D"), (2, "B3", "y", 5, "U"))  # delete, and a key revived
    assert feed.rows() == [(1, "A2", "x"), (2, "B3", "y")]


def merges_of(settings):
    """The ``merge`` each commit of the table names in its userMetadata (None for appends), oldest first."""
    import json

    from deltalake import DeltaTable

    history = DeltaTable(settings.table_path("customers")).history()
    return [json.loads(c.get("userMetadata") or "{}").get("merge") for c in reversed(history)]


@pytest.mark.parametrize("strategy", ["scd2", "scd1"])
def test_the_in_order_merge_takes_a_new_column_and_leaves_repeated_rows_alone(spark, lake, instance, strategy):
    """A Spark batch with no late row takes the in-order MERGE, also when it adds a column (add_new_columns): an
    scd2 row repeating its key's tracked values with the new column NULL starts no version; a changed row or a
    new key carries the new column. A late row then takes the MERGE of the difference, adding another column
    (both MERGEs once failed on a new column: Delta does not resolve `t.<new column>` in UPDATE SET)."""
    spec = {"loading_strategy": strategy, "schema_evolution": "add_new_columns",
            **({"tracking_columns": []} if strategy == "scd1" else {})}
    feed = Feed(lake, spark, instance, **spec)
    feed.settings = lake.config(tables=[table(**spec)], small_batch_max_bytes=0)  # every batch on Spark
    feed.load((1, "A", "x", 1, "U"), (2, "B", "x", 1, "U"))

    def load_wider(name, column, rows):
        path = lake.landing / "customers" / name
        pq.write_table(pa.Table.from_pylist(
            [dict(zip([*SCHEMA.names, column], (cid, nm, tier, day(d), "U", extra), strict=True))
             for cid, nm, tier, d, extra in rows], schema=pa.schema([*SCHEMA, (column, pa.string())])), path)
        moment = (datetime.now(UTC) - timedelta(days=1) + timedelta(minutes=len(merges_of(feed.settings)))
                  ).timestamp()
        os.utime(path, (moment, moment))
        summary = run_pipeline(feed.settings, instance=instance, run_checks=False)
        assert summary.total_files_failed == 0, summary.tables["customers"].failed_files
        violations, difference = keyed_report(spark, feed.settings.tables[0], feed.settings)
        assert difference.ok and (violations is None or violations.ok), (violations, difference)

    load_wider("f02.parquet", "email", [(1, "A2", "x", 3, "a@x"), (2, "B", "x", 3, None), (3, "C", "y", 3, "c@x")])
    frame = spark.read.format("delta").load(feed.settings.table_path("customers"))
    batches = {r[0]: r[1] for r in frame.groupBy("_batch_id").count().collect()}
    if strategy == "scd2":
        rows = frame.selectExpr("customer_id", "name", "email", "dayofyear(effective_date) - 1",
                                "dayofyear(end_date) - 1", "is_current").collect()
        assert sorted(tuple(r) for r in rows) == [
            (1, "A", None, 1, 3, False), (1, "A2", "a@x", 3, None, True), (2, "B", None, 1, None, True),
            (3, "C", "c@x", 3, None, True)]
        assert sorted(batches.values()) == [2, 2]  # the closed version keeps its batch; key 2 got no version
    else:
        rows = frame.select("customer_id", "name", "email").collect()
        assert sorted(tuple(r) for r in rows) == [(1, "A2", "a@x"), (2, "B", None), (3, "C", "c@x")]
        # key 2's row is the batch's too: its newer row has another updated_at and _source_file
        assert sorted(batches.values()) == [3]
    assert merges_of(feed.settings) == [None, "in_order"]
    # late (older than key 1's newest change), with another new column: the MERGE of the difference
    load_wider("f03.parquet", "phone", [(1, "A1", "x", 2, "555"), (2, "B2", "x", 4, "777")])
    assert merges_of(feed.settings) == [None, "in_order", "diff"]
    frame = spark.read.format("delta").load(feed.settings.table_path("customers"))
    if strategy == "scd2":
        rows = frame.selectExpr("customer_id", "name", "email", "phone", "dayofyear(effective_date) - 1",
                                "dayofyear(end_date) - 1").collect()
        assert sorted((tuple(r) for r in rows), key=repr) == sorted([
            (1, "A", None, None, 1, 2), (1, "A1", None, "555", 2, 3), (1, "A2", "a@x", None, 3, None),
            (2, "B", None, None, 1, 4), (2, "B2", None, "777", 4, None), (3, "C", "c@x", None, 3, None)], key=repr)
    else:  # key 1's row at day 3 is newer than the stale day-2 row
        rows = frame.select("customer_id", "name", "email", "phone").collect()
        assert sorted(tuple(r) for r in rows) == [(1, "A2", "a@x", None), (2, "B2", None, "777"),
                                                  (3, "C", "c@x", None)]


NULL_VALUES = pa.schema([("customer_id", pa.int64()), ("name", pa.null()), ("tier", pa.null()),
                         ("updated_at", pa.timestamp("us", tz="UTC")), ("op", pa.string())])


def drop_deletes(lake, name, rows, minutes):
    """A delete file as pyarrow (and pandas) write one whose value columns hold only NULLs: those columns get
    Arrow's null type, which Spark reads as int."""
    path = lake.landing / "customers" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"customer_id": cid, "name": None, "tier": None, "updated_at": day(d),
                                          "op": "D"} for cid, d in rows], schema=NULL_VALUES), path)
    moment = (datetime.now(UTC) - timedelta(days=2) + timedelta(minutes=minutes)).timestamp()
    os.utime(path, (moment, moment))


@pytest.mark.parametrize("engine", ["delta-rs", "spark"])
def test_a_delete_file_whose_value_columns_are_all_null_loads(spark, lake, instance, engine):
    """The all-NULL columns fit the table's types (they failed the file as `name (string -> int)` before), on
    both engines, and the deletes apply; the table keeps its types."""
    feed = Feed(lake, spark, instance)
    if engine == "spark":
        feed.settings = lake.config(tables=[table()], small_batch_max_bytes=0)
    feed.load((1, "A", "x", 1, "U"), (2, "C", "x", 1, "U"))
    drop_deletes(lake, "f02-deletes.parquet", [(1, 3)], minutes=5)
    summary = run_pipeline(feed.settings, instance=instance)
    assert summary.success and summary.total_files_failed == 0, summary.tables["customers"].failed_files
    assert engines(feed.settings.table_path("customers"))[-1] == engine  # the delete batch's commit
    violations, difference = keyed_report(spark, feed.settings.tables[0], feed.settings)
    assert difference.ok and violations.ok, (violations, difference)
    assert feed.versions() == sorted([v(1, "A", "x", 1, 3), v(2, "C", "x", 1, None)], key=repr)
    types = dict(spark.read.format("delta").load(feed.settings.table_path("customers")).dtypes)
    assert (types["name"], types["tier"]) == ("string", "string")


def test_a_new_table_takes_a_column_type_from_the_first_file_that_has_one(spark, lake, instance):
    """The first batch of a new table: its first file (a delete, all-NULL value columns) does not set the
    columns' types; the next file of the batch does, and both files load."""
    settings = lake.config(tables=[table()])
    drop_deletes(lake, "f01-deletes.parquet", [(1, 3)], minutes=0)
    feed = Feed(lake, spark, instance)
    feed.settings = settings
    feed.count = 1
    feed.write((1, "A", "x", 1, "U"), (2, "C", "x", 1, "U"), name="f02.parquet")
    summary = run_pipeline(settings, instance=instance)
    assert summary.success and summary.total_files_processed == 2, summary.tables["customers"].failed_files
    assert feed.versions() == sorted([v(1, "A", "x", 1, 3), v(2, "C", "x", 1, None)], key=repr)
    types = dict(spark.read.format("delta").load(settings.table_path("customers")).dtypes)
    assert (types["name"], types["tier"]) == ("string", "string")


def drop_json(lake, name, records, minutes):
    import json

    path = lake.landing / "customers" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    moment = (datetime.now(UTC) - timedelta(days=2) + timedelta(minutes=minutes)).timestamp()
    os.utime(path, (moment, moment))


def at(d):
    return day(d).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("first_batch", ["file by file", "one batch"])
@pytest.mark.parametrize("strategy", ["scd2", "scd1"])
def test_json_deletes_may_leave_out_the_value_fields(spark, lake, instance, strategy, first_batch):
    """JSON delete records that carry only the key, the sequence and the op load under `schema_evolution: fail`
    (they failed as `missing columns ['name', 'tier']`, or for scd2 `missing configured columns ['name']`): a
    field no record has is NULL, as in a record that lacks it. In one first batch, the delete file comes first
    and the new table takes its columns from both files."""
    spec = table(file_format="json", **({"loading_strategy": "scd1", "tracking_columns": []}
                                       if strategy == "scd1" else {}))
    settings = lake.config(tables=[spec])
    upserts = [{"customer_id": 1, "name": "A", "tier": "x", "updated_at": at(1), "op": "U"},
               {"customer_id": 2, "name": "C", "tier": "x", "updated_at": at(1), "op": "U"}]
    deletes = [{"customer_id": 1, "updated_at": at(2), "op": "D"}]
    if first_batch == "one batch":
        drop_json(lake, "f01-deletes.json", deletes, minutes=0)
        drop_json(lake, "f02.json", upserts, minutes=1)
        summaries = [run_pipeline(settings, instance=instance)]
    else:
        drop_json(lake, "f01.json", upserts, minutes=0)
        summaries = [run_pipeline(settings, instance=instance)]
        drop_json(lake, "f02-deletes.json", deletes, minutes=1)
        summaries.append(run_pipeline(settings, instance=instance))
    for summary in summaries:
        assert summary.success, summary.tables["customers"].failed_files
    frame = spark.read.format("delta").load(settings.table_path("customers"))
    if strategy == "scd2":
        rows = frame.selectExpr("customer_id", "name", "tier", "substr(effective_date, 1, 10)",
                                "substr(end_date, 1, 10)", "is_current").collect()
        assert sorted(tuple(r) for r in rows) == [(1, "A", "x", "2025-01-02", "2025-01-03", False),
                                                  (2, "C", "x", "2025-01-02", None, True)]
    else:
        assert sorted(tuple(r) for r in frame.select("customer_id", "name", "tier").collect()) == [(2, "C", "x")]
    assert dict(frame.dtypes)["name"] == "string"


def test_a_json_file_without_a_key_field_or_with_a_renamed_field_still_fails(spark, lake, instance):
    """What stays a difference for JSON: a key (every row needs one) and a field the table does not have."""
    settings = lake.config(tables=[table(file_format="json")])
    drop_json(lake, "f01.json", [{"customer_id": 1, "name": "A", "tier": "x", "updated_at": at(1), "op": "U"}], 0)
    run_pipeline(settings, instance=instance)
    drop_json(lake, "f02-nokey.json", [{"name": "B", "tier": "x", "updated_at": at(2), "op": "U"}], 1)
    drop_json(lake, "f03-renamed.json",
              [{"customer_id": 1, "full_name": "B", "tier": "x", "updated_at": at(2), "op": "U"}], 2)
    failed = run_pipeline(settings, instance=instance).tables["customers"].failed_files
    errors = {os.path.basename(path): error for path, error in failed.items()}
    assert errors["f02-nokey.json"] == "missing configured columns ['customer_id']"
    assert "new columns ['full_name']" in errors["f03-renamed.json"], errors
