"""The exactly-once protocol of one table (DESIGN.md section 4), minus the target write itself.

Order inside the table's lock::

    recover  -> plan (list, register new files pending, choose the batch) -> claim (one tracker commit)
    -> read (Spark, bad files failed one by one)            ... the asset body ends here and returns a LoadBatch
    -> write (one Delta commit with txnAppId/txnVersion)    ... the IO manager (io_managers/)
    -> complete (one tracker commit) -> release the lock

Crash windows and what the next holder's ``recover_interrupted`` does with the rows left in ``processing``:
- before the target commit: the target's recorded txn version for ``loader_assets/<table>`` is below the
  batch's ``batch_seq``, so the files become ``failed`` ("interrupted") and load again with the next batch.
  The interruption does not use up ``retry_attempts``: a killed process says nothing about its files, and
  counting it let a run of crashes strand good files (the soak test found 39 of 55 stranded that way);
- after the target commit, before the tracker completion: the recorded version is >= ``batch_seq``, so the
  files become ``completed`` with their row counts read back from the target. They are never loaded twice.

Any batch holding a file that was claimed before (a retry after an interrupted batch, or a tracker that is
behind the target) is written with ``replaceWhere`` on ``_source_file``: the write replaces whatever rows those
files have, so even a zombie writer whose commit landed late cannot produce a duplicate.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from loader_assets.core.discovery import TIMESTAMP, is_within, list_source_files
from loader_assets.core.partitions import partition_keys_for
from loader_assets.core.states import FileStatus
from loader_assets.reading import BATCH_ID_COLUMN, SOURCE_FILE_COLUMN, BatchRead, ExpectedFile
from loader_assets.resources.lock import Lease
from loader_assets.resources.tracker import ACTIVE_STATUSES, FileChange, FileTracker
from loader_assets.settings import TableSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

APP_ID_PREFIX = "loader_assets/"


def app_id(table_name: str) -> str:
    """The Delta txnAppId every commit of this table carries."""
    return f"{APP_ID_PREFIX}{table_name}"


def open_target(target_path: str) -> DeltaTable | None:
    try:
        return DeltaTable(target_path)
    except TableNotFoundError:
        return None


def target_txn_version(target_path: str, table_name: str) -> int:
    """The highest batch_seq the target has committed for this table (0 when none)."""
    table = open_target(target_path)
    if table is None:
        return 0
    return table.transaction_version(app_id(table_name)) or 0


def missing_tracker_message(table_name: str, tracker_path: str) -> str:
    return (
        f"the tracker of table {table_name!r} is missing at {tracker_path} but the table holds loaded batches: "
        f"restore it from a backup, or run `loader-assets reset-state --table {table_name}` to track from scratch "
        "(files then load again and replace their own rows)"
    )


def find_batch_commit(target_path: str, batch_id: str, search_depth: int = 200) -> int | None:
    """The target version whose commit carries ``batch_id`` in its userMetadata."""
    entry = batch_commit_entry(target_path, batch_id, search_depth)
    return int(entry["version"]) if entry is not None else None


def batch_commit_entry(target_path: str, batch_id: str, search_depth: int = 200) -> dict[str, Any] | None:
    """The history entry (version, operation, operationMetrics, ...) of the commit that carries ``batch_id``."""
    table = open_target(target_path)
    if table is None:
        return None
    for entry in table.history(search_depth):
        raw = entry.get("userMetadata")
        if not raw:
            continue
        try:
            if json.loads(raw).get("batch_id") == batch_id:
                return entry
        except (ValueError, AttributeError):
            continue
    return None


@dataclass(frozen=True)
class BatchSequence:
    """The next batch's number, and whether the target holds batches the tracker does not know about."""

    next_seq: int
    tracker_behind: bool


def next_batch_sequence(tracker: FileTracker, target_path: str, table_name: str) -> BatchSequence:
    """One more than the larger of the tracker's last batch_seq and the target's recorded txn version.

    Taking the target into account matters: Delta skips a write whose txnVersion is not above the recorded
    one, so a tracker that was reset or lost must never restart the sequence below it. Such a tracker is
    "behind" the target, and its batches must replace rows rather than append them.
    """
    tracker_seq = tracker.max_batch_seq()
    target_seq = target_txn_version(target_path, table_name)
    return BatchSequence(next_seq=max(tracker_seq, target_seq) + 1, tracker_behind=target_seq > tracker_seq)


def batch_row_counts(spark: SparkSession, target_path: str, batch_id: str) -> dict[str, int]:
    """Rows per ``_source_file`` that the target holds for one batch (aggregated in Spark)."""
    from pyspark.sql import functions as F

    frame = spark.read.format("delta").load(target_path).where(F.col(BATCH_ID_COLUMN) == F.lit(batch_id))
    rows = frame.groupBy(SOURCE_FILE_COLUMN).count().collect()
    return {row[SOURCE_FILE_COLUMN]: int(row["count"]) for row in rows}


@dataclass
class RecoveryReport:
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.completed or self.failed)


def recover_interrupted(
    tracker: FileTracker,
    target_path: str,
    table_name: str,
    spark_provider: Callable[[], SparkSession],
) -> RecoveryReport:
    """Resolve every ``processing`` row from the target's txn version. Call only while holding the lock.

    Holding the table's lock means nobody else is loading it, so every ``processing`` row is an orphan of an
    interrupted batch. Spark starts only if some interrupted batch had committed (to count its rows).
    """
    report = RecoveryReport()
    orphans = tracker.read(statuses=[FileStatus.PROCESSING])
    if orphans.num_rows == 0:
        return report
    committed_seq = target_txn_version(target_path, table_name)
    for batch in orphans.group_by(["batch_id", "batch_seq"]).aggregate([("file_path", "list")]).to_pylist():
        batch_id, batch_seq, paths = batch["batch_id"], batch["batch_seq"], batch["file_path_list"]
        if batch_seq is not None and batch_seq <= committed_seq and batch_id is not None:
            version = find_batch_commit(target_path, batch_id)
            counts = batch_row_counts(spark_provider(), target_path, batch_id) if version is not None else {}
            if version is None:
                # recorded txn covers it but no commit names the batch: a later batch superseded it
                tracker.fail({p: f"batch {batch_id} was interrupted and superseded; reloading" for p in paths},
                             count_retry=False)
                report.failed.extend(paths)
                continue
            tracker.complete({p: counts.get(p, 0) for p in paths}, batch_id, version)
            report.completed.extend(paths)
            logger.warning("table %s: batch %s had committed (version %s) before its run died; "
                           "marked %d files completed", table_name, batch_id, version, len(paths))
        else:
            message = (
                f"interrupted: the run loading batch {batch_id} stopped before the target commit; "
                "the file is retried"
            )
            # A process that died is no evidence against its files: the retry budget is for files that fail.
            tracker.fail({p: message for p in paths}, count_retry=False)
            report.failed.extend(paths)
            logger.warning("table %s: batch %s did not commit; %d files failed for retry",
                           table_name, batch_id, len(paths))
    return report


@dataclass
class Plan:
    """What a run found in its partitions: the batch to load and what it left for later."""

    discovered: int
    registered: int
    batch: pa.Table  # tracker rows of the files chosen for this batch, in load order
    deferred: int  # eligible files left for a later run by max_files_per_run
    changes: list[FileChange] = field(default_factory=list)  # known files whose fingerprint changed


def eligible_files(
    rows: pa.Table, retry_attempts: int, now: datetime | None = None, min_file_age_seconds: float = 0
) -> pa.Table:
    """Rows that a run may load now: pending, or failed with retries left whose backoff is over and that an
    operator need not look at first (``retryable`` false); and, with ``min_file_age_seconds``, not modified
    within that many seconds (a file still being written waits)."""
    now = now or datetime.now(UTC)
    status = rows["status"]
    pending = pc.equal(status, FileStatus.PENDING.value)
    retryable = pc.and_(
        pc.and_(
            pc.equal(status, FileStatus.FAILED.value),
            pc.less(pc.fill_null(rows["retry_count"], 0), retry_attempts),
        ),
        pc.and_(
            pc.fill_null(rows["retryable"], True),
            pc.less_equal(pc.fill_null(rows["next_attempt_at"], pa.scalar(now, TIMESTAMP)),
                          pa.scalar(now, TIMESTAMP)),
        ),
    )
    chosen = pc.or_(pending, retryable)
    if min_file_age_seconds > 0:
        settled = pa.scalar(now - timedelta(seconds=min_file_age_seconds), TIMESTAMP)
        chosen = pc.and_(chosen, pc.less_equal(rows["file_modified_time"], settled))
    return rows.filter(chosen)


def plan_batch(
    tracker: FileTracker,
    table: TableSettings,
    partition_keys: list[str] | None,
    retry_attempts: int,
    max_files: int,
    now: datetime | None = None,
) -> Plan:
    """List the source, register new files as pending, and choose the batch for ``partition_keys``.

    ``partition_keys=None`` means every partition. Files load in (modification time, path) order.
    """
    listing = list_source_files(table.source_path)
    keys = partition_keys_for(
        listing["file_modified_time"], table.partitioning.granularity.value, table.partitioning.start, now
    )
    registered = tracker.register(listing, keys, table.on_file_change)
    record_changes(tracker, registered.changes, table.on_file_change.value)
    rows = tracker.read(statuses=ACTIVE_STATUSES)
    rows = eligible_files(rows, retry_attempts, now, table.min_file_age_seconds)
    if partition_keys is not None:
        rows = rows.filter(pc.is_in(rows["partition_key"], pa.array(partition_keys, pa.string())))
    inside = [is_within(table.source_path, p) for p in rows["file_path"].to_pylist()]
    rows = rows.filter(pa.array(inside, pa.bool_()))
    rows = rows.sort_by([("file_modified_time", "ascending"), ("file_path", "ascending")])
    batch = rows.slice(0, max_files)
    return Plan(
        discovered=listing.num_rows,
        registered=registered.new_files,
        batch=batch,
        deferred=max(0, rows.num_rows - batch.num_rows),
        changes=registered.changes,
    )


def record_changes(tracker: FileTracker, changes: list[FileChange], policy: str) -> None:
    """Append each detected file change to the table's event log (after the tracker commit that applied it)."""
    tracker.events.record([
        {
            "file_path": c.file_path, "event": f"changed:{c.action}",
            "detail": f"fingerprint {c.old_fingerprint} -> {c.new_fingerprint}; on_file_change={policy}",
            "actor": "loader", "file_version": c.file_version, "old_fingerprint": c.old_fingerprint,
            "new_fingerprint": c.new_fingerprint, "previous_status": c.previous_status,
            "previous_batch_id": c.previous_batch_id, "previous_row_count": c.previous_row_count,
        }
        for c in changes
    ])


def new_batch_id(batch_seq: int) -> str:
    return f"{batch_seq:08d}-{uuid.uuid4().hex[:12]}"


def expected_files(rows: pa.Table) -> list[ExpectedFile]:
    micros = pc.cast(rows["file_modified_time"], pa.int64()).to_pylist()
    return [
        ExpectedFile(path, int(size or 0), int(mtime or 0))
        for path, size, mtime in zip(rows["file_path"].to_pylist(), rows["file_size"].to_pylist(), micros, strict=True)
    ]


@dataclass
class LoadBatch:
    """What a table asset hands to its IO manager: a claimed batch, read and ready to commit.

    The lease of the table's lock travels with the batch; the IO manager releases it when the batch is done.
    ``dataframe`` is None when there is nothing to write (no eligible files, or every file failed).
    """

    table: TableSettings
    target_path: str
    run_id: str
    tracker: FileTracker
    lease: Lease | None
    discovered: int
    batch_id: str | None = None
    batch_seq: int | None = None
    dataframe: DataFrame | None = None
    loaded_paths: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    replace_existing: bool = False
    file_times: dict[str, int] = field(default_factory=dict)  # path -> modification time (us) at discovery
    deferred: int = 0
    recovered: RecoveryReport = field(default_factory=RecoveryReport)
    backoff: Callable[[int], float] | None = None  # retry_count -> seconds before the next attempt
    completed_empty: list[str] = field(default_factory=list)  # valid empty files, completed with 0 rows
    skipped: dict[str, str] = field(default_factory=dict)  # duplicates skipped by content hash
    content_hashes: dict[str, str] = field(default_factory=dict)  # sha256 per file (duplicate_content=skip)
    waiting: list[str] = field(default_factory=list)  # still being written: back to pending
    quarantine: DataFrame | None = None  # malformed rows (_source_file, raw_record), bad_records=quarantine
    quarantined: dict[str, int] = field(default_factory=dict)
    cached: list[DataFrame] = field(default_factory=list)
    evolve_schema: bool = False
    # reads some of the batch's files again, on their own (a split batch re-reads each half)
    reader: Callable[[list[str]], BatchRead] | None = None
    footer_rows: dict[str, int] = field(default_factory=dict)  # parquet: rows per file from its footer

    @property
    def app_id(self) -> str:
        return app_id(self.table.table_name)

    def user_metadata(self) -> str:
        payload: dict[str, Any] = {
            "batch_id": self.batch_id,
            "batch_seq": self.batch_seq,
            "run_id": self.run_id,
            "table": self.table.table_name,
            "files": len(self.loaded_paths),
        }
        return json.dumps(payload, sort_keys=True)

    def release(self) -> None:
        """Unpersist what the read cached and release the table's lock (idempotent)."""
        for frame in self.cached:
            try:
                frame.unpersist()
            except Exception:  # the session may be gone; the cache goes with it
                logger.debug("could not unpersist a cached frame", exc_info=True)
        self.cached.clear()
        if self.lease is not None:
            lease, self.lease = self.lease, None
            lease.release()


def replace_predicate(paths: list[str]) -> str:
    """A Delta ``replaceWhere`` predicate selecting the rows of exactly these source files."""

    def literal(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"{SOURCE_FILE_COLUMN} IN ({', '.join(literal(p) for p in paths)})"


def data_schema_of_target(spark: SparkSession, target_path: str, table: TableSettings) -> Any:  # noqa: ANN401
    """The target's source columns (a StructType: no audit or SCD2 columns), or None if it does not exist yet."""
    from pyspark.sql.types import StructType

    if open_target(target_path) is None:
        return None
    schema = spark.read.format("delta").load(target_path).schema
    return StructType([f for f in schema.fields if f.name not in table.loader_columns()])


def audited(frame: DataFrame, batch_id: str) -> DataFrame:
    from pyspark.sql import functions as F

    return frame.withColumn("_load_timestamp", F.current_timestamp()).withColumn(
        BATCH_ID_COLUMN, F.lit(batch_id)
    )
