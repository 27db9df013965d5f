from pathlib import Path

import dagster as dg
import pytest

from loader_assets.core.errors import ConfigError
from loader_assets.definitions import CONFIG_ENV, build_definitions, defs
from loader_assets.planning import pending_work
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.sensors import range_tags

PROJECT = Path(__file__).resolve().parents[2]


def test_project_definitions_load_with_every_asset_check_job_and_sensor(monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(PROJECT / "configs" / "local.yaml"))
    definitions = defs()
    repo = definitions.get_repository_def()
    assert sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()) == [
        "customers", "page_views", "transactions"]
    check_names = sorted(k.name for k in repo.asset_graph.asset_check_keys)
    per_table = ["no_failed_files", "target_matches_tracker", "no_orphaned_processing", "lock_not_stale"]
    assert check_names == sorted(
        [f"{table}_{check}" for table in ["customers", "page_views", "transactions"] for check in per_table]
        + ["customers_scd2_invariants", "customers_history_matches_changes"]
    )
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
    """However a run is launched (UI, backfill, sensor), the run queue admits one run per table's pool."""
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
    assert result.run_requests == [] and "no new or retryable files among 0" in result.skip_message
