"""Resolving what interrupted batches left behind, from the target's own record of what it committed.

Called by the holder of the table's lock (a run, before it plans; ``fix-inconsistencies``): every ``processing``
row then belongs to a batch whose run is gone. The target's recorded txn version for ``loader_assets/<table>``
(delta-rs, no Spark) says whether that batch committed:

- ``batch_seq <=`` the txn version and a commit names the batch: it committed before its run died. Its files
  become ``completed`` with their row counts (the writer's, read back from the table) and the commit version.
  They are never loaded again.
- otherwise it did not commit (or a later batch superseded it): the files become ``failed`` ("interrupted") and
  load again with the next batch, which replaces any rows they may have (the tracker now records them as
  claimed). The interruption does not use up ``retry_attempts``: a killed process says nothing about its files,
  and counting it let a run of crashes strand good files (the soak test found 39 of 55 stranded that way).

The writer then cleans up what it keeps beside the target (the SCD2 change record's rows of batches the target
never committed). Spark starts only if a committed batch needs its rows counted, or the writer needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader_assets.batch import ClaimedBatch
from loader_assets.core.states import FileStatus
from loader_assets.reading import ExpectedFile
from loader_assets.resources.tracker import FileTracker
from loader_assets.target import batch_commit, commit_quality, target_txn_version
from loader_assets.writers.base import TableWriter

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """Files whose interrupted batch had committed (now completed) and had not (now failed, to retry)."""

    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.completed or self.failed)


def recover_interrupted(
    tracker: FileTracker, writer: TableWriter, spark: Callable[[], SparkSession]
) -> RecoveryReport:
    """Resolve every ``processing`` row from the target's txn version, then let the writer clean up. Call only
    while holding the table's lock."""
    report = RecoveryReport()
    table, target_path = writer.table, writer.target_path
    orphans = tracker.read(statuses=[FileStatus.PROCESSING])
    reached_seq = target_txn_version(target_path, table.table_name)
    batches = orphans.group_by(["batch_id", "batch_seq", "run_id"]).aggregate([("file_path", "list")]).to_pylist()
    beyond = [b for b in batches if b["batch_seq"] is not None and b["batch_seq"] > reached_seq]
    if beyond and writer.settings.spark.remote:  # a killed client's write may still land: fence it out first
        writer.fence(spark(), max(b["batch_seq"] for b in beyond), sorted(b["batch_id"] for b in beyond))
    committed_seq = target_txn_version(target_path, table.table_name)
    decided = []
    for batch in batches:
        batch_id, batch_seq = batch["batch_id"], batch["batch_seq"]
        commit = batch_commit(target_path, batch_id) if (
            batch_id is not None and batch_seq is not None and batch_seq <= committed_seq) else None
        decided.append((batch, commit))
    # what the strategy keeps of uncommitted batches goes first: once their files leave `processing`, nothing
    # would name those batches again
    writer.recover(spark, committed_seq, [b["batch_seq"] for b, commit in decided
                                          if commit is None and b["batch_seq"] is not None])
    for batch, commit in decided:
        batch_id, batch_seq, paths = batch["batch_id"], batch["batch_seq"], batch["file_path_list"]
        if commit is None:
            message = (f"interrupted: the run loading batch {batch_id} stopped before its commit reached the "
                       "table; the file is retried" if batch_seq is None or batch_seq > reached_seq else
                       f"batch {batch_id} was interrupted and superseded by a later batch; the file is retried")
            tracker.fail({p: message for p in paths}, count_retry=False)
            report.failed.extend(paths)
            logger.warning("table %s: batch %s did not commit; %d files failed for retry",
                           table.table_name, batch_id, len(paths))
            continue
        claimed = ClaimedBatch(table, target_path, batch["run_id"] or "", batch_id, int(batch_seq),
                               tuple(ExpectedFile(p, 0, 0) for p in paths), replace=False)
        counts = writer.row_counts(spark(), claimed, commit, {})
        quality = commit_quality(commit)  # quarantined rows and expectation results committed with the rows
        tracker.complete({p: counts.get(p, 0) for p in paths}, batch_id, int(commit["version"]),
                         {p: q["quarantined"] for p, q in quality.items() if "quarantined" in q},
                         {p: q["expectations"] for p, q in quality.items() if "expectations" in q})
        report.completed.extend(paths)
        logger.warning("table %s: batch %s had committed (version %s) before its run died; marked %d files "
                       "completed", table.table_name, batch_id, commit["version"], len(paths))
    return report
