"""The Append and SCD2 IO managers: a table asset's materialisation goes through one of them.

A table asset returns an immutable :class:`~loader_assets.load.LoadRequest`; its IO manager's ``handle_output``
runs the whole load inside one ``with TableLoad(...)`` block, so the table's lease, the claimed batch and
everything cached for it live and die in that one call (docs/ARCHITECTURE.md, "A batch"). The two IO managers
differ only in their writer: ``AppendWriter`` or ``KeyedWriter`` (``writers/``). ``load_input`` gives the whole
target table to a downstream asset as a Spark DataFrame.
"""

from typing import TYPE_CHECKING, Any

import dagster as dg

from loader_assets.load import LoadContext, LoadOutcome, LoadRequest, TableLoad
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.spark import SparkSessionResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.settings import LoaderSettings, TableSettings, quarantine_location
from loader_assets.writers.append import AppendWriter
from loader_assets.writers.base import TableWriter
from loader_assets.writers.keyed import KeyedWriter

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

FAILED_FILES_SHOWN = 50


def outcome_metadata(outcome: LoadOutcome, settings: LoaderSettings, table: TableSettings) -> dict[str, Any]:
    """The materialisation's metadata: what the run's load did to the table."""
    name = table.table_name
    metadata: dict[str, Any] = {
        "table_uri": settings.table_path(name),
        "files_discovered": outcome.discovered,
        "files_deferred": outcome.deferred,
        "files_loaded": len(outcome.loaded),
        "files_failed": len(outcome.failed),
        "files_skipped": len(outcome.skipped),
        "files_waiting": len(outcome.waiting),
        "num_rows": outcome.num_rows,
    }
    if table.keeps_changes:  # late rows re-thread an scd2 history; in scd1 they are stale and change nothing
        metadata["rows_rethreaded" if table.is_scd2 else "rows_stale"] = outcome.late_rows
    if outcome.batch_ids:
        metadata.update({
            "batch_id": ", ".join(outcome.batch_ids),
            "batch_seq": max(outcome.batch_seqs),
            "delta_version": max(outcome.versions),
            "replaced_existing_rows": outcome.replaced,
        })
    if outcome.split:
        metadata["split_into_batches"] = len(outcome.batch_ids)
    if outcome.quarantined:
        metadata["rows_quarantined"] = sum(outcome.quarantined.values())
        metadata["quarantine_uri"] = quarantine_location(settings.target_root, name)
    if outcome.failed:
        metadata["failed_files"] = dg.MetadataValue.json(
            [{"file": path, "error": error} for path, error in list(outcome.failed.items())[:FAILED_FILES_SHOWN]])
    if outcome.skipped:
        metadata["skipped_files"] = dg.MetadataValue.json(
            [{"file": path, "reason": reason} for path, reason in list(outcome.skipped.items())[:FAILED_FILES_SHOWN]])
    return metadata


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
        context.add_output_metadata(outcome_metadata(outcome, request.settings, table))

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
