"""Why the design card's libraries are used where they are, and not elsewhere (docs/ARCHITECTURE.md, "Libraries").

dagster-deltalake serves the state tables (its storage configs are the ``state_storage`` setting) but not the
target tables: its IO manager loses data on the very runs the loader is built around, ranged runs over several
partitions. The test shows it on the pinned version; if it starts failing, the defect was fixed upstream and the
decision can be revisited.
"""

import dagster as dg
import pyarrow as pa
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from loader_assets.resources._state_tables import storage_options
from loader_assets.settings import LoaderSettings


def test_dagster_deltalake_io_manager_overwrites_the_whole_table_on_a_ranged_run(tmp_path, instance):
    from dagster_deltalake import DeltaLakePyarrowIOManager, LocalConfig
    from deltalake import DeltaTable

    days = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-05")

    @dg.asset(partitions_def=days, metadata={"partition_expr": "day"}, backfill_policy=dg.BackfillPolicy.single_run())
    def events(context: dg.AssetExecutionContext) -> pa.Table:
        return pa.table({"day": list(context.partition_keys), "n": list(range(len(context.partition_keys)))})

    io_manager = DeltaLakePyarrowIOManager(root_uri=str(tmp_path), storage_options=LocalConfig())
    assert dg.materialize([events], instance=instance, resources={"io_manager": io_manager},
                          partition_key="2024-01-01").success
    ranged = dg.materialize([events], instance=instance, resources={"io_manager": io_manager},
                            tags={ASSET_PARTITION_RANGE_START_TAG: "2024-01-02",
                                  ASSET_PARTITION_RANGE_END_TAG: "2024-01-03"})
    assert ranged.success  # reported as a success ...
    days_left = sorted(DeltaTable(str(tmp_path / "public" / "events")).to_pyarrow_table()["day"].to_pylist())
    assert days_left == ["2024-01-02", "2024-01-03"]  # ... but 2024-01-01, loaded before, is gone (dagster #34064)


@pytest.mark.parametrize(("raw", "options"), [
    ({"provider": "local"}, {}),
    ({"provider": "s3", "endpoint": "http://127.0.0.1:9000", "region": "us-east-1"},
     {"endpoint": "http://127.0.0.1:9000", "region": "us-east-1", "imdsv1_fallback": "False"}),
])
def test_state_storage_is_a_dagster_deltalake_config_passed_to_delta_rs(tmp_path, raw, options):
    settings = LoaderSettings(target_root=str(tmp_path), checkpoint_path=str(tmp_path), state_storage=raw,
                              tables=[{"table_name": "t", "source_path": str(tmp_path), "file_format": "csv"}])
    assert storage_options(settings.state_storage) == options


def test_a_ranged_run_leaves_planned_rows_per_partition_for_an_unpartitioned_check(instance):
    """Dagster 1.13 plans an unpartitioned check once per partition of a ranged run (the run's partitions subset
    is used whatever the check's partitions_def: ``DagsterRun.get_resolved_partitions_subset_for_events``) but
    records its one evaluation without a partition, so the UI's check history shows the planned rows as
    "Skipped". The check's latest result, the one its badge shows, is the real evaluation (docs/ARCHITECTURE.md,
    "What Dagster shows"). If this starts failing, the noise is gone upstream."""
    days = dg.DailyPartitionsDefinition(start_date="2025-03-01", end_date="2025-03-10")

    @dg.asset(partitions_def=days, backfill_policy=dg.BackfillPolicy.single_run())
    def table() -> None:
        return None

    @dg.asset_check(asset=table)
    def consistent() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    assert dg.materialize([table, consistent], instance=instance, tags={
        ASSET_PARTITION_RANGE_START_TAG: "2025-03-01", ASSET_PARTITION_RANGE_END_TAG: "2025-03-03"}).success
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    storage = instance.event_log_storage
    rows = sorted((r.status.value, r.partition or "") for r in
                  storage.get_asset_check_execution_history(consistent.check_key, limit=10))
    assert rows == [("PLANNED", "2025-03-01"), ("PLANNED", "2025-03-02"), ("PLANNED", "2025-03-03"),
                    ("SUCCEEDED", "")]
    latest = storage.get_latest_asset_check_execution_by_key([consistent.check_key])[consistent.check_key]
    assert latest.status == Status.SUCCEEDED and latest.partition is None
