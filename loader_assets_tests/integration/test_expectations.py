"""Data-quality expectations (README "Expectations"): each action's effect on the table, the tracker, the
quarantine table, the materialisation and its asset check; and that replaying or reloading a file changes
none of the counts (exactly once)."""

import json

import pytest

from loader_assets.api import run_pipeline
from loader_assets.checks import expectation_result
from loader_assets.operations import reprocess_files, reset_state
from loader_assets.resources.tracker import DeltaTrackerResource

pytestmark = pytest.mark.spark

TABLE = {
    "table_name": "sales", "source_path": "landing/sales", "file_format": "csv",
    "read_options": {"inferSchema": True},
    "expectations": [
        {"name": "has_name", "condition": "name IS NOT NULL", "action": "warn"},
        {"name": "not_negative", "condition": "amount >= 0", "action": "drop"},
        {"name": "not_huge", "condition": "amount < 1000", "action": "quarantine"},
        {"name": "positive_id", "condition": "id > 0", "action": "fail_file"},
    ],
}


def _state(spark, settings):
    """Everything expectations touch: the table's rows, each file's tracker numbers, the quarantine table."""
    rows = sorted(tuple(r) for r in spark.read.format("delta").load(settings.table_path("sales"))
                  .select("id", "name", "amount").collect())
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("sales")
    files = {r["file_path"].rsplit("/", 1)[-1]: (r["status"], r["row_count"], r["quarantined_rows"],
                                                  json.loads(r["expectation_results"] or "null"))
             for r in tracker.read().to_pylist()}
    quarantine = sorted((r["_source_file"].rsplit("/", 1)[-1], r["expectation"], json.loads(r["raw_record"]))
                        for r in spark.read.format("delta").load(settings.quarantine_path("sales")).collect())
    return rows, files, quarantine


def test_each_action_and_exactly_once_under_replay_and_reload(spark, lake, instance):
    lake.write_bytes("sales", "a.csv", b"id,name,amount\n1,x,5\n2,,-1\n3,z,2000\n", days_ago=1)
    bad = lake.write_bytes("sales", "b.csv", b"id,name,amount\n4,w,1\n0,v,1\n", days_ago=1)
    lake.write_bytes("sales", "c.csv", b"id,name,amount\n5,u,10\n", days_ago=1)
    settings = lake.config(tables=[TABLE])

    summary = run_pipeline(settings, instance=instance, run_checks=False)

    rows, files, quarantine = _state(spark, settings)
    assert rows == [(1, "x", 5), (5, "u", 10)]  # row 2 dropped, row 3 quarantined, b.csv failed
    assert files["a.csv"][:3] == ("completed", 1, 1)
    assert files["a.csv"][3] == {"rows": 3, "failed": {
        "has_name": {"rows": 1, "sample": '{"id":2,"amount":-1}'},
        "not_negative": {"rows": 1, "sample": '{"id":2,"amount":-1}'},
        "not_huge": {"rows": 1, "sample": '{"id":3,"name":"z","amount":2000}'}}}
    assert files["c.csv"] == ("completed", 1, None, {"rows": 1, "failed": {}})
    assert files["b.csv"][0] == "failed" and files["b.csv"][3]["failed"]["positive_id"]["rows"] == 1
    error = summary.tables["sales"].failed_files[str(bad)]
    assert error.startswith("expectation 'positive_id' (id > 0) failed on 1 row(s) (action fail_file)")
    assert '"id":0' in error
    assert quarantine == [("a.csv", "not_huge", {"id": 3, "name": "z", "amount": 2000})]

    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("sales")
    rules = {rule.name: rule for rule in settings.table("sales").expectations}

    def evaluate(name):  # what the expectation_<name> asset check reports
        result = expectation_result(tracker, rules[name])
        meta = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
        return result.passed, result.severity.value, meta["rows_checked"], meta["rows_failed"]

    assert evaluate("has_name") == (False, "WARN", 6, 1)
    assert evaluate("not_huge") == (False, "WARN", 6, 1)
    assert evaluate("positive_id") == (False, "ERROR", 6, 1)
    assert evaluate("not_negative") == (False, "WARN", 6, 1)

    before = _state(spark, settings)
    reprocess_files(settings, "sales", [str(lake.landing / "sales" / "a.csv")], reason="test")
    run_pipeline(settings, instance=instance, run_checks=False)  # a.csv again: its rows and counts replaced
    assert _state(spark, settings) == before
    reset_state(settings, "sales")
    run_pipeline(settings, instance=instance, run_checks=False)  # every file again, in a new tracker
    assert _state(spark, settings) == before


def test_an_expectation_spark_cannot_evaluate_fails_the_files_naming_it(spark, lake, instance):
    table = {**TABLE, "expectations": [{"name": "typo", "condition": "amont > 0", "action": "drop"}]}
    path = lake.write_bytes("sales", "a.csv", b"id,name,amount\n1,x,5\n", days_ago=1)
    settings = lake.config(tables=[table])

    summary = run_pipeline(settings, instance=instance, run_checks=False)

    error = summary.tables["sales"].failed_files[str(path)]
    assert error.startswith("expectation 'typo' of table 'sales' cannot be evaluated (amont > 0):"), error
    assert "amont" in error
