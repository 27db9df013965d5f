"""Table assets: one time-window partitioned asset per configured table (docs/ARCHITECTURE.md, "Partitions").

Materialising partitions P of table T loads every file of P that is work (pending, or failed with retries left,
or new, or changed): the asset returns an immutable ``LoadRequest`` for P, and T's IO manager (Append or SCD2)
runs the whole load inside the table's lease (``load.TableLoad``). Wide ranges run as one run
(``BackfillPolicy.single_run()``) with one Spark session, which starts only when the batch has files to read.
"""

import warnings
from datetime import timedelta

import dagster as dg

from loader_assets.core.partitions import parse_start
from loader_assets.load import LoadRequest
from loader_assets.resources.lock import run_ended_checker
from loader_assets.settings import LoaderSettings, LoadingStrategy, PartitionGranularity, TableSettings

TABLE_TAG = "loader_assets/table"


def retry_tags(retry_attempts: int) -> dict[str, str]:
    """Run tags of the load runs: the daemon re-executes a run that died (its worker killed, its host lost) up to
    ``retry_attempts`` times, and the retry recovers the batch; a run whose step failed (files failed, or an
    error) is not re-executed by Dagster: failed files follow the loader's own retry policy on later runs
    (docs/ARCHITECTURE.md, "A partition with a failed file")."""
    return {"dagster/max_retries": str(retry_attempts), "dagster/retry_on_asset_or_op_failure": "false"}


def pool_name(table_name: str) -> str:
    """The Dagster concurrency pool of a table's asset."""
    return f"loader_assets/{table_name}"

IO_MANAGER_KEYS = {LoadingStrategy.APPEND: "append_io_manager", LoadingStrategy.SCD2: "scd2_io_manager",
                   LoadingStrategy.SCD1: "scd2_io_manager"}  # scd1 is scd2 without history: the same IO manager


def partitions_def_for(table: TableSettings) -> dg.TimeWindowPartitionsDefinition:
    """Daily or hourly UTC windows from the configured start up to the current window (``end_offset=1``)."""
    start = parse_start(table.partitioning.start)
    if table.partitioning.granularity is PartitionGranularity.HOUR:
        return dg.HourlyPartitionsDefinition(
            start_date=start.strftime("%Y-%m-%d-%H:%M"), end_offset=1, timezone="UTC"
        )
    return dg.DailyPartitionsDefinition(start_date=start.strftime("%Y-%m-%d"), end_offset=1, timezone="UTC")


def freshness_policy_for(table: TableSettings) -> dg.FreshnessPolicy | None:
    """Dagster's freshness policy from ``freshness.max_lag_minutes``: warn at it, fail at twice it."""
    if table.freshness is None or table.freshness.max_lag_minutes is None:
        return None
    lag = timedelta(minutes=table.freshness.max_lag_minutes)
    return dg.FreshnessPolicy.time_window(fail_window=2 * lag, warn_window=lag)


def build_table_asset(table: TableSettings, settings: LoaderSettings) -> dg.AssetsDefinition:
    """The software-defined asset of one target table."""
    name = table.table_name

    # backfill_policy is a beta parameter: its BetaWarning would greet every CLI start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.asset(
            name=name,
            partitions_def=partitions_def_for(table),
            backfill_policy=dg.BackfillPolicy.single_run(),
            io_manager_key=IO_MANAGER_KEYS[table.loading_strategy],
            group_name="tables",
            kinds={"delta", "spark"},
            tags={TABLE_TAG: name},
            # One queued run per table however it is launched (UI, backfill, sensor, schedule): dagster.yaml gives
            # every pool one slot with run granularity. In-process runs (CLI, materialize()) bypass the run queue;
            # the table's Delta lease is what keeps any two writers apart (docs/ARCHITECTURE.md, "Partitions and runs").
            pool=pool_name(name),
            freshness_policy=freshness_policy_for(table),
            metadata={
                "table_uri": settings.table_path(name),
                "source_path": table.source_path,
                "file_format": table.file_format.value,
                "loading_strategy": table.loading_strategy.value,
            },
            description=(
                f"Delta table `{name}`: {table.file_format.value} files from `{table.source_path}` loaded exactly once "
                f"({table.loading_strategy.value}). A partition is a window of file arrival times; materialising it "
                "loads every file of the window that is not completed yet."
            ),
        )
        def _table_asset(context: dg.AssetExecutionContext) -> LoadRequest:
            partitioned = context.has_partition_key_range or context.has_partition_key
            keys = tuple(context.partition_keys) if partitioned else None
            return LoadRequest(settings=settings, table_name=name, partition_keys=keys, run_id=context.run.run_id,
                               run_ended=run_ended_checker(context.instance))

    return _table_asset
