"""Shared plumbing of the target IO managers: commit a prepared batch exactly once, then complete it.

``DeltaBatchIOManager.handle_output`` is the second half of the protocol in ``loading.py``:

    ensure the lease is still ours -> strategy checks that need Spark (files failing them fail alone)
    -> one Delta commit (txnAppId/txnVersion, userMetadata naming the batch), or none if nothing changed
    -> read back the commit version and per-file row counts -> complete the files in the tracker
    -> release the lock (always, in ``finally``)

If the commit raises, the target's recorded txn version decides what happened: at or above the batch's
``batch_seq`` the commit landed (the error came after it), so the files complete. Below it, nothing landed: a
batch of several files is split in two, each half re-claimed as a new batch with its own ``batch_seq`` and
written on its own, recursively, so one file that Spark cannot read (a corrupt data page, a file deleted after
its precheck) fails alone while the others load (at most ``4 * bit_length(n) + 1`` attempts). A single-file
batch that fails outside a split fails the run (more likely the engine or the store than the file).
Subclasses implement ``write_batch`` (how a batch becomes that one commit) and may add ``validate_batch``.
"""


from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import dagster as dg

from loader_assets.core import faults
from loader_assets.core.errors import BatchWriteError
from loader_assets.loading import (
    LoadBatch,
    batch_commit_entry,
    batch_row_counts,
    new_batch_id,
    next_batch_sequence,
    replace_predicate,
    target_txn_version,
)
from loader_assets.reading import BATCH_ID_COLUMN, LOAD_TIMESTAMP_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.resources.spark import SparkSessionResource
from loader_assets.settings import quarantine_location, table_location

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


@dataclass
class _Outcome:
    """What the attempts of one batch (split or not) achieved."""

    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    batch_ids: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    rows: int = 0
    isolated: bool = False
    first_error: str | None = None


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

    def row_counts_from_commit(self, batch: LoadBatch, commit: dict[str, Any]) -> dict[str, int] | None:
        """Per-file row counts the strategy knows without reading the table back (None: aggregate them from
        the target). The default knows none."""
        return None

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
        batch.tracker.fail(errors, backoff=batch.backoff)
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
        metadata.update({
            "files_loaded": len(batch.loaded_paths) + len(batch.completed_empty),
            "files_failed": len(batch.failed),
            "files_skipped": len(batch.skipped),
            "files_waiting": len(batch.waiting),
        })
        if batch.quarantined:
            metadata["rows_quarantined"] = sum(batch.quarantined.get(p, 0) for p in batch.loaded_paths)
            metadata["quarantine_uri"] = quarantine_location(self.target_root, batch.table.table_name)
        metadata.setdefault("num_rows", 0)
        if batch.failed:
            metadata["failed_files"] = dg.MetadataValue.json(
                [{"file": path, "error": error} for path, error in list(batch.failed.items())[:50]]
            )
        if batch.skipped:
            metadata["skipped_files"] = dg.MetadataValue.json(
                [{"file": path, "reason": reason} for path, reason in list(batch.skipped.items())[:50]]
            )
        return metadata

    def _write_and_complete(self, context: dg.OutputContext, batch: LoadBatch) -> dict[str, Any]:
        assert batch.lease is not None and batch.dataframe is not None
        batch.lease.ensure_held()
        outcome = _Outcome()
        budget = [4 * max(1, len(batch.loaded_paths)).bit_length() + 1]
        self._attempt(context, batch, outcome, budget, bisecting=False)
        if outcome.isolated and not outcome.loaded:
            # Every part of the split batch failed: more likely the engine or the store than the files.
            raise BatchWriteError(batch.table.table_name, str(batch.batch_id),
                                  f"every part of the split batch failed; first error: {outcome.first_error}")
        batch.loaded_paths = outcome.loaded
        batch.failed.update(outcome.failed)
        if not outcome.batch_ids:
            return {}
        return {
            "batch_id": outcome.batch_ids[0] if len(outcome.batch_ids) == 1 else ", ".join(outcome.batch_ids),
            "batch_seq": batch.batch_seq,
            "delta_version": outcome.versions[-1] if outcome.versions else -1,
            "num_rows": outcome.rows,
            "replaced_existing_rows": batch.replace_existing,
            **({"split_into_batches": len(outcome.batch_ids)} if outcome.isolated else {}),
        }

    def _attempt(
        self, context: dg.OutputContext, part: LoadBatch, outcome: "_Outcome", budget: list[int], bisecting: bool
    ) -> None:
        """Validate, write and complete ``part`` as one commit; if the write fails as a whole and did not land,
        split the part in two (each half a new batch with its own batch_seq) until the bad file stands alone."""
        name = part.table.table_name
        assert part.dataframe is not None and part.batch_id is not None and part.batch_seq is not None
        budget[0] -= 1
        spark = part.dataframe.sparkSession
        committed = False
        try:
            prepared, errors = self.validate_batch(part, part.dataframe)
            try:
                if errors:
                    self._fail_files(context, part, errors)
                    outcome.failed.update(errors)
                if not part.loaded_paths:
                    return
                faults.crash_point(faults.BEFORE_TARGET_COMMIT)
                faults.crash_during(faults.DURING_TARGET_WRITE)
                self._write_quarantine(part)
                committed = self.write_batch(part, prepared)
            finally:
                prepared.release()
        except Exception as error:
            if target_txn_version(part.target_path, name) < part.batch_seq:
                outcome.first_error = outcome.first_error or _first_line(error)
                if len(part.loaded_paths) > 1 and budget[0] > 0:
                    self._bisect(context, part, error, outcome, budget)
                    return
                message = f"the target commit of batch {part.batch_id} failed: {_first_line(error)}"
                if bisecting and len(part.loaded_paths) == 1:
                    message = (f"isolated by splitting a batch that failed as a whole; Spark failed on this file: "
                               f"{_first_line(error)}")
                part.tracker.fail({p: message for p in part.loaded_paths}, backoff=part.backoff)
                outcome.failed.update({p: message for p in part.loaded_paths})
                for path in part.loaded_paths:
                    context.log.error(f"table {name}: file {path!r} failed: {message}")
                if not bisecting:
                    raise BatchWriteError(name, part.batch_id, _first_line(error)) from error
                return
            committed = True
            context.log.warning(f"table {name}: the write raised after its commit landed: {_first_line(error)}")
        faults.crash_point(faults.AFTER_TARGET_COMMIT)
        commit = batch_commit_entry(part.target_path, part.batch_id) if committed else None
        version = int(commit["version"]) if commit is not None else None
        if committed and version is None:
            message = (
                f"no target commit carries batch {part.batch_id}: Delta skipped the write because txn version "
                f"{part.batch_seq} was already recorded for {part.app_id}"
            )
            part.tracker.fail({p: message for p in part.loaded_paths})
            raise BatchWriteError(name, part.batch_id, message)
        counts: dict[str, int] = {}
        if committed and commit is not None:
            counts = self.row_counts_from_commit(part, commit) or batch_row_counts(
                spark, part.target_path, part.batch_id)
        faults.crash_during(faults.DURING_TRACKER_COMMIT)
        quarantined = {p: part.quarantined[p] for p in part.loaded_paths if p in part.quarantined}
        part.tracker.complete({p: counts.get(p, 0) for p in part.loaded_paths}, part.batch_id, version, quarantined)
        faults.crash_point(faults.AFTER_COMPLETE)
        rows = sum(counts.values())
        if committed:
            context.log.info(f"table {name}: batch {part.batch_id} committed as version {version}: "
                             f"{len(part.loaded_paths)} files, {rows} rows")
            outcome.versions.append(version)
        else:
            context.log.info(f"table {name}: batch {part.batch_id}: {len(part.loaded_paths)} files "
                             "changed nothing; no commit")
        outcome.batch_ids.append(part.batch_id)
        outcome.loaded.extend(part.loaded_paths)
        outcome.rows += rows

    def _bisect(
        self, context: dg.OutputContext, part: LoadBatch, error: Exception, outcome: "_Outcome", budget: list[int]
    ) -> None:

        name = part.table.table_name
        outcome.isolated = True
        paths = list(part.loaded_paths)
        context.log.warning(
            f"table {name}: batch {part.batch_id} of {len(paths)} files failed as a whole ({_first_line(error)}); "
            "splitting it to isolate the file that fails"
        )
        middle = len(paths) // 2
        for group in (paths[:middle], paths[middle:]):
            if budget[0] <= 0:
                message = (f"a batch holding this file failed as a whole and splitting it ran out of attempts; "
                           f"first error: {outcome.first_error}")
                part.tracker.fail({p: message for p in group}, backoff=part.backoff)
                outcome.failed.update({p: message for p in group})
                continue
            seq = next_batch_sequence(part.tracker, part.target_path, name).next_seq
            sub = replace(part, batch_seq=seq, batch_id=new_batch_id(seq), loaded_paths=list(group), failed={})
            part.tracker.claim(group, str(sub.batch_id), seq, part.run_id, reclaim=True)
            # Read the half again on its own: a filter over the whole batch's read would still read every
            # file (a group read maps _source_file from file paths), so the bad file would fail both halves.
            assert part.reader is not None
            read = part.reader(list(group))
            part.cached.extend(read.cached)  # shared with the top-level batch, which unpersists them
            sub.dataframe, sub.quarantine = read.dataframe, read.quarantine
            sub.loaded_paths = [p for p in read.loaded_paths if p not in read.errors]
            if read.errors:
                self._fail_files(context, sub, read.errors)
                outcome.failed.update(read.errors)
            if sub.dataframe is None or not sub.loaded_paths:
                continue
            self._attempt(context, sub, outcome, budget, bisecting=True)

    def _write_quarantine(self, part: LoadBatch) -> None:
        """Malformed rows of the part's files to the quarantine table, replacing those files' earlier ones (so a
        retried batch never doubles them). Written before the target commit; a crash in between is harmless."""
        if part.quarantine is None or not any(p in part.quarantined for p in part.loaded_paths):
            return
        from pyspark.sql import functions as F

        assert part.batch_id is not None
        rows = (
            part.quarantine.where(F.col(SOURCE_FILE_COLUMN).isin(part.loaded_paths))
            .withColumn(LOAD_TIMESTAMP_COLUMN, F.current_timestamp())
            .withColumn(BATCH_ID_COLUMN, F.lit(part.batch_id))
        )
        (
            rows.write.format("delta").mode("overwrite")
            .option("replaceWhere", replace_predicate(part.loaded_paths))
            .save(quarantine_location(self.target_root, part.table.table_name))
        )

    def load_input(self, context: dg.InputContext) -> "DataFrame":
        """The whole target table as a Spark DataFrame (downstream assets filter it themselves)."""
        table_name = context.upstream_output.asset_key.path[-1] if context.upstream_output else None
        if table_name is None:
            raise ValueError("cannot tell which table to load: the input has no upstream asset")
        return self.spark.session.read.format("delta").load(table_location(self.target_root, table_name))
