"""The Append and SCD2 IO managers: a table asset's materialisation goes through one of them.

A table asset returns an immutable :class:`~loader_assets.load.LoadRequest`; its IO manager's ``handle_output``
runs the whole load inside one ``with TableLoad(...)`` block, so the table's lease, the claimed batch and
everything cached for it live and die in that one call (docs/ARCHITECTURE.md, "A batch"). The two IO managers
differ only in their writer: ``AppendWriter`` or ``KeyedWriter`` (``writers/``). ``load_input`` gives the whole
target table to a downstream asset as a Spark DataFrame.
"""

from typing import TYPE_CHECKING

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from loader_assets.checks import failed_files_evaluation
from loader_assets.core.states import FileStatus
from loader_assets.load import LoadContext, LoadRequest, TableLoad
from loader_assets.materialization import (
    TRACKER_COLUMNS,
    failed_files_failure,
    failed_files_of,
    partition_metadata,
    run_metadata,
    table_metadata,
)
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.spark import SparkSessionResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.settings import LoaderSettings, OnFailedFile, TableSettings
from loader_assets.writers.append import AppendWriter
from loader_assets.writers.base import TableWriter
from loader_assets.writers.keyed import KeyedWriter

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

class DeltaTableIOManager(dg.ConfigurableIOManager):
    """Base of the target IO managers: runs a table's load for the asset's ``LoadRequest``."""

    tracker: dg.ResourceDependency[DeltaTrackerResource]
    lock: dg.ResourceDependency[DeltaLockResource]
    spark: dg.ResourceDependency[SparkSessionResource]

    def writer(self, table: TableSettings, settings: LoaderSettings) -> TableWriter:
        """The strategy that writes this IO manager's tables."""
        raise NotImplementedError

    def handle_output(self, context: dg.OutputContext, obj: LoadRequest) -> None:
        request = obj
        table = request.table
        load_context = LoadContext(
            table=table,
            settings=request.settings,
            run_id=request.run_id,
            tracker=self.tracker.for_table(table.table_name),
            lock=self.lock.for_table(table.table_name),
            spark=lambda: self.spark.session,
            run_ended=request.run_ended,
            log=context.log,
        )
        with TableLoad(load_context, self.writer(table, request.settings)) as load:
            outcome = load.run(request.partition_keys)
        # docs/ARCHITECTURE.md, "What a materialisation reports": the partition's own numbers on each partition
        # event, the run's totals (run_*) and the table's state on all of them
        keys = list(request.partition_keys or [])
        rows = load_context.tracker.read(columns=TRACKER_COLUMNS)
        rows = rows.filter(pc.is_in(rows["partition_key"], pa.array(keys, pa.string())))
        per_partition = partition_metadata(outcome, rows, keys)
        shared = {**run_metadata(outcome, request.settings, table, len(keys)),
                  **table_metadata(request.settings, table, load_context.tracker.status_counts())}
        # an unpartitioned table: only the failed rows (the tracker's status partition), not the whole tracker
        failed = failed_files_of(rows if keys else load_context.tracker.read(columns=TRACKER_COLUMNS,
                                                                             statuses=[FileStatus.FAILED]))
        if failed and table.on_failed_file is OnFailedFile.FAIL_PARTITION:
            # docs/ARCHITECTURE.md, "A partition with a failed file": the partitions without one are materialized;
            # the others get their numbers as an observation, no materialization, and the step fails, so Dagster
            # shows them failed. The run's check steps are then skipped: no_failed_files is reported here.
            unhealthy = {key for _, key, _ in failed}
            for key, metadata in per_partition.items():
                event = dg.AssetObservation if key in unhealthy else dg.AssetMaterialization
                context.log_event(event(asset_key=context.asset_key, partition=key, metadata={**metadata, **shared}))
            context.step_context.instance.report_runless_asset_event(
                failed_files_evaluation(load_context.tracker, request.settings.retry_attempts,
                                        context.step_context.instance))
            raise failed_files_failure(table.table_name, outcome, failed, shared)
        for key, metadata in per_partition.items():
            context.step_context.add_asset_metadata(metadata, partition_key=key)
        context.add_output_metadata(shared)

    def load_input(self, context: dg.InputContext) -> "DataFrame":
        """The whole target table as a Spark DataFrame (downstream assets filter it themselves)."""
        upstream = context.upstream_output
        if upstream is None:
            raise ValueError("cannot tell which table to load: the input has no upstream asset")
        uri = (upstream.definition_metadata or {}).get("table_uri")
        if uri is None:
            raise ValueError(f"asset {upstream.asset_key.to_user_string()} has no table_uri metadata")
        return self.spark.session.read.format("delta").load(str(getattr(uri, "value", uri)))


class DeltaAppendIOManager(DeltaTableIOManager):
    """Appends each batch with Spark + delta-spark in one commit carrying the batch's txn.

    Example::

        DeltaAppendIOManager(tracker=DeltaTrackerResource(checkpoint_path="/data/checkpoints"),
                             lock=DeltaLockResource(checkpoint_path="/data/checkpoints"),
                             spark=SparkSessionResource(master="local[*]"))
    """

    def writer(self, table: TableSettings, settings: LoaderSettings) -> TableWriter:
        return AppendWriter(table, settings)


class DeltaScd2IOManager(DeltaTableIOManager):
    """Keeps full history per key (scd2) or the latest row per key (scd1): one change-record append and one MERGE
    per batch (``writers/keyed.py``); the table's ``loading_strategy`` says which.

    Example::

        DeltaScd2IOManager(tracker=DeltaTrackerResource(checkpoint_path="/data/checkpoints"),
                           lock=DeltaLockResource(checkpoint_path="/data/checkpoints"),
                           spark=SparkSessionResource(master="local[*]"))
    """

    def writer(self, table: TableSettings, settings: LoaderSettings) -> TableWriter:
        return KeyedWriter(table, settings)
