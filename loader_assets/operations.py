"""Operator actions of the seed guide: validate consistency, fix inconsistencies, force unlock, reset state.

``validate_consistency`` only reads. Per table it reports:
- orphaned processing records: ``processing`` rows while no live holder owns the table's lock;
- a stale lock (expired lease, dead holder process on this host, or an ended Dagster run);
- files failed beyond ``retry_attempts`` (they wait for an operator);
- a tracker that is missing or unreadable while the target holds loaded batches;
- tracker vs target (per-file row counts, rows of files not completed, files loaded twice) and, for scd2
  tables, the history invariants. These read the table with Spark, which starts only if a table exists.

File actions (``retry_files``, ``reprocess_files``, ``skip_files``) hold the table's lock while they write, so no
run is loading the table meanwhile; each is one tracker commit and one event per file in the table's event log
(who, when, why). They never read outside the table's ``source_path``: a path must be a tracked file of the table.
- retry: failed -> pending with a fresh retry budget (all failed files of the table when no path is given);
- reprocess: completed (or skipped, failed) -> pending; the next batch replaces the rows the file has (append)
  or applies it again, where rows already in the history are recognised and dropped (scd2);
- skip: pending or failed -> skipped, with the reason; a completed file cannot be skipped (its rows are loaded).

``fix_inconsistencies`` takes each table's lock (taking over a stale one by conditional commit), resolves the
orphans from the target's txn version exactly as a run does before planning (committed -> completed, else ->
failed for retry), and releases. What needs a person (files failed beyond retries, a damaged tracker, a target
that disagrees with the tracker) is reported, not guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from loader_assets.checks import TargetConsistency, compare_target_with_tracker, exhausted_failures
from loader_assets.core.discovery import SourceLocation
from loader_assets.core.errors import LockHeldError, TrackerError
from loader_assets.core.states import FileStatus
from loader_assets.loading import missing_tracker_message, open_target, recover_interrupted, target_txn_version
from loader_assets.resources.lock import DeltaLockResource, LockState, RunEnded, lock_stale_reason
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.scd2 import Scd2Violations, scd2_violations
from loader_assets.settings import LoaderSettings, TableSettings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession



def _locks(settings: LoaderSettings) -> DeltaLockResource:
    return DeltaLockResource(checkpoint_path=settings.checkpoint_path, lease_seconds=settings.timeout_minutes * 60)


def _trackers(settings: LoaderSettings) -> DeltaTrackerResource:
    return DeltaTrackerResource(checkpoint_path=settings.checkpoint_path)


@dataclass
class TableConsistency:
    table_name: str
    files_checked: int = 0
    orphaned: list[str] = field(default_factory=list)
    failed_beyond_retry: list[str] = field(default_factory=list)
    lock: LockState | None = None
    lock_stale_reason: str | None = None
    state_error: str | None = None
    target: TargetConsistency | None = None
    scd2: Scd2Violations | None = None

    def tracker_issues(self) -> list[str]:
        issues = [f"Orphaned processing record: {path}" for path in self.orphaned]
        if self.lock_stale_reason and self.lock is not None:
            issues.append(f"Stale lock on {self.table_name}: held by {self.lock.describe()} ({self.lock_stale_reason})")
        if self.state_error:
            issues.append(self.state_error)
        return issues

    def table_issues(self) -> list[str]:
        issues = []
        if self.failed_beyond_retry:
            issues.append(f"{len(self.failed_beyond_retry)} files failed and wait for an operator "
                          f"(e.g. {self.failed_beyond_retry[0]}); retry, reprocess or skip them")
        if self.target is not None:
            for item in self.target.count_mismatches:
                issues.append(f"row count of {item['file']}: tracker {item['tracker_rows']}, "
                              f"table {item['target_rows']}")
            for path in self.target.untracked_files:
                issues.append(f"rows from a file that is not completed in the tracker: {path}")
            for item in self.target.duplicate_loads:
                issues.append(f"file loaded twice: {item['file_path']} (batches {item['first_batch']} "
                              f"and {item['last_batch']})")
        if self.scd2 is not None and not self.scd2.ok:
            issues.append(f"SCD2 history broken: {self.scd2.keys_without_one_current} keys without exactly one "
                          f"current row, {self.scd2.flag_end_disagreements} rows whose flag disagrees with "
                          f"their end date, {self.scd2.interval_breaks} gaps or overlaps")
        return issues

    @property
    def consistent(self) -> bool:
        return not (self.tracker_issues() or self.table_issues())

    def to_json(self) -> dict[str, Any]:
        return {
            "table_name": self.table_name,
            "consistent": self.consistent,
            "files_checked": self.files_checked,
            "orphaned_processing": self.orphaned,
            "failed_beyond_retry": self.failed_beyond_retry,
            "lock": self.lock.to_json() if self.lock is not None and self.lock.held else None,
            "lock_stale_reason": self.lock_stale_reason,
            "state_error": self.state_error,
            "tracker_issues": self.tracker_issues(),
            "table_issues": self.table_issues(),
        }


@dataclass
class PipelineConsistency:
    tables: list[TableConsistency]

    @property
    def consistent(self) -> bool:
        return all(t.consistent for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        return {
            "overall_status": "CONSISTENT" if self.consistent else "INCONSISTENT",
            "total_files_checked": sum(t.files_checked for t in self.tables),
            "inconsistencies_found": sum(len(t.tracker_issues()) + len(t.table_issues()) for t in self.tables),
            "tables": [t.to_json() for t in self.tables],
        }


def check_table(
    settings: LoaderSettings,
    table: TableSettings,
    spark_provider: Callable[[], SparkSession],
    run_ended: RunEnded | None = None,
) -> TableConsistency:
    name = table.table_name
    result = TableConsistency(table_name=name)
    tracker = _trackers(settings).for_table(name)
    target_path = settings.table_path(name)
    try:
        lock_state = _locks(settings).for_table(name).read()
    except TrackerError as error:
        result.state_error = str(error)
        lock_state = None
    result.lock = lock_state
    result.lock_stale_reason = lock_stale_reason(lock_state, run_ended)
    live_holder = lock_state is not None and lock_state.held and result.lock_stale_reason is None
    try:
        rows = tracker.read(columns=["file_path", "status", "retry_count", "retryable"])
    except TrackerError as error:
        result.state_error = str(error)
        return result
    result.files_checked = rows.num_rows
    if not tracker.exists() and target_txn_version(target_path, name) > 0:
        result.state_error = (
            missing_tracker_message(name, tracker.path)
        )
        return result
    if not live_holder:
        processing = rows.filter(pc.equal(rows["status"], FileStatus.PROCESSING.value))
        result.orphaned = sorted(processing["file_path"].to_pylist())
    failed = exhausted_failures(rows.filter(pc.equal(rows["status"], FileStatus.FAILED.value)),
                                settings.retry_attempts)
    result.failed_beyond_retry = sorted(failed["file_path"].to_pylist())
    if open_target(target_path) is not None:
        spark = spark_provider()
        result.target = compare_target_with_tracker(spark, tracker, target_path)
        if table.is_scd2:
            result.scd2 = scd2_violations(spark, target_path, table)
    return result


def validate_consistency(
    settings: LoaderSettings,
    spark_provider: Callable[[], SparkSession],
    tables: list[str] | None = None,
    run_ended: RunEnded | None = None,
) -> PipelineConsistency:
    selected = [settings.table(n) for n in tables] if tables else settings.tables
    return PipelineConsistency([check_table(settings, t, spark_provider, run_ended) for t in selected])


@dataclass
class FixReport:
    applied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    needs_operator: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"fixes_applied": len(self.applied), "fixes_failed": len(self.failed),
                "actions": self.applied, "failures": self.failed, "needs_operator": self.needs_operator}


def fix_inconsistencies(
    settings: LoaderSettings,
    spark_provider: Callable[[], SparkSession],
    tables: list[str] | None = None,
    run_ended: RunEnded | None = None,
) -> FixReport:
    report = FixReport()
    selected = [settings.table(n) for n in tables] if tables else settings.tables
    for table in selected:
        name = table.table_name
        lock = _locks(settings).for_table(name)
        try:
            stale_reason = lock_stale_reason(lock.read(), run_ended)
            lease = lock.acquire(None, wait_seconds=0, heartbeat=False, run_ended=run_ended)
        except LockHeldError as error:
            report.failed.append(f"{name}: not fixed, a live run holds the lock ({error.holder})")
            continue
        except TrackerError as error:
            report.failed.append(f"{name}: {error}")
            continue
        try:
            if stale_reason:
                report.applied.append(f"Released stale lock of {name} ({stale_reason})")
            tracker = _trackers(settings).for_table(name)
            recovered = recover_interrupted(tracker, settings.table_path(name), name, spark_provider)
            if recovered.completed:
                report.applied.append(f"Fixed {len(recovered.completed)} orphaned processing records of {name}: "
                                      "their batch had committed, marked completed")
            if recovered.failed:
                report.applied.append(f"Fixed {len(recovered.failed)} orphaned processing records of {name}: "
                                      "their batch had not committed, marked failed for retry")
        except TrackerError as error:
            report.failed.append(f"{name}: {error}")
        finally:
            lease.release()
        remaining = check_table(settings, table, spark_provider, run_ended)
        for issue in remaining.table_issues() + ([remaining.state_error] if remaining.state_error else []):
            report.needs_operator.append(f"{name}: {issue}")
    return report


@dataclass
class FileAction:
    """The outcome of an operator's retry / reprocess / skip on one table."""

    table_name: str
    action: str
    changed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # path -> why not

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table_name, "action": self.action, "changed": self.changed,
                "refused": [{"file": p, "reason": r} for p, r in self.refused.items()]}


_ACTION_SOURCES = {
    "retry": (FileStatus.FAILED,),
    "reprocess": (FileStatus.COMPLETED, FileStatus.SKIPPED, FileStatus.FAILED),
    "skip": (FileStatus.PENDING, FileStatus.FAILED),
}


def _file_action(
    settings: LoaderSettings,
    table_name: str,
    action: str,
    paths: list[str] | None,
    reason: str | None,
    actor: str,
    lock_wait_seconds: float,
) -> FileAction:
    from loader_assets.core.discovery import is_within

    table = settings.table(table_name)
    result = FileAction(table_name, action)
    allowed = _ACTION_SOURCES[action]
    lease = _locks(settings).for_table(table_name).acquire(None, wait_seconds=lock_wait_seconds, heartbeat=False)
    try:
        tracker = _trackers(settings).for_table(table_name)
        rows = tracker.read(columns=["file_path", "status", "error_message"])
        status_of = dict(zip(rows["file_path"].to_pylist(), rows["status"].to_pylist(), strict=True))
        if paths is None:  # retry without --file: every failed file of the table
            paths = [p for p, st in status_of.items() if st in [s.value for s in allowed]]
        for path in dict.fromkeys(paths):
            if not is_within(table.source_path, path):
                result.refused[path] = f"not below the table's source_path {table.source_path}"
            elif path not in status_of:
                result.refused[path] = "not a tracked file of this table (see `loader-assets status`)"
            elif status_of[path] not in [s.value for s in allowed]:
                hint = " (its rows are loaded; use reprocess to load it again)" if action == "skip" else ""
                result.refused[path] = (f"status is {status_of[path]}; {action} applies to "
                                        f"{' or '.join(s.value for s in allowed)} files{hint}")
            else:
                result.changed.append(path)
        if result.changed:
            errors = dict(zip(rows["file_path"].to_pylist(), rows["error_message"].to_pylist(), strict=True))
            if action == "skip":
                message = f"skipped by {actor}: {reason}"
                tracker.skip({p: message for p in result.changed})
            else:
                message = (f"{action} requested by {actor}" + (f": {reason}" if reason else "")
                           + ("; the reload replaces the rows the file has" if action == "reprocess" else ""))
                tracker.requeue(result.changed, allowed, message, _stat_files(result.changed))
            tracker.events.record([
                {"file_path": p, "event": action, "detail": message + (f" (last error: {errors[p]})"
                                                                       if errors.get(p) else ""),
                 "actor": actor, "previous_status": status_of[p]}
                for p in result.changed
            ])
    finally:
        lease.release()
    return result


def _stat_files(paths: list[str]) -> dict[str, tuple[int, datetime]]:
    """Size and modification time of each file that exists now (one stat each; operator actions are small)."""
    import pyarrow.fs as pafs

    from loader_assets.core.discovery import micros_to_datetime

    seen: dict[str, tuple[int, datetime]] = {}
    for path in paths:
        location = SourceLocation.parse(path)
        try:
            info = location.filesystem.get_file_info(path[len(location.uri_prefix):])
        except OSError:
            continue
        if info.type == pafs.FileType.File:
            seen[path] = (int(info.size or 0), micros_to_datetime((info.mtime_ns or 0) // 1000))
    return seen


def retry_files(settings: LoaderSettings, table_name: str, paths: list[str] | None = None,
                reason: str | None = None, actor: str | None = None, lock_wait_seconds: float = 60) -> FileAction:
    """Failed files (all of the table's, or ``paths``) -> pending with a fresh retry budget."""
    from loader_assets.resources.events import current_actor

    return _file_action(settings, table_name, "retry", paths, reason, actor or current_actor(), lock_wait_seconds)


def reprocess_files(settings: LoaderSettings, table_name: str, paths: list[str], reason: str | None = None,
                    actor: str | None = None, lock_wait_seconds: float = 60) -> FileAction:
    """Completed (or skipped, failed) files -> pending; their next load replaces the rows they have."""
    from loader_assets.resources.events import current_actor

    return _file_action(settings, table_name, "reprocess", paths, reason, actor or current_actor(),
                        lock_wait_seconds)


def skip_files(settings: LoaderSettings, table_name: str, paths: list[str], reason: str,
               actor: str | None = None, lock_wait_seconds: float = 60) -> FileAction:
    """Pending or failed files -> skipped with ``reason``; they are not loaded unless reprocessed."""
    from loader_assets.resources.events import current_actor

    return _file_action(settings, table_name, "skip", paths, reason, actor or current_actor(), lock_wait_seconds)


def file_history(settings: LoaderSettings, table_name: str, paths: list[str] | None = None) -> list[dict[str, Any]]:
    """The event log of a table (or of some files): changes seen in the source and operator actions."""
    settings.table(table_name)
    return _trackers(settings).for_table(table_name).events.read(paths).to_pylist()


def force_unlock(settings: LoaderSettings, table_name: str) -> LockState | None:
    """Free the table's lock whoever holds it; returns the holder that was removed (None if it was free)."""
    return _locks(settings).for_table(table_name).force_release()


def reset_state(settings: LoaderSettings, table_name: str) -> tuple[int, bool]:
    """Forget every file of the table (the tracker is replaced by an empty one) while holding its lock.

    The target table is kept. Files then load again, and that reload cannot duplicate rows: the new tracker is
    behind the target's txn version, so append batches replace their files' rows, and SCD2 rows already in the
    history are recognised as applied. Returns (files forgotten, target kept)."""
    lock = _locks(settings).for_table(table_name)
    lease = lock.acquire(None, wait_seconds=0, heartbeat=False)
    try:
        tracker = _trackers(settings).for_table(table_name)
        try:
            forgotten = tracker.read(columns=["file_path"]).num_rows
        except TrackerError:
            forgotten = 0
        if tracker.exists():
            location = SourceLocation.parse(tracker.path)
            location.filesystem.delete_dir(tracker.path[len(location.uri_prefix):])
        tracker.create_empty()
    finally:
        lease.release()
    return forgotten, open_target(settings.table_path(table_name)) is not None
