import math
from pathlib import Path

import dagster as dg
import pytest

from loader_assets.core.errors import ConfigError
from loader_assets.definitions import CONFIG_ENV, build_definitions, defs
from loader_assets.planning import pending_work
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.sensors import DAEMON_SENSOR_LOOP_SECONDS, dagster_minimum_interval, range_tags

PROJECT = Path(__file__).resolve().parents[2]


def test_project_definitions_load_with_every_asset_check_job_and_sensor(monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(PROJECT / "configs" / "local.yaml"))
    definitions = defs()
    repo = definitions.get_repository_def()
    assert sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()) == [
        "customers", "page_views", "transactions"]
    check_keys = sorted((k.asset_key.to_user_string(), k.name) for k in repo.asset_graph.asset_check_keys)
    per_table = ["no_failed_files", "target_matches_tracker", "no_orphaned_processing", "lock_not_stale"]
    assert check_keys == sorted(
        [(table, check) for table in ["customers", "page_views", "transactions"] for check in per_table]
        + [("customers", "scd2_invariants"), ("customers", "history_matches_changes"),
           ("transactions", "freshness"), ("transactions", "expectation_known_currency"),
           ("transactions", "expectation_plausible_amount")]
    )
    # a check's step reads as <table>_<check>, its name not repeating the table
    job = definitions.resolve_job_def("transactions_checks_job")
    assert "transactions_no_failed_files" in {node.name for node in job.nodes}
    assert sorted(s.name for s in definitions.sensors) == [
        "customers_files_sensor", "page_views_files_sensor", "transactions_files_sensor"]
    assert definitions.resolve_assets_def("customers").get_io_manager_key_for_asset_key(
        dg.AssetKey("customers")) == "scd2_io_manager"
    for table in ["transactions", "page_views", "customers"]:
        assert definitions.resolve_job_def(f"{table}_load_job")
        assert definitions.resolve_job_def(f"{table}_checks_job")
    asset = definitions.resolve_assets_def("transactions")
    assert isinstance(asset.partitions_def, dg.TimeWindowPartitionsDefinition)
    assert asset.partitions_def.get_first_partition_key() == "2024-01-01"


def test_every_table_asset_has_its_pool_and_the_project_instance_gives_each_pool_one_slot_per_run(
        monkeypatch, tmp_path):
    """The configuration the run queue limits each table by (its behaviour under a real daemon:
    integration/test_run_queue.py)."""
    from dagster._core.instance.config import PoolGranularity

    monkeypatch.setenv(CONFIG_ENV, str(PROJECT / "configs" / "local.yaml"))
    definitions = defs()
    for table in ["transactions", "page_views", "customers"]:
        node = definitions.resolve_assets_def(table).node_def
        assert node.pools == {f"loader_assets/{table}"}, node.pools
    (tmp_path / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        pools = instance.get_concurrency_config().pool_config
        assert (pools.default_pool_limit, pools.pool_granularity) == (1, PoolGranularity.RUN)


def test_bad_config_fails_definitions_with_the_field(monkeypatch, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("target_root: l\ncheckpoint_path: c\ntables: [{table_name: t, source_path: s, file_format: avro}]\n")
    monkeypatch.setenv(CONFIG_ENV, str(bad))
    with pytest.raises(ConfigError, match="tables.0.file_format"):
        defs()


def test_sensor_tick_requests_one_ranged_run_with_a_stable_key(lake, instance):
    for days_ago, name in [(3, "a.parquet"), (2, "b.parquet"), (1, "c.parquet")]:
        lake.write_parquet("events", name, [1, 2], days_ago=days_ago)
    settings = lake.config()
    definitions = build_definitions(settings)
    sensor = definitions.get_sensor_def("events_files_sensor")
    resources = {"tracker": DeltaTrackerResource(checkpoint_path=settings.checkpoint_path),
                 "lock": DeltaLockResource(checkpoint_path=settings.checkpoint_path)}

    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    work = pending_work(settings.tables[0], DeltaTrackerResource(
        checkpoint_path=settings.checkpoint_path).for_table("events"), 3)
    expected = {"loader_assets/table": "events", **range_tags(work.partition_keys[0], work.partition_keys[-1])}
    assert expected.items() <= request.tags.items()
    assert len(work.partition_keys) == 3

    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))
    assert [r.run_key for r in again.run_requests] == [request.run_key]

    lake.write_parquet("events", "d.parquet", [3], days_ago=1)
    changed = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))
    assert changed.run_requests[0].run_key != request.run_key


def test_sensor_skips_an_empty_landing_zone(lake, instance):
    settings = lake.config()
    sensor = build_definitions(settings).get_sensor_def("events_files_sensor")
    result = sensor.evaluate_tick(dg.build_sensor_context(
        instance=instance, resources={"tracker": DeltaTrackerResource(checkpoint_path=settings.checkpoint_path),
                                      "lock": DeltaLockResource(checkpoint_path=settings.checkpoint_path)}))
    assert result.run_requests == [] and result.skip_message == (
        f"nothing to load among 0 files in {settings.tables[0].source_path}: 0 completed")


def test_an_idle_tables_skip_reason_says_what_each_file_waits_for_and_who_resolves_it(lake):
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa

    from loader_assets.core.discovery import LISTING_SCHEMA
    from loader_assets.planning import WORK_COLUMNS, idle_reason
    from loader_assets.resources.tracker import TRACKER_SCHEMA

    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    settings = lake.config(tables=[{"table_name": "events", "source_path": "landing/events",
                                    "file_format": "parquet", "min_file_age_seconds": 60}])
    files = ["done", "backoff", "exhausted", "held", "loading", "skipped", "young"]
    listing = pa.table({"file_path": files, "file_size": [1] * 7,
                        "file_modified_time": [now - timedelta(hours=1)] * 6 + [now]}, schema=LISTING_SCHEMA)
    rows = [("done", "completed", 0, True, None), ("backoff", "failed", 1, True, now + timedelta(minutes=5)),
            ("exhausted", "failed", 3, True, None), ("held", "failed", 1, False, None),
            ("loading", "processing", 0, True, None), ("skipped", "skipped", 0, True, None)]
    schema = pa.schema([TRACKER_SCHEMA.field(name) for name in WORK_COLUMNS])
    known = pa.table({name: [None] * len(rows) for name in WORK_COLUMNS}, schema=schema)
    for column, values in {"file_path": [r[0] for r in rows], "status": [r[1] for r in rows],
                           "retry_count": [r[2] for r in rows], "retryable": [r[3] for r in rows],
                           "next_attempt_at": [r[4] for r in rows]}.items():
        known = known.set_column(schema.get_field_index(column), schema.field(column),
                                 pa.array(values, schema.field(column).type))

    reason = idle_reason(listing, known, settings.tables[0], retry_attempts=3, now=now)

    assert reason == (
        f"nothing to load among 7 files in {settings.tables[0].source_path}: 1 completed, "
        "1 failed, retried after their backoff (next at 2025-03-01 12:05:00 UTC), "
        "1 failed with no retries left (`loader-assets retry --table events` or `skip`), "
        "1 failed until an operator acts (`loader-assets retry --table events` or `skip`), "
        "1 being loaded by a live run, 1 skipped, 1 new, younger than min_file_age_seconds=60")


def test_sensor_interval_follows_the_setting_rounded_up_to_the_daemons_loop(lake):
    """Dagster's minimum interval is the interval rounded up to the daemon's 5-s loop, less the jitter a tick's
    start has within its loop (sensors.dagster_minimum_interval; the daemon test checks the gaps it gives)."""
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    assert DAEMON_SENSOR_LOOP_SECONDS == MIN_INTERVAL_LOOP_TIME  # a Dagster upgrade that changes it fails here
    assert build_definitions(lake.config()).get_sensor_def("events_files_sensor").minimum_interval_seconds == 28
    fast = build_definitions(lake.config(sensor_interval_seconds=5))
    assert fast.get_sensor_def("events_files_sensor").minimum_interval_seconds == 3
    # every interval ticks on the first loop at or after it, and not on the one before, with 2 s of jitter
    for interval in range(1, 61):
        minimum = dagster_minimum_interval(interval)
        loops = math.ceil(interval / 5)  # the daemon's loops the interval spans (not the module's own arithmetic)
        assert 1 <= minimum and minimum <= loops * 5 - 2 and (loops == 1 or minimum > (loops - 1) * 5 + 2), interval
