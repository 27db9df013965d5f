"""Shared plumbing of the target IO managers: commit a prepared batch exactly once, then complete it.

``DeltaBatchIOManager.handle_output`` is the second half of the protocol in ``loading.py``:

    ensure the lease is still ours -> strategy checks that need Spark (files failing them fail alone)
    -> one Delta commit (txnAppId/txnVersion, userMetadata naming the batch), or none if nothing changed
    -> read back the commit version and per-file row counts -> complete the files in the tracker
    -> release the lock (always, in ``finally``)

If the commit raises, the target's recorded txn version decides what happened: at or above the batch's
``batch_seq`` the commit landed (the error came after it), so the files complete; below it, they fail for retry.
Subclasses implement ``write_batch`` (how a batch becomes that one commit) and may add ``validate_batch``.
"""


from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from loader_assets.core import faults
from loader_assets.core.errors import BatchWriteError
from loader_assets.loading import LoadBatch, batch_row_counts, find_batch_commit, target_txn_version
from loader_assets.resources.spark import SparkSessionResource
from loader_assets.settings import table_location

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass
class PreparedRows:
    """The rows a strategy will write, plus what it computed on the way (``extras``) and cached (``cached``,
    unpersisted by ``release`` once the batch is written or abandoned)."""

    rows: "DataFrame"
    extras: dict[str, Any] = field(default_factory=dict)
    cached: list["DataFrame"] = field(default_factory=list)

    def keep(self, frame: "DataFrame") -> "DataFrame":
        """Persist ``frame`` for the rest of this batch."""
        frame = frame.persist()
        self.cached.append(frame)
        return frame

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()
        self.cached.clear()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:500]


class DeltaBatchIOManager(dg.ConfigurableIOManager):
    """Base of the Delta target IO managers. Table path = ``<target_root>/<asset name>``."""

    target_root: str
    spark: dg.ResourceDependency[SparkSessionResource]

    def validate_batch(self, batch: LoadBatch, frame: "DataFrame") -> tuple[PreparedRows, dict[str, str]]:
        """Strategy-specific checks that need Spark: returns the rows to write and an error per file to fail.
        The default accepts everything."""
        return PreparedRows(frame), {}

    def write_batch(self, batch: LoadBatch, prepared: PreparedRows) -> bool:
        """Write the batch as exactly one Delta commit carrying the batch's txn; False if there was nothing to
        write (no commit made). Subclasses implement."""
        raise NotImplementedError

    def handle_output(self, context: dg.OutputContext, obj: LoadBatch) -> None:
        batch = obj
        try:
            metadata = self._commit(context, batch)
        finally:
            batch.release()
        context.add_output_metadata(metadata)

    def _fail_files(self, context: dg.OutputContext, batch: LoadBatch, errors: dict[str, str]) -> None:
        batch.tracker.fail(errors)
        batch.failed.update(errors)
        batch.loaded_paths = [p for p in batch.loaded_paths if p not in errors]
        for path, error in errors.items():
            context.log.error(f"table {batch.table.table_name}: file {path!r} failed: {error}")

    def _commit(self, context: dg.OutputContext, batch: LoadBatch) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "table_uri": batch.target_path,
            "files_discovered": batch.discovered,
            "files_deferred": batch.deferred,
        }
        if batch.dataframe is not None and batch.batch_id is not None and batch.batch_seq is not None:
            metadata.update(self._write_and_complete(context, batch))
        metadata.update({"files_loaded": len(batch.loaded_paths), "files_failed": len(batch.failed)})
        metadata.setdefault("num_rows", 0)
        if batch.failed:
            metadata["failed_files"] = dg.MetadataValue.json(
                [{"file": path, "error": error} for path, error in list(batch.failed.items())[:50]]
            )
        return metadata

    def _write_and_complete(self, context: dg.OutputContext, batch: LoadBatch) -> dict[str, Any]:
        name = batch.table.table_name
        assert batch.lease is not None and batch.dataframe is not None
        assert batch.batch_id is not None and batch.batch_seq is not None
        batch.lease.ensure_held()
        spark = batch.dataframe.sparkSession
        committed = False
        try:
            prepared, errors = self.validate_batch(batch, batch.dataframe)
            try:
                if errors:
                    self._fail_files(context, batch, errors)
                if not batch.loaded_paths:
                    return {}
                faults.crash_point(faults.BEFORE_TARGET_COMMIT)
                faults.crash_during(faults.DURING_TARGET_WRITE)
                committed = self.write_batch(batch, prepared)
            finally:
                prepared.release()
        except Exception as error:
            if target_txn_version(batch.target_path, name) < batch.batch_seq:
                message = f"the target commit of batch {batch.batch_id} failed: {_first_line(error)}"
                batch.tracker.fail({p: message for p in batch.loaded_paths})
                raise BatchWriteError(name, batch.batch_id, _first_line(error)) from error
            committed = True
            context.log.warning(f"table {name}: the write raised after its commit landed: {_first_line(error)}")
        faults.crash_point(faults.AFTER_TARGET_COMMIT)
        version = find_batch_commit(batch.target_path, batch.batch_id) if committed else None
        if committed and version is None:
            message = (
                f"no target commit carries batch {batch.batch_id}: Delta skipped the write because txn version "
                f"{batch.batch_seq} was already recorded for {batch.app_id}"
            )
            batch.tracker.fail({p: message for p in batch.loaded_paths})
            raise BatchWriteError(name, batch.batch_id, message)
        counts = batch_row_counts(spark, batch.target_path, batch.batch_id) if committed else {}
        faults.crash_during(faults.DURING_TRACKER_COMMIT)
        batch.tracker.complete({p: counts.get(p, 0) for p in batch.loaded_paths}, batch.batch_id, version)
        faults.crash_point(faults.AFTER_COMPLETE)
        rows = sum(counts.values())
        if committed:
            context.log.info(f"table {name}: batch {batch.batch_id} committed as version {version}: "
                             f"{len(batch.loaded_paths)} files, {rows} rows")
        else:
            context.log.info(f"table {name}: batch {batch.batch_id}: {len(batch.loaded_paths)} files "
                             "changed nothing; no commit")
        return {
            "batch_id": batch.batch_id,
            "batch_seq": batch.batch_seq,
            "delta_version": version if version is not None else -1,
            "num_rows": rows,
            "replaced_existing_rows": batch.replace_existing,
        }

    def load_input(self, context: dg.InputContext) -> "DataFrame":
        """The whole target table as a Spark DataFrame (downstream assets filter it themselves)."""
        table_name = context.upstream_output.asset_key.path[-1] if context.upstream_output else None
        if table_name is None:
            raise ValueError("cannot tell which table to load: the input has no upstream asset")
        return self.spark.session.read.format("delta").load(table_location(self.target_root, table_name))
