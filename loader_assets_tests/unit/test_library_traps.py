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
