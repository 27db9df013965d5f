"""The small-batch engine for keyed tables (small_keyed.py) and the history checks of a run's keys without Spark
(scoped_history.py).

The engine's tables are held to the same exact tables as Spark's in test_scd2_load.py (both engines), test_cdc.py
(the engine, after each table's first batch) and test_cdc_orders.py (the model, with and without the engine);
its crash windows are in fault_injection/test_crash_windows.py. Here: a batch and its checks without a JVM, the
scoped checks finding what the Spark checks find, and the delete conditions the engine evaluates itself.
"""

from __future__ import annotations

import dagster as dg
import pytest
from pyspark.sql import functions as F

from loader_assets.api import run_pipeline
from loader_assets.changes import changes_location
from loader_assets.checks import keyed_report
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.scd2 import SCOPED_CHECK_MAX_KEYS
from loader_assets.scoped_history import scoped_report, touched_keys
from loader_assets.small_keyed import DeleteTest
from loader_assets.target import open_target
from loader_assets_tests.integration.test_scd2_load import customers_table, drop, ordered, t, table_state, version

pytestmark = pytest.mark.spark


def engines(path) -> list[str]:
    """The engine of each commit of a Delta table, oldest first (delta-rs writes engineInfo, Spark does not)."""
    return ["delta-rs" if "delta-rs" in str(e.get("engineInfo") or "") else "spark"
            for e in reversed(open_target(path).history())]


def latest_check(instance, check_name):
    (record,) = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("customers"), check_name), limit=1)
    evaluation = record.event.dagster_event.event_specific_data
    return evaluation.passed, {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def test_a_small_keyed_batch_and_its_checks_run_without_spark(spark, lake, instance):
    settings = lake.config(tables=[customers_table()])
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1)), (2, "bob", "b@x", "free", t(1)),
                              (2, "rob", "b@x", "free", t(5)), (3, "cy", "c@x", "free", t(1))], days_ago=3)
    assert run_pipeline(settings, instance=instance).total_files_processed == 1  # Spark creates both tables
    drop(lake, "02.parquet", [
        (1, "anne", "a@x", "gold", t(2)),  # a new version
        (2, "bobby", "b@x", "free", t(3)),  # late: splits bob [1, 5) into bob [1, 3) and bobby [3, 5)
        (3, "cy", "c@x", "platinum", t(2)),  # repeats the tracked values: recorded, no new version
        (4, "dee", "d@x", "free", t(2)),  # a new key
    ], days_ago=2)
    summary = run_pipeline(settings, instance=instance)
    assert summary.success and summary.total_files_processed == 1
    assert not summary.spark_session_started  # the load, both commits and every check: no JVM
    materialization = instance.get_latest_materialization_event(dg.AssetKey("customers")).asset_materialization
    assert materialization.metadata["run_rows_rethreaded"].value == 1
    assert materialization.metadata["run_batches_without_spark"].value == 1
    assert table_state(spark, settings) == ordered([
        version(1, "ann", "a@x", "gold", t(1), t(2)), version(1, "anne", "a@x", "gold", t(2), None),
        version(2, "bob", "b@x", "free", t(1), t(3)), version(2, "bobby", "b@x", "free", t(3), t(5)),
        version(2, "rob", "b@x", "free", t(5), None), version(3, "cy", "c@x", "free", t(1), None),
        version(4, "dee", "d@x", "free", t(2), None)])
    assert engines(settings.table_path("customers"))[-1] == "delta-rs"
    assert engines(changes_location(settings.target_root, "customers"))[-1] == "delta-rs"
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("customers")
    assert {r["file_path"].rsplit("/", 1)[-1]: (r["status"], r["row_count"]) for r in tracker.read().to_pylist()} \
        == {"01.parquet": ("completed", 4), "02.parquet": ("completed", 4)}
    for check in ("scd2_invariants", "history_matches_changes", "target_matches_tracker"):
        passed, metadata = latest_check(instance, check)
        assert passed, (check, metadata)
    assert latest_check(instance, "target_matches_tracker")[1]["counted_by"].startswith("delta-rs")
    violations, difference = keyed_report(spark, settings.tables[0], settings)  # and Spark agrees
    assert violations.ok and difference.ok, (violations, difference)


def _corrupt_and_compare(spark, settings, batch_ids, statement):
    spark.sql(statement)
    scoped = scoped_report(settings.tables[0], settings, batch_ids)
    assert scoped is not None
    violations, difference = keyed_report(spark, settings.tables[0], settings, batch_ids)
    return ((scoped[0].keys_without_one_current, scoped[0].flag_end_disagreements, scoped[0].interval_breaks,
             scoped[1].missing, scoped[1].unexpected),
            (violations.keys_without_one_current, violations.flag_end_disagreements, violations.interval_breaks,
             difference.missing, difference.unexpected), scoped)


@pytest.mark.parametrize(("statement", "expected"), [
    ("UPDATE {t} SET tier = 'platinum' WHERE customer_id = 2", (0, 0, 0, 1, 1)),  # a value changed by hand
    ("DELETE FROM {t} WHERE customer_id = 2", (0, 0, 0, 1, 0)),  # a key's only version gone
    ("INSERT INTO {t} SELECT * FROM {t} WHERE customer_id = 1 AND is_current", (1, 0, 1, 0, 1)),  # a copy
    ("UPDATE {t} SET is_current = true WHERE customer_id = 1 AND NOT is_current", (1, 1, 0, 1, 1)),  # two currents
    ("UPDATE {t} SET end_date = effective_date WHERE customer_id = 1 AND NOT is_current", (0, 0, 1, 1, 1)),  # a gap
])
def test_the_scoped_checks_find_what_the_spark_checks_find(spark, lake, instance, statement, expected):
    settings = lake.config(tables=[customers_table()])
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1)), (2, "bob", "b@x", "free", t(1))], days_ago=3)
    run_pipeline(settings, instance=instance, run_checks=False)
    drop(lake, "02.parquet", [(1, "anne", "a@x", "gold", t(2)), (3, "cy", "c@x", "free", t(2))], days_ago=2)
    run_pipeline(settings, instance=instance, run_checks=False)
    batch_ids = sorted({r["batch_id"] for r in DeltaTrackerResource(checkpoint_path=settings.checkpoint_path)
                        .for_table("customers").read().to_pylist()})
    clean = scoped_report(settings.tables[0], settings, batch_ids)
    assert clean is not None and clean[0].ok and clean[1].ok, clean
    found, spark_found, scoped = _corrupt_and_compare(
        spark, settings, batch_ids, statement.format(t=f"delta.`{settings.table_path('customers')}`"))
    assert found == spark_found == expected
    if found[3] or found[4]:
        sample = (scoped[1].samples.get("missing") or scoped[1].samples["unexpected"])[0]
        assert sample.startswith('{"customer_id":'), sample


def test_the_scoped_check_covers_only_the_keys_of_the_batches_it_is_given(spark, lake, instance):
    settings = lake.config(tables=[customers_table()])
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1)), (2, "bob", "b@x", "free", t(1))], days_ago=3)
    run_pipeline(settings, instance=instance, run_checks=False)
    drop(lake, "02.parquet", [(1, "anne", "a@x", "gold", t(2))], days_ago=2)
    run_pipeline(settings, instance=instance, run_checks=False)
    rows = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("customers").read().to_pylist()
    second = [r["batch_id"] for r in rows if r["file_path"].endswith("02.parquet")]
    spark.sql(f"UPDATE delta.`{settings.table_path('customers')}` SET tier = 'platinum' WHERE customer_id = 2")
    violations, difference = scoped_report(settings.tables[0], settings, second)
    assert violations.ok and difference.ok  # key 2 is not the second batch's
    violations, difference = scoped_report(settings.tables[0], settings, [r["batch_id"] for r in rows])
    assert (difference.missing, difference.unexpected) == (1, 1)


def test_the_keys_a_run_touched_set_the_spark_checks_scope_without_counting_them(spark, lake, instance):
    settings = lake.config(tables=[customers_table()])
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1)), (2, "bob", "b@x", "free", t(1))], days_ago=3)
    run_pipeline(settings, instance=instance, run_checks=False)
    drop(lake, "02.parquet", [(1, "anne", "a@x", "gold", t(2)), (1, "annie", "a@x", "gold", t(3)),
                              (3, "cy", "c@x", "free", t(2))], days_ago=2)
    run_pipeline(settings, instance=instance, run_checks=False)
    rows = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("customers").read().to_pylist()
    second = [r["batch_id"] for r in rows if r["file_path"].endswith("02.parquet")]
    touched = touched_keys(settings.tables[0], settings, second).keys
    assert sorted(touched["customer_id"].to_pylist()) == [1, 3]  # distinct: key 1 has two change rows
    assert touched_keys(settings.tables[0], settings, [r["batch_id"] for r in rows]).keys.num_rows == 3
    assert touched_keys(settings.tables[0], settings, ["no-such-batch"]).keys.num_rows == 0
    # key 2 is not the second batch's: a change to it is outside the run's keys, inside the whole table
    spark.sql(f"UPDATE delta.`{settings.table_path('customers')}` SET tier = 'platinum' WHERE customer_id = 2")
    _, narrow = keyed_report(spark, settings.tables[0], settings, second, touched_exactly=touched.num_rows)
    assert narrow.ok, narrow
    _, whole = keyed_report(spark, settings.tables[0], settings, second, touched_exactly=SCOPED_CHECK_MAX_KEYS + 1)
    assert (whole.missing, whole.unexpected) == (1, 1), whole


CONDITIONS = ["op = 'D'", "op != 'D'", "op <> 'D'", "op IN ('D', 'X')", "op in ('D')", "  op='D'  ",
              "op = ''", "op IN ('a b', 'D')"]


def test_the_delete_conditions_the_engine_takes_evaluate_as_spark_does(spark):
    values = [None, "D", "X", "d", "U", "", " D", "a b"]
    frame = spark.createDataFrame([(v,) for v in values], "op string")
    for condition in CONDITIONS:
        test = DeleteTest.parse(condition)
        assert test is not None, condition
        spark_says = [r[0] for r in frame.select(F.coalesce(F.expr(condition), F.lit(False))).collect()]
        assert [test.is_delete(v) for v in values] == spark_says, condition
    for condition in ("op = 'D' OR op = 'X'", "lower(op) = 'd'", "op = 1", "op NOT IN ('D')", "op IS NULL",
                      "op = 'it''s'"):
        assert DeleteTest.parse(condition) is None, condition


@pytest.mark.parametrize(("statement", "expected"), [
    ("UPDATE {t} SET tier = 'platinum' WHERE customer_id = 2", (1, 1)),  # a value changed by hand
    ("DELETE FROM {t} WHERE customer_id = 2", (1, 0)),  # a key's row gone
    ("INSERT INTO {t} SELECT * FROM {t} WHERE customer_id = 1", (0, 1)),  # a key twice
])
def test_the_scoped_scd1_check_finds_what_the_spark_check_finds(spark, lake, instance, statement, expected):
    settings = lake.config(tables=[customers_table(loading_strategy="scd1", tracking_columns=[])])
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1)), (2, "bob", "b@x", "free", t(3))], days_ago=3)
    run_pipeline(settings, instance=instance, run_checks=False)
    drop(lake, "02.parquet", [(1, "anne", "a@x", "gold", t(2)), (3, "cy", "c@x", "free", t(2)),
                              (2, "old bob", "b@x", "free", t(2))], days_ago=2)  # a stale row: discarded
    summary = run_pipeline(settings, instance=instance)
    assert summary.success and not summary.spark_session_started  # the engine and the scoped checks
    assert engines(settings.table_path("customers"))[-1] == "delta-rs"
    for check in ("rows_match_changes", "target_matches_tracker"):
        assert latest_check(instance, check)[0], check
    frame = spark.read.format("delta").load(settings.table_path("customers"))
    assert sorted(tuple(r) for r in frame.select("customer_id", "name").collect()) == [
        (1, "anne"), (2, "bob"), (3, "cy")]
    batch_ids = sorted({r["batch_id"] for r in DeltaTrackerResource(checkpoint_path=settings.checkpoint_path)
                        .for_table("customers").read().to_pylist()})
    spark.sql(statement.format(t=f"delta.`{settings.table_path('customers')}`"))
    violations, scoped = scoped_report(settings.tables[0], settings, batch_ids)
    _, by_spark = keyed_report(spark, settings.tables[0], settings, batch_ids)
    assert violations is None
    assert (scoped.missing, scoped.unexpected) == (by_spark.missing, by_spark.unexpected) == expected


def test_a_setting_that_names_a_column_the_table_lacks_goes_to_spark_which_fails_the_file(spark, lake, instance):
    settings = lake.config(tables=[customers_table()])
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1))], days_ago=3)
    run_pipeline(settings, instance=instance, run_checks=False)
    settings = lake.config(tables=[customers_table(tracking_columns=["name", "nickname"])])  # changed afterwards
    drop(lake, "02.parquet", [(1, "anne", "a@x", "gold", t(2))], days_ago=2)
    summary = run_pipeline(settings, instance=instance, run_checks=False)
    (error,) = summary.tables["customers"].failed_files.values()
    assert error == "missing configured columns ['nickname']"
