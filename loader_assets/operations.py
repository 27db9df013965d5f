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

from loader_assets.changes import ChangeRecord, changes_location
from loader_assets.checks import (
    TargetConsistency,
    compare_record_with_tracker,
    compare_target_with_tracker,
    exhausted_failures,
    files_with_rows,
    keyed_report,
)
from loader_assets.core.discovery import list_source_files, resolve
from loader_assets.core.errors import LockHeldError, TrackerError
from loader_assets.core.states import FileStatus, sources_of
from loader_assets.load import missing_tracker_message
from loader_assets.reading import BATCH_ID_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.recovery import recover_interrupted
from loader_assets.resources.lock import (
    DeltaLockResource,
    LockState,
    RunEnded,
    holder_is_live,
    lock_stale_reason,
)
from loader_assets.resources.tracker import DeltaTrackerResource, FileTracker
from loader_assets.scd2 import HistoryDifference, Scd2Violations
from loader_assets.settings import LoaderSettings, TableSettings
from loader_assets.target import batch_commit, open_target, target_exists, target_txn_version
from loader_assets.writers import writer_for

if TYPE_CHECKING:
    from pyspark.sql import SparkSession



def _locks(settings: LoaderSettings) -> DeltaLockResource:
    return DeltaLockResource.from_settings(settings)


def _trackers(settings: LoaderSettings) -> DeltaTrackerResource:
    return DeltaTrackerResource.from_settings(settings)


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
    history: HistoryDifference | None = None

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
        if self.history is not None and not self.history.ok:
            issues.append(f"SCD2 history differs from its change record: {self.history.missing} versions missing, "
                          f"{self.history.unexpected} unexpected (e.g. {self.history.samples})")
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
            "target": None if self.target is None else {
                "count_mismatches": self.target.count_mismatches, "untracked_files": self.target.untracked_files,
                "duplicate_loads": self.target.duplicate_loads},
            "scd2_violations": None if self.scd2 is None else {
                "keys_without_one_current": self.scd2.keys_without_one_current,
                "flag_end_disagreements": self.scd2.flag_end_disagreements,
                "interval_breaks": self.scd2.interval_breaks, "samples": self.scd2.samples},
            "history_differences": None if self.history is None else {
                "missing": self.history.missing, "unexpected": self.history.unexpected,
                "samples": self.history.samples},
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
    live_holder = holder_is_live(lock_state, run_ended)
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
    if target_exists(target_path):
        spark = spark_provider()
        if table.keeps_changes:
            result.target = compare_record_with_tracker(spark, tracker, _record(settings, table))
            result.scd2, result.history = keyed_report(spark, table, settings)
        else:
            result.target = compare_target_with_tracker(spark, tracker, target_path)
    return result


def _record(settings: LoaderSettings, table: TableSettings) -> ChangeRecord:
    name = table.table_name
    return ChangeRecord(changes_location(settings.target_root, name), settings.table_path(name), name)


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
    """Per table, under its lock (a stale one is taken over): resolve orphaned ``processing`` records exactly as
    a run's recovery does, and adopt rows no run would account for (``adopt_untracked``). What needs a person
    (files failed beyond retries, a missing tracker, a table that disagrees with its tracker) is listed."""
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
            if tracker.exists():
                recovered = recover_interrupted(tracker, writer_for(table, settings), spark_provider)
                if recovered.completed:
                    report.applied.append(f"Fixed {len(recovered.completed)} orphaned processing records of "
                                          f"{name}: their batch had committed, marked completed")
                if recovered.failed:
                    report.applied.append(f"Fixed {len(recovered.failed)} orphaned processing records of {name}: "
                                          "their batch had not committed, marked failed for retry")
                adopted = adopt_untracked(settings, table, tracker, spark_provider)
                if adopted:
                    report.applied.append(
                        f"Recorded the rows of {len(adopted)} files of {name} that the table held but the tracker "
                        f"did not count as loaded, and that no run would reload (e.g. {adopted[0]})")
        except TrackerError as error:
            report.failed.append(f"{name}: {error}")
        finally:
            lease.release()
        remaining = check_table(settings, table, spark_provider, run_ended)
        for issue in remaining.table_issues() + ([remaining.state_error] if remaining.state_error else []):
            report.needs_operator.append(f"{name}: {issue}")
    return report


ADOPTED_MESSAGE = ("recorded by fix-inconsistencies: the table held rows of this file that the tracker did not "
                   "know (loaded before the tracker was reset or lost)")


def adopt_untracked(
    settings: LoaderSettings, table: TableSettings, tracker: FileTracker, spark_provider: Callable[[], SparkSession]
) -> list[str]:
    """Files whose rows the table holds (for scd2: whose change rows the record holds) although the tracker does
    not count them as loaded, and that no run will reload: files no longer in the source (typically loaded
    before ``reset-state`` and archived since), and files the tracker holds as failed or skipped. Each gets the
    rows and batch the table holds recorded (a file unknown to the tracker becomes ``completed``; a failed or
    skipped one keeps its status), which makes the tracker describe the table again. Pending files and files
    still in the source but unknown to the tracker are left alone: the next run reloads them, replacing their
    rows. Call under the table's lock. Returns the paths."""
    from pyspark.sql import functions as F

    name = table.table_name
    if table.keeps_changes:
        record = _record(settings, table)
        if not record.exists():
            return []
        frame = ChangeRecord.change_rows(record.committed(spark_provider()))
    else:
        if not target_exists(settings.table_path(name)):
            return []
        frame = spark_provider().read.format("delta").load(settings.table_path(name))
    found = (frame.groupBy(F.col(SOURCE_FILE_COLUMN).alias("file_path"))
             .agg(F.count(F.lit(1)).cast("long").alias("rows"), F.max(BATCH_ID_COLUMN).alias("batch_id"))
             .toArrow())
    known = files_with_rows(tracker)["file_path"]
    settled = tracker.read(columns=["file_path"], statuses=[FileStatus.FAILED, FileStatus.SKIPPED])["file_path"]
    present = list_source_files(table.source_path)["file_path"]
    orphans = found.filter(pc.and_(
        pc.invert(pc.is_in(found["file_path"], known)),
        pc.or_(pc.invert(pc.is_in(found["file_path"], present)), pc.is_in(found["file_path"], settled))))
    if orphans.num_rows == 0:
        return []
    adopted: dict[str, tuple[int, str | None, int | None]] = {}
    target = open_target(settings.table_path(name))
    latest = target.version() if target is not None else None
    versions: dict[str | None, int | None] = {}
    for row in orphans.to_pylist():
        batch_id = row["batch_id"]
        if batch_id not in versions:  # the batch's commit, or (too far back to look up) the version now
            commit = batch_commit(settings.table_path(name), batch_id) if batch_id else None
            versions[batch_id] = int(commit["version"]) if commit else latest
        adopted[row["file_path"]] = (int(row["rows"]), batch_id, versions[batch_id])
    tracker.adopt(adopted, ADOPTED_MESSAGE)
    tracker.events.record([{"file_path": p, "event": "adopted", "detail": ADOPTED_MESSAGE,
                            "actor": "fix-inconsistencies"} for p in adopted])
    return sorted(adopted)


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
    allowed = sources_of(action)
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
            if action == "skip":  # the skip covers the version in the source now, like a requeue's reload
                message = f"skipped by {actor}: {reason}"
                tracker.skip({p: message for p in result.changed}, seen=_stat_files(result.changed))
            else:
                message = (f"{action} requested by {actor}" + (f": {reason}" if reason else "")
                           + ("; the reload replaces the rows the file has" if action == "reprocess" else ""))
                tracker.requeue(result.changed, action, message, _stat_files(result.changed))
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
        filesystem, fs_path = resolve(path)
        try:
            info = filesystem.get_file_info(fs_path)
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
    """Forget every file of the table while holding its lock: the tracker is emptied (or, when it is missing or
    damaged, made anew).

    The target table (and an scd2 table's change record) is kept. The tracker records the target's txn version
    as its baseline, so every file it has not completed itself is written with replace semantics: the reload of
    a file replaces the rows it has (append), and an scd2 reload finds its change rows in the record and adds
    nothing, however many batches the reload takes and whatever kills it. Returns (files forgotten, target
    kept)."""
    lock = _locks(settings).for_table(table_name)
    lease = lock.acquire(None, wait_seconds=0, heartbeat=False)
    try:
        tracker = _trackers(settings).for_table(table_name)
        baseline = target_txn_version(settings.table_path(table_name), table_name)
        try:
            readable = tracker.exists() and tracker.read(columns=["file_path"]) is not None
        except TrackerError:  # damaged
            readable = False
        if readable:
            forgotten = tracker.reset(baseline)
        else:  # missing or damaged: a new one (a crash in between leaves it missing: run reset-state again)
            forgotten = 0
            if tracker.exists():
                filesystem, fs_path = resolve(tracker.path)
                filesystem.delete_dir(fs_path)
            tracker.create(baseline_txn=baseline)
    finally:
        lease.release()
    return forgotten, target_exists(settings.table_path(table_name))
