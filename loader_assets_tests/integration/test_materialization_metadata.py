"""What each materialisation reports (docs/ARCHITECTURE.md, "What a materialisation reports"): a partition's own
numbers on its event, the run's totals as run_*, and the table's state from its Delta log on every event,
one that loaded nothing included. Read back from a real Dagster instance."""

import dagster as dg
import pytest
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from loader_assets.api import run_pipeline
from loader_assets.assets import build_table_asset
from loader_assets.definitions import build_resources

pytestmark = pytest.mark.spark


def _events(instance, table="events"):
    """The latest materialisation event of each partition, by partition key."""
    records = instance.fetch_materializations(dg.AssetKey(table), limit=1000).records
    latest = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        latest[record.partition_key] = record.asset_materialization
    return latest


def _values(materialization, *keys):
    return {key: getattr(materialization.metadata.get(key), "value", None) for key in keys}


def test_a_ranged_run_gives_each_partition_its_own_numbers_and_the_table_its_state(spark, lake, instance):
    # three day partitions: two good files each; the middle day also gets a corrupt file
    files = {}
    for days_ago in (3, 2, 1):
        for n in (1, 2):
            ids = [days_ago * 100 + n * 10 + i for i in range(n)]
            files[(days_ago, n)] = lake.write_parquet("events", f"d{days_ago}_{n}.parquet", ids, days_ago=days_ago)
    corrupt = lake.write_bytes("events", "d2_bad.parquet", b"PAR1 not parquet PAR1", days_ago=2)
    settings = lake.config()

    lines = []
    summary = run_pipeline(settings, instance=instance, run_checks=False, progress=lines.append)

    assert summary.tables["events"].rows_loaded == 9 and summary.total_files_failed == 1
    assert len(lines) == 1 and lines[0].startswith("events 20")
    assert ": 6 files loaded, 9 rows, 1 failed, run FAILED (" in lines[0]
    # the two good days are materialized; the day with the corrupt file has its numbers on an observation and
    # shows failed (docs/ARCHITECTURE.md, "A partition with a failed file")
    materialized = _events(instance)
    (observation,) = instance.fetch_observations(dg.AssetKey("events"), limit=10).records
    events = {**materialized, observation.partition_key: observation.asset_observation}
    assert len(materialized) == 2 and len(events) == 3
    per_partition = {key: _values(m, "files_loaded", "files_failed", "num_rows") for key, m in events.items()}
    assert sorted(per_partition.values(), key=lambda v: v["files_failed"]) == [
        {"files_loaded": 2, "files_failed": 0, "num_rows": 3},
        {"files_loaded": 2, "files_failed": 0, "num_rows": 3},
        {"files_loaded": 2, "files_failed": 1, "num_rows": 3},
    ]
    bad_key = next(key for key, v in per_partition.items() if v["files_failed"])
    assert bad_key == observation.partition_key
    partitions = build_table_asset(settings.table("events"), settings).partitions_def
    status = get_and_update_asset_status_cache_value(instance, dg.AssetKey("events"), partitions)
    assert status.deserialize_failed_partition_subsets(partitions).get_partition_keys() == [bad_key]
    assert sorted(status.deserialize_materialized_partition_subsets(partitions).get_partition_keys()) == sorted(
        materialized)
    bad_event = events[bad_key]
    assert bad_event.metadata["partition_files"].value == {
        "pending": 0, "processing": 0, "completed": 2, "failed": 1, "skipped": 0}
    assert [f["file"] for f in bad_event.metadata["failed_files"].value] == [str(corrupt)]
    records = {r.data["file"]: r.data for r in bad_event.metadata["files"].value.records}
    assert set(records) == {str(corrupt), str(files[(2, 1)]), str(files[(2, 2)])}
    assert records[str(corrupt)]["status"] == "failed" and "parquet" in records[str(corrupt)]["error"]
    assert records[str(files[(2, 2)])]["rows"] == 2 and records[str(files[(2, 2)])]["commit_version"] == 0
    for materialization in events.values():  # the run's totals and the table's state, the same on each
        assert _values(materialization, "run_files_loaded", "run_num_rows", "run_files_failed", "run_partitions",
                       "dagster/row_count", "table_version", "run_delta_version") == {
            "run_files_loaded": 6, "run_num_rows": 9, "run_files_failed": 1, "run_partitions": 3,
            "dagster/row_count": 9, "table_version": 0, "run_delta_version": 0}
        columns = [(c.name, c.type) for c in materialization.metadata["dagster/column_schema"].value.columns]
        assert columns == [("id", "long"), ("name", "string"), ("_source_file", "string"),
                           ("_load_timestamp", "timestamp"), ("_batch_id", "string")]
        assert materialization.metadata["dagster/uri"].value == settings.table_path("events")
        assert materialization.metadata["dagster/table_name"].value == "events"
        assert _values(materialization, "tracker_completed", "tracker_failed", "tracker_pending") == {
            "tracker_completed": 6, "tracker_failed": 1, "tracker_pending": 0}

    # the run's check steps were skipped (its asset step failed); it reported the failed-files check itself
    (latest,) = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("events"), "no_failed_files"), limit=1)
    assert latest.evaluation is not None and not latest.evaluation.passed
    assert latest.evaluation.metadata["failed_files"].value == 1

    # the failed-files check lists the file with its reason and the command that resolves it
    from loader_assets.checks import failed_files_result
    from loader_assets.resources.tracker import DeltaTrackerResource

    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    check = failed_files_result(tracker, retry_attempts=3)
    (listed,) = [r.data for r in check.metadata["files_not_completed"].value.records]
    assert listed["file"] == str(corrupt) and listed["status"] == "failed" and listed["partition"] == bad_key
    assert listed["reason"].endswith("(attempt 1 of 3)") and "parquet" in listed["reason"]
    assert listed["resolve_with"] == ("retried by the next run after its backoff; now: loader-assets retry "
                                      f"--config $LOADER_ASSETS_CONFIG --table events --file '{corrupt}'")


def test_a_run_that_loads_nothing_still_reports_the_tables_state(spark, lake, instance):
    lake.write_parquet("events", "a.parquet", [1, 2, 3], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance, run_checks=False)
    day = next(iter(_events(instance)))

    asset = build_table_asset(settings.table("events"), settings)
    result = dg.materialize([asset], instance=instance, partition_key=day, resources=build_resources(settings))

    assert result.success
    noop = _events(instance)[day]
    assert _values(noop, "files_loaded", "num_rows", "run_files_loaded", "dagster/row_count", "table_version") == {
        "files_loaded": 0, "num_rows": 0, "run_files_loaded": 0, "dagster/row_count": 3, "table_version": 0}
    assert "run_batch_id" not in noop.metadata and "dagster/column_schema" in noop.metadata
    assert noop.metadata["partition_files"].value["completed"] == 1


def _clicker(settings, instance, table_name, day):
    """What Materialize on the partition does in the UI: (Spark sessions it started, {check: (passed, description)})."""
    from loader_assets.checks import build_table_checks
    from loader_assets.resources.spark import sessions_started

    table = settings.table(table_name)
    assets = [build_table_asset(table, settings), *build_table_checks(table, settings)]

    def click():
        before = sessions_started()
        result = dg.materialize(assets, instance=instance, partition_key=day, resources=build_resources(settings))
        assert result.success
        checks = {e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()}
        return sessions_started() - before, checks

    return click


def _latest_check(instance, table, check_name):
    """(passed, {metadata key: value}) of the latest evaluation of a check."""
    (record,) = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(table), check_name), limit=1)
    evaluation = record.event.dagster_event.event_specific_data
    return evaluation.passed, {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def test_a_materialisation_that_loads_nothing_runs_its_checks_without_spark(spark, lake, instance):
    lake.write_parquet("events", "a.parquet", [1, 2], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance, run_checks=False)  # loads; no check looks at it
    click = _clicker(settings, instance, "events", next(iter(_events(instance))))

    used_spark, checks = click()  # the first whole-table check reads the table
    assert used_spark == 1 and checks["target_matches_tracker"][0]
    used_spark, checks = click()  # nothing moved since: the passing result stands, no Spark
    assert used_spark == 0
    passed, description = checks["target_matches_tracker"]
    assert passed and description.startswith("unchanged since the whole-table check of run")
    assert all(passed for passed, _ in checks.values()), checks

    lake.write_parquet("events", "b.parquet", [3], days_ago=0)  # the tracker and the target move on, unchecked
    run_pipeline(settings, instance=instance, run_checks=False)
    used_spark, checks = click()
    assert used_spark == 1 and checks["target_matches_tracker"][0]
    assert not checks["target_matches_tracker"][1].startswith("unchanged")


def test_a_loads_checks_carry_the_whole_table_verification_forward(spark, lake, instance):
    lake.write_parquet("events", "a.parquet", [1, 2], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance)  # the first load: its checks read its files; the rest was empty
    passed, metadata = _latest_check(instance, "events", "target_matches_tracker")
    assert passed and metadata["scope"] == "the 1 files this run loaded"
    assert metadata["whole_table"] == "carried forward from the empty table"
    click = _clicker(settings, instance, "events", next(iter(_events(instance))))

    used_spark, checks = click()  # the first click after the load: no JVM
    assert used_spark == 0, checks
    assert checks["target_matches_tracker"][0] and checks["target_matches_tracker"][1].startswith("unchanged")

    lake.write_parquet("events", "b.parquet", [3], days_ago=0)
    run_pipeline(settings, instance=instance)
    passed, metadata = _latest_check(instance, "events", "target_matches_tracker")
    assert passed and metadata["whole_table"].startswith("carried forward from run ")
    used_spark, checks = click()
    assert used_spark == 0 and checks["target_matches_tracker"][0], checks


def test_a_write_the_run_did_not_make_stops_the_carry_and_the_next_click_finds_it(spark, lake, instance):
    from delta.tables import DeltaTable

    lake.write_parquet("events", "a.parquet", [1, 2], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance)
    DeltaTable.forPath(spark, settings.table_path("events")).delete("_source_file LIKE '%a.parquet'")  # by hand

    lake.write_parquet("events", "b.parquet", [3], days_ago=0)
    run_pipeline(settings, instance=instance)  # its own file is fine, so its scoped check passes
    passed, metadata = _latest_check(instance, "events", "target_matches_tracker")
    assert passed and metadata["whole_table"].startswith("not carried forward: version 1 of ")
    assert "(DELETE)" in metadata["whole_table"]

    used_spark, checks = _clicker(settings, instance, "events", next(iter(_events(instance))))()
    assert used_spark == 1
    passed, description = checks["target_matches_tracker"]
    assert not passed and "a.parquet" in str(_latest_check(instance, "events", "target_matches_tracker")[1])


def test_a_tracker_change_the_run_did_not_make_stops_the_carry(spark, lake, instance):
    from deltalake import DeltaTable

    from loader_assets.resources.tracker import DeltaTrackerResource

    lake.write_parquet("events", "a.parquet", [1, 2], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance)
    tracker = DeltaTrackerResource.from_settings(settings).for_table("events")
    DeltaTable(tracker.path).update({"row_count": "5"}, predicate="file_path LIKE '%a.parquet'")  # by hand

    lake.write_parquet("events", "b.parquet", [3], days_ago=0)
    run_pipeline(settings, instance=instance)
    passed, metadata = _latest_check(instance, "events", "target_matches_tracker")
    assert passed
    assert metadata["whole_table"] == "not carried forward: tracker rows of files this run did not load changed"

    used_spark, checks = _clicker(settings, instance, "events", next(iter(_events(instance))))()
    assert used_spark == 1 and not checks["target_matches_tracker"][0]


def test_an_scd2_loads_checks_carry_forward_too(spark, lake, instance):
    table = {"table_name": "people", "source_path": "landing/people", "file_format": "csv",
             "loading_strategy": "scd2", "primary_keys": ["id"], "tracking_columns": ["city"],
             "scd2_sequence_column": "seq", "read_options": {"inferSchema": True}}
    lake.write_bytes("people", "1.csv", b"id,city,seq\n1,Oslo,1\n2,Rome,1\n", days_ago=1)
    settings = lake.config(tables=[table])
    run_pipeline(settings, instance=instance)
    lake.write_bytes("people", "2.csv", b"id,city,seq\n1,Bergen,2\n3,Rome,2\n", days_ago=1)
    run_pipeline(settings, instance=instance)
    for check_name in ("target_matches_tracker", "scd2_invariants", "history_matches_changes"):
        passed, metadata = _latest_check(instance, "people", check_name)
        assert passed and metadata["whole_table"].startswith("carried forward from run "), (check_name, metadata)

    used_spark, checks = _clicker(settings, instance, "people", next(iter(_events(instance, "people"))))()
    assert used_spark == 0, checks
    for check_name in ("target_matches_tracker", "scd2_invariants", "history_matches_changes"):
        passed, description = checks[check_name]
        assert passed and description.startswith("unchanged since the whole-table check of run"), checks
    assert all(passed for passed, _ in checks.values()), checks


def test_an_scd2_materialisation_shows_its_history_at_a_glance(spark, lake, instance):
    table = {"table_name": "people", "source_path": "landing/people", "file_format": "csv",
             "loading_strategy": "scd2", "primary_keys": ["id"], "tracking_columns": ["city"],
             "scd2_sequence_column": "seq", "read_options": {"inferSchema": True}}
    lake.write_bytes("people", "1.csv", b"id,city,seq\n1,Oslo,1\n2,Rome,1\n", days_ago=1)
    lake.write_bytes("people", "2.csv", b"id,city,seq\n1,Bergen,2\n2,Rome,2\n", days_ago=1)
    settings = lake.config(tables=[table])

    run_pipeline(settings, instance=instance, run_checks=False)

    (event,) = _events(instance, "people").values()
    assert _values(event, "history_versions", "history_current", "history_closed", "dagster/row_count") == {
        "history_versions": 3, "history_current": 2, "history_closed": 1, "dagster/row_count": 3}


def test_on_failed_file_materialize_keeps_the_partition_materialized_and_the_run_green(spark, lake, instance):
    good = lake.write_parquet("events", "good.parquet", [1, 2], days_ago=1)
    bad = lake.write_bytes("events", "bad.parquet", b"PAR1 not parquet PAR1", days_ago=1)
    settings = lake.config(tables=[{"table_name": "events", "source_path": "landing/events",
                                    "file_format": "parquet", "on_failed_file": "materialize"}])
    summary = run_pipeline(settings, instance=instance)

    assert summary.total_files_failed == 1 and summary.total_files_processed == 1
    (run,) = [r.dagster_run for r in instance.get_run_records()]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    (day, event), = _events(instance).items()
    assert _values(event, "files_loaded", "files_failed") == {"files_loaded": 1, "files_failed": 1}
    assert [f["file"] for f in event.metadata["failed_files"].value] == [str(bad)]
    partitions = build_table_asset(settings.table("events"), settings).partitions_def
    status = get_and_update_asset_status_cache_value(instance, dg.AssetKey("events"), partitions)
    assert status.deserialize_failed_partition_subsets(partitions).get_partition_keys() == []
    assert list(status.deserialize_materialized_partition_subsets(partitions).get_partition_keys()) == [day]
    assert not instance.fetch_observations(dg.AssetKey("events"), limit=10).records
    (latest,) = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("events"), "no_failed_files"), limit=1)
    assert latest.run_id == run.run_id and not latest.evaluation.passed  # the run's own check step
    assert str(good) in {r.data["file"] for r in event.metadata["files"].value.records}
