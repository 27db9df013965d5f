"""What is work, decided once: which files of a table a run would load now, and the batch it takes.

``work_files`` is the one definition, a pure function over Arrow tables (the listing and the tracker's rows)
that both the read-only side (the sensor, the CLI's loop: ``pending_work``) and the run's planner
(``plan_batch``, under the table's lock) call. A file is work when it is in the source and

- the tracker does not know it yet (``new``; its partition is its modification time's window, as registration
  will store it);
- the tracker knows it as ``pending``, or as ``failed`` with retries left, its backoff over and not marked as
  needing an operator (``retryable`` false);
- its fingerprint (size:mtime) changed since the tracker last saw it (``changed``: the run applies
  ``on_file_change``);

and it is at least ``min_file_age_seconds`` old (a file still being written waits). A tracked file that is no
longer in the source is never work: the planner marks a pending one failed with that reason (no retry used),
so its state says why it does not load. Files left ``processing`` by a holder that is gone are work for the
read-only side (the run's recovery resolves them), never for the planner, which runs after recovery.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from loader_assets.core.discovery import TIMESTAMP, fingerprint, list_source_files
from loader_assets.core.partitions import group_into_ranges, partition_keys_for
from loader_assets.core.states import ACTIVE_STATUSES, FileStatus
from loader_assets.resources.tracker import FileChange, FileTracker, changed_files
from loader_assets.settings import TableSettings

# the tracker columns work_files reads
WORK_COLUMNS = ["file_path", "status", "retry_count", "partition_key", "fingerprint", "batch_id",
                "source_fingerprint", "retryable", "next_attempt_at", "file_modified_time"]
WORK_SCHEMA = pa.schema([("file_path", pa.string()), ("partition_key", pa.string()),
                         ("file_modified_time", TIMESTAMP), ("reason", pa.string()), ("detail", pa.string())])
VANISHED_MESSAGE = ("the file is no longer in the source (deleted or moved before it was loaded); it loads if it "
                    "comes back")


def retries_used_up(rows: pa.Table, retry_attempts: int) -> pa.Array:
    """Rows (failed ones) whose automatic retries are used up."""
    return pc.greater_equal(pc.fill_null(rows["retry_count"], 0), retry_attempts)


def marked_for_operator(rows: pa.Table) -> pa.Array:
    """Rows (failed ones) marked not retryable: a failure no retry can mend, held until an operator acts."""
    return pc.invert(pc.fill_null(rows["retryable"], True))


def needs_operator(rows: pa.Table, retry_attempts: int) -> pa.Array:
    """Failed rows no run will retry: retries used up, or marked not retryable. The one definition of "waiting
    for an operator" that the planner (``eligible_mask``), the sensor's idle reason and the checks share."""
    return pc.or_(retries_used_up(rows, retry_attempts), marked_for_operator(rows))


def eligible_mask(rows: pa.Table, retry_attempts: int, now: datetime) -> pa.Array:
    """Tracker rows a run may load now: pending, or failed with retries left whose backoff is over and that an
    operator need not look at first (``needs_operator``)."""
    status = rows["status"]
    pending = pc.equal(status, FileStatus.PENDING.value)
    retryable = pc.and_(
        pc.and_(pc.equal(status, FileStatus.FAILED.value), pc.invert(needs_operator(rows, retry_attempts))),
        pc.less_equal(pc.fill_null(rows["next_attempt_at"], pa.scalar(now, TIMESTAMP)), pa.scalar(now, TIMESTAMP)),
    )
    return pc.fill_null(pc.or_(pending, retryable), False)


def _settled(mtimes: pa.ChunkedArray | pa.Array, table: TableSettings, now: datetime) -> pa.Array:
    if table.min_file_age_seconds <= 0:
        return pa.array([True] * len(mtimes), pa.bool_())
    limit = pa.scalar(now - timedelta(seconds=table.min_file_age_seconds), TIMESTAMP)
    return pc.fill_null(pc.less_equal(mtimes, limit), False)


def work_files(
    listing: pa.Table, known: pa.Table, table: TableSettings, retry_attempts: int, now: datetime | None = None
) -> pa.Table:
    """The files that are work now (see the module docstring), one row each: ``file_path``, ``partition_key``,
    ``file_modified_time``, ``reason`` (new | pending | retry | changed) and ``detail`` (what makes the row
    differ from the last time it was work: its fingerprint, retry count and last batch)."""
    now = now or datetime.now(UTC)
    parts = []
    new = listing.filter(pc.invert(pc.is_in(listing["file_path"], known["file_path"])))
    new = new.filter(_settled(new["file_modified_time"], table, now))
    if new.num_rows:
        keys = partition_keys_for(new["file_modified_time"], table.partitioning.granularity.value,
                                  table.partitioning.start, now)
        parts.append(pa.table({
            "file_path": new["file_path"], "partition_key": keys,
            "file_modified_time": new["file_modified_time"],
            "reason": pa.array(["new"] * new.num_rows, pa.string()),
            "detail": fingerprint(new["file_size"], new["file_modified_time"]),
        }, schema=WORK_SCHEMA))
    present = known.filter(pc.is_in(known["file_path"], listing["file_path"]))
    eligible = present.filter(eligible_mask(present, retry_attempts, now))
    eligible = eligible.filter(_settled(eligible["file_modified_time"], table, now))
    if eligible.num_rows:
        detail = pc.binary_join_element_wise(
            pc.fill_null(eligible["fingerprint"], ""), pc.cast(pc.fill_null(eligible["retry_count"], 0), pa.string()),
            pc.fill_null(eligible["batch_id"], ""), "/")
        parts.append(pa.table({
            "file_path": eligible["file_path"], "partition_key": eligible["partition_key"],
            "file_modified_time": eligible["file_modified_time"],
            "reason": pc.if_else(pc.equal(eligible["status"], FileStatus.PENDING.value), "pending", "retry"),
            "detail": detail,
        }, schema=WORK_SCHEMA))
    changed = changed_files(present, listing)
    changed = changed.filter(_settled(changed["_mtime"], table, now))
    changed = changed.filter(pc.invert(pc.is_in(changed["file_path"], eligible["file_path"])))
    if changed.num_rows:
        parts.append(pa.table({
            "file_path": changed["file_path"], "partition_key": changed["partition_key"],
            "file_modified_time": changed["_mtime"],
            "reason": pa.array(["changed"] * changed.num_rows, pa.string()),
            "detail": changed["_fp"],
        }, schema=WORK_SCHEMA))
    return pa.concat_tables(parts) if parts else WORK_SCHEMA.empty_table()


@dataclass(frozen=True)
class PendingWork:
    """What a run of one table would do now, for the sensor and the CLI (read only)."""

    table_name: str
    discovered: int
    counts: dict[str, int]  # files per reason: new, pending, retry, changed, interrupted
    partition_keys: tuple[str, ...]
    ranges: tuple[tuple[str, str], ...]
    digest: str  # changes whenever the work changes (a new file, a retry, a new batch id), stable otherwise
    idle: str = ""  # when there is no work: why, in an operator's words (the sensor's skip reason)

    @property
    def has_work(self) -> bool:
        return bool(self.partition_keys)

    def count(self, *reasons: str) -> int:
        return sum(self.counts.get(r, 0) for r in reasons)


def pending_work(
    table: TableSettings, tracker: FileTracker, retry_attempts: int, holder_live: bool = True,
    now: datetime | None = None,
) -> PendingWork:
    """The work of ``table`` now, without writing anything. With ``holder_live`` false (nobody who counts holds
    the table's lock), files left ``processing`` are work too: the next run's recovery resolves them."""
    listing = list_source_files(table.source_path)
    known = tracker.read(columns=WORK_COLUMNS)
    work = work_files(listing, known, table, retry_attempts, now)
    if not holder_live:
        processing = known.filter(pc.equal(known["status"], FileStatus.PROCESSING.value))
        work = pa.concat_tables([work, pa.table({
            "file_path": processing["file_path"], "partition_key": processing["partition_key"],
            "file_modified_time": processing["file_modified_time"],
            "reason": pa.array(["interrupted"] * processing.num_rows, pa.string()),
            "detail": processing["batch_id"],
        }, schema=WORK_SCHEMA)])
    keys = sorted(set(work["partition_key"].to_pylist()))
    entries = sorted("\x00".join((p, r, d or "")) for p, r, d in zip(
        work["file_path"].to_pylist(), work["reason"].to_pylist(), work["detail"].to_pylist(), strict=True))
    counts = {item["values"]: int(item["counts"]) for item in pc.value_counts(work["reason"]).to_pylist()}
    return PendingWork(
        table_name=table.table_name,
        discovered=listing.num_rows,
        counts=counts,
        partition_keys=tuple(keys),
        ranges=tuple(group_into_ranges(keys, table.partitioning.granularity.value)),
        digest=hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16],
        idle="" if keys else idle_reason(listing, known, table, retry_attempts, now or datetime.now(UTC)),
    )


def idle_reason(listing: pa.Table, known: pa.Table, table: TableSettings, retry_attempts: int,
                now: datetime) -> str:
    """Why a table with no work has none: what its files are waiting for, and who resolves each kind."""
    name = table.table_name
    present = known.filter(pc.is_in(known["file_path"], listing["file_path"]))
    status = present["status"]
    failed = present.filter(pc.equal(status, FileStatus.FAILED.value))
    exhausted = retries_used_up(failed, retry_attempts)
    held = pc.and_(pc.invert(exhausted), marked_for_operator(failed))
    waiting = failed.filter(pc.invert(needs_operator(failed, retry_attempts)))
    new = listing.filter(pc.invert(pc.is_in(listing["file_path"], known["file_path"])))
    young = new.num_rows - int(pc.sum(_settled(new["file_modified_time"], table, now)).as_py() or 0)

    def count(value: str) -> int:
        return int(pc.sum(pc.equal(status, value)).as_py() or 0)

    parts = [f"{count(FileStatus.COMPLETED.value)} completed"]
    if waiting.num_rows:
        next_at = pc.min(waiting["next_attempt_at"]).as_py()
        parts.append(f"{waiting.num_rows} failed, retried after their backoff"
                     + (f" (next at {next_at:%Y-%m-%d %H:%M:%S} UTC)" if next_at else ""))
    if int(pc.sum(exhausted).as_py() or 0):
        parts.append(f"{int(pc.sum(exhausted).as_py())} failed with no retries left "
                     f"(`loader-assets retry --table {name}` or `skip`)")
    if int(pc.sum(held).as_py() or 0):
        parts.append(f"{int(pc.sum(held).as_py())} failed until an operator acts "
                     f"(`loader-assets retry --table {name}` or `skip`)")
    if count(FileStatus.PROCESSING.value):
        parts.append(f"{count(FileStatus.PROCESSING.value)} being loaded by a live run")
    if count(FileStatus.SKIPPED.value):
        parts.append(f"{count(FileStatus.SKIPPED.value)} skipped")
    if young:
        parts.append(f"{young} new, younger than min_file_age_seconds={table.min_file_age_seconds:g}")
    return f"nothing to load among {listing.num_rows} files in {table.source_path}: " + ", ".join(parts)


@dataclass
class Plan:
    """What a run found in its partitions: the batch to load and what it left for later."""

    discovered: int
    registered: int
    batch: pa.Table  # tracker rows of the files chosen for this batch, in load order
    deferred: int  # work left for a later run by max_files_per_run
    changes: list[FileChange] = field(default_factory=list)  # known files whose fingerprint changed
    vanished: list[str] = field(default_factory=list)  # pending files no longer in the source: now failed


def plan_batch(
    tracker: FileTracker,
    table: TableSettings,
    partition_keys: list[str] | None,
    retry_attempts: int,
    max_files: int,
    now: datetime | None = None,
    run_id: str | None = None,
) -> Plan:
    """List the source, register new and changed files, fail pending files that vanished, and choose the batch
    for ``partition_keys`` (None: every partition): the work files, in (modification time, path) order, at most
    ``max_files``. Call only while holding the table's lock (it writes the tracker)."""
    now = now or datetime.now(UTC)
    listing = list_source_files(table.source_path)
    keys = partition_keys_for(
        listing["file_modified_time"], table.partitioning.granularity.value, table.partitioning.start, now
    )
    registered = tracker.register(listing, keys, table.on_file_change)
    record_changes(tracker, registered.changes, table.on_file_change.value)
    rows = tracker.read(statuses=ACTIVE_STATUSES)
    gone = rows.filter(pc.and_(pc.equal(rows["status"], FileStatus.PENDING.value),
                               pc.invert(pc.is_in(rows["file_path"], listing["file_path"]))))
    vanished = gone["file_path"].to_pylist()
    if vanished:
        tracker.fail(dict.fromkeys(vanished, VANISHED_MESSAGE), count_retry=False, run_id=run_id)
        rows = tracker.read(statuses=ACTIVE_STATUSES)
    work = work_files(listing, rows.select(WORK_COLUMNS), table, retry_attempts, now)
    if partition_keys is not None:
        work = work.filter(pc.is_in(work["partition_key"], pa.array(partition_keys, pa.string())))
    chosen = rows.filter(pc.is_in(rows["file_path"], work["file_path"]))
    chosen = chosen.sort_by([("file_modified_time", "ascending"), ("file_path", "ascending")])
    batch = chosen.slice(0, max_files)
    return Plan(
        discovered=listing.num_rows,
        registered=registered.new_files,
        batch=batch,
        deferred=max(0, chosen.num_rows - batch.num_rows),
        changes=registered.changes,
        vanished=vanished,
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
