"""Python API: run the loader through Dagster from a script or a test, and read its state.

``run_pipeline(settings)`` finds, per table, the partitions that have files to load, and executes the table's
load job over each contiguous range of them (one run per range, all in this process, so one Spark session serves
them all). Runs are recorded in the given Dagster instance (``DAGSTER_HOME``), so they show in the UI. A table
whose batch was capped by ``max_files_per_run`` is run again until nothing eligible is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from loader_assets.core.errors import LockHeldError
from loader_assets.core.states import FileStatus
from loader_assets.definitions import build_definitions, load_job_name
from loader_assets.materialization import FAILED_FILES_KEY
from loader_assets.planning import eligible_mask, pending_work
from loader_assets.resources import spark as spark_resource
from loader_assets.resources.lock import (
    DeltaLockResource,
    RunEnded,
    TableLock,
    holder_is_live,
    lock_stale_reason,
    lease_seconds_of,
    run_ended_checker,
    table_lock,
)
from loader_assets.resources.tracker import DeltaTrackerResource, FileTracker, table_tracker
from loader_assets.sensors import range_tags
from loader_assets.settings import LoaderSettings

logger = logging.getLogger(__name__)

MAX_ROUNDS_PER_TABLE = 10_000


@dataclass
class TableRunSummary:
    table_name: str
    files_discovered: int = 0
    files_processed: int = 0
    files_failed: int = 0
    rows_loaded: int = 0
    run_ids: list[str] = field(default_factory=list)
    failed_files: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    status_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What one ``run`` did, with the seed guide's field names."""

    total_files_discovered: int = 0
    total_files_processed: int = 0
    total_files_failed: int = 0
    total_rows_loaded: int = 0
    spark_session_started: bool = False
    tables: dict[str, TableRunSummary] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.total_files_failed == 0 and not any(t.errors for t in self.tables.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "success": self.success}


def _outcome(tracker: FileTracker, run_ids: list[str]) -> tuple[int, int, int, dict[str, str]]:
    """Files this invocation's runs completed and failed, and the rows they loaded (read from the tracker)."""
    if not run_ids:  # no run: nothing to read
        return 0, 0, 0, {}
    rows = tracker.read(columns=["file_path", "status", "run_id", "row_count", "error_message"])
    mine = rows.filter(pc.is_in(rows["run_id"], pc.cast(run_ids, "string")))
    completed = mine.filter(pc.equal(mine["status"], FileStatus.COMPLETED.value))
    failed = mine.filter(pc.equal(mine["status"], FileStatus.FAILED.value))
    failures = dict(zip(failed["file_path"].to_pylist(), failed["error_message"].to_pylist(), strict=True))
    rows_loaded = int(pc.sum(completed["row_count"]).as_py() or 0)
    return completed.num_rows, failed.num_rows, rows_loaded, failures


def _untried_work(tracker: FileTracker, run_ids: list[str], retry_attempts: int) -> int:
    """Files a run may load now (pending, or failed and due for a retry) that none of this invocation's runs has
    claimed: files left by ``max_files_per_run``, and files of an interrupted batch that recovery failed for
    retry in this invocation (model soak seed 1084: a killed run's file waited for the next invocation when a
    failing file took the only slot of the first batch). A file that failed in this invocation's own runs is
    not counted, so it waits for the next invocation instead of a tight loop."""
    rows = tracker.read(statuses=[FileStatus.PENDING, FileStatus.FAILED])
    if rows.num_rows == 0:
        return 0
    rows = rows.filter(eligible_mask(rows, retry_attempts, datetime.now(UTC)))
    tried = pc.is_in(rows["run_id"], pa.array(run_ids, pa.string()))
    return rows.num_rows - int(pc.sum(pc.fill_null(tried, False)).as_py() or 0)


def _release_stale_lock(lock: TableLock, run_ended: RunEnded) -> None:
    """A holder that died after completing its batch leaves a stale lock and no work behind, so no run would
    ever take it over; take it over (conditional commit) and free it, so the pipeline reads as consistent."""
    state = lock.read()
    if lock_stale_reason(state, run_ended) is None or state is None:
        return
    try:
        lock.acquire(None, wait_seconds=0, heartbeat=False, run_ended=run_ended).release()
        logger.warning("table %s: released a stale lock (%s)", lock.table_name, state.describe())
    except LockHeldError:
        pass  # somebody else took it over first: it is theirs now


def _step_failure_message(error: Any) -> str:  # noqa: ANN401 - dagster SerializableErrorInfo
    """The innermost error of a step failure: the loader's own message rather than Dagster's wrapper."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


def _files_failed(failure: Any) -> bool:  # noqa: ANN401 - dagster StepFailureData
    """Whether a step failed only because files failed (``on_failed_file: fail_partition``): those files are in
    the tracker and the summary, the rest of the run was committed, and the next round goes on."""
    user = getattr(failure, "user_failure_data", None)
    return user is not None and FAILED_FILES_KEY in (user.metadata or {})


def run_pipeline(
    settings: LoaderSettings,
    tables: list[str] | None = None,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "INFO",
    run_checks: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RunSummary:
    """Load every table (or the named ones) until no eligible file is left. Returns what was done. With
    ``run_checks`` false the asset checks do not run after each load (``validate_consistency`` runs the same
    checks over whole tables when wanted). ``progress`` gets one line per run as it ends (table, partitions,
    files loaded and failed, rows, seconds): the CLI prints them on a terminal."""
    built: list[dg.Definitions] = []  # built when a run is needed: a rerun that finds nothing new skips it

    def load_job(name: str) -> dg.JobDefinition:
        if not built:
            built.append(build_definitions(settings, load_checks=run_checks))
        return built[0].resolve_job_def(load_job_name(name))

    def tracker_of(name: str) -> FileTracker:
        return table_tracker(settings.checkpoint_path, settings.state_storage, name)

    def lock_of(name: str) -> TableLock:
        return table_lock(settings.checkpoint_path, settings.state_storage, name, lease_seconds_of(settings))

    selected = [settings.table(name) for name in tables] if tables else list(settings.tables)
    own_instance = instance is None
    instance = instance or dg.DagsterInstance.get()
    started_before = spark_resource.sessions_started()
    summary = RunSummary()
    run_ended = run_ended_checker(instance)
    try:
        for table in selected:
            name = table.table_name
            result = TableRunSummary(table_name=name)
            _release_stale_lock(lock_of(name), run_ended)
            last_digest = None
            for round_number in range(MAX_ROUNDS_PER_TABLE):
                live = holder_is_live(lock_of(name).read(), run_ended)
                work = pending_work(table, tracker_of(name), settings.retry_attempts, live)
                if round_number == 0:
                    result.files_discovered = work.discovered
                # Later rounds only drain files no run of this invocation has claimed (left by
                # max_files_per_run, or failed for retry by recovery of an interrupted batch); a file that failed
                # in this invocation, or went back to pending because it was still being written, waits for the
                # next invocation (or sensor tick) instead of a tight loop here.
                fresh = work.count("new") + (
                    _untried_work(tracker_of(name), result.run_ids, settings.retry_attempts)
                    if round_number
                    else work.count("pending", "changed")
                )
                if not work.has_work or work.digest == last_digest or (round_number and not fresh):
                    break
                last_digest = work.digest
                for start, end in work.ranges:
                    started = time.monotonic()
                    tags = range_tags(start, end) if start != end else {}
                    outcome = load_job(name).execute_in_process(
                        instance=instance,
                        partition_key=start if start == end else None,
                        tags=tags,
                        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                        raise_on_error=False,
                    )
                    result.run_ids.append(outcome.run_id)
                    if progress is not None:
                        progress(_progress_line(name, start, end, outcome, time.monotonic() - started))
                    if not outcome.success:
                        for event in outcome.all_events:
                            if event.is_step_failure and event.step_failure_data and not _files_failed(
                                    event.step_failure_data):
                                result.errors.append(_step_failure_message(event.step_failure_data.error))
                if result.errors:
                    break
            processed, failed, rows_loaded, failures = _outcome(tracker_of(name), result.run_ids)
            result.files_processed, result.files_failed, result.rows_loaded = processed, failed, rows_loaded
            result.failed_files = failures
            result.status_counts = tracker_of(name).status_counts()
            summary.tables[name] = result
            summary.total_files_discovered += result.files_discovered
            summary.total_files_processed += processed
            summary.total_files_failed += failed
            summary.total_rows_loaded += rows_loaded
    finally:
        if own_instance:
            instance.dispose()
    summary.spark_session_started = spark_resource.sessions_started() > started_before
    return summary


def _progress_line(name: str, start: str, end: str, outcome: dg.ExecuteInProcessResult, seconds: float) -> str:
    """One run's numbers from its materialisation's run_* metadata."""
    events = outcome.get_asset_materialization_events()
    failures = [e.step_failure_data.user_failure_data for e in outcome.all_events
                if e.is_step_failure and e.step_failure_data and _files_failed(e.step_failure_data)]
    metadata = events[0].materialization.metadata if events else (failures[0].metadata if failures else {})

    def value(key: str) -> Any:
        return getattr(metadata.get(key), "value", 0)

    window = start if start == end else f"{start}..{end}"
    state = "" if outcome.success else ", run FAILED"
    return (f"{name} {window}: {value('run_files_loaded')} files loaded, {value('run_num_rows')} rows, "
            f"{value('run_files_failed')} failed{state} ({seconds:.1f} s)")


@dataclass
class TableStatus:
    table_name: str
    status_counts: dict[str, int]
    lock: dict[str, Any] | None
    lock_stale_reason: str | None


def pipeline_status(settings: LoaderSettings) -> list[TableStatus]:
    """Per table: file counts by status and the lock holder (if any). Reads only; no Spark."""
    trackers = DeltaTrackerResource.from_settings(settings)
    locks = DeltaLockResource.from_settings(settings)
    out = []
    for table in settings.tables:
        state = locks.for_table(table.table_name).read()
        held = state is not None and state.held
        out.append(
            TableStatus(
                table_name=table.table_name,
                status_counts=trackers.for_table(table.table_name).status_counts(),
                lock=state.to_json() if held and state else None,
                lock_stale_reason=lock_stale_reason(state, None),
            )
        )
    return out
