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
