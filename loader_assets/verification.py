"""What a table check may conclude about the whole table without reading it (docs/ARCHITECTURE.md, "Checks
without Spark when nothing changed").

The table checks that read data (``target_matches_tracker``, the history checks) are a statement about Delta
versions: "the tracker at version v, the target at t (and the change record at c) are consistent". A passing
whole-table evaluation records those versions as ``verified_state``, and only when they were the same before
and after its comparison, so what it read is exactly that state. Two results follow without Spark:

- **unchanged**: the versions now are the recorded ones, so the result is the same.
- **carried forward**: a load run's checks verify what the run wrote (its files; the keys of its batches).
  The whole table is consistent at the run's state S1 when it was at a verified state S0 and every change
  from S0 to S1 is something the run verified:

  - every target commit after S0 (and every change-record commit) names one of the run's batches in its
    userMetadata: a batch's commit writes and replaces rows of its own files and keys only;
  - for ``target_matches_tracker``, every tracker row that differs between S0 and S1 in the columns the check
    reads (``CHECKED_TRACKER_COLUMNS``) is a file of the run.

  S0 is the latest recorded pass, or the empty state (no tracker rows, no target, no record: consistent by
  definition) when there is none. Anything else between S0 and S1 (an operator command, a recovery of another
  run's batch, a manual write to the table, files registered and left pending, a log version that is gone)
  refuses the carry with the reason, and the next whole-table evaluation reads the table.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow as pa

from loader_assets.changes import ChangeRecord
from loader_assets.resources.tracker import FileTracker
from loader_assets.target import open_target

# the tracker columns the target comparison reads (``checks.files_with_rows``)
CHECKED_TRACKER_COLUMNS = ["file_path", "row_count", "status", "target_version", "batch_id"]
# how many of a check's latest passing evaluations are searched for a recorded state
HISTORY_DEPTH = 20


@dataclass(frozen=True)
class VerifiedState:
    """Delta versions of the tables a check reads (-1: the table does not exist)."""

    tracker: int
    target: int
    changes: int | None = None

    def __str__(self) -> str:
        text = f"tracker@{self.tracker} target@{self.target}"
        return text + (f" changes@{self.changes}" if self.changes is not None else "")

    @classmethod
    def parse(cls, text: str) -> "VerifiedState | None":
        try:
            parts = dict(part.split("@", 1) for part in text.split())
            changes = parts.get("changes")
            return cls(int(parts["tracker"]), int(parts["target"]), int(changes) if changes is not None else None)
        except (KeyError, ValueError, AttributeError):
            return None

    def empty(self) -> "VerifiedState":
        """The state before anything existed: consistent by definition."""
        return VerifiedState(-1, -1, -1 if self.changes is not None else None)


def current_state(tracker: FileTracker, target_path: str, record: ChangeRecord | None) -> VerifiedState:
    def version(path: str) -> int:
        table = open_target(path)
        return -1 if table is None else table.version()

    return VerifiedState(tracker.version(), version(target_path), version(record.path) if record else None)


def _evaluations(instance: dg.DagsterInstance, asset: str, check_name: str, limit: int,
                 passed_only: bool) -> Iterator[tuple[str, bool, VerifiedState | None]]:
    """(run id, passed, recorded state) of the latest evaluations of a check, newest first."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    statuses = {Status.SUCCEEDED} if passed_only else {Status.SUCCEEDED, Status.FAILED}
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(asset), check_name), limit=limit, status=statuses)
    for record in history:
        if record.event is None or record.event.dagster_event is None:
            continue
        evaluation = record.event.dagster_event.event_specific_data
        recorded = getattr((getattr(evaluation, "metadata", None) or {}).get("verified_state"), "value", None)
        yield (record.run_id, bool(getattr(evaluation, "passed", False)),
               VerifiedState.parse(recorded) if isinstance(recorded, str) else None)


def unchanged_since(instance: dg.DagsterInstance, asset: str, check_name: str, now: VerifiedState) -> str | None:
    """The run id of the latest evaluation of ``check_name`` when it was a pass recorded at ``now``."""
    for run_id, passed, state in _evaluations(instance, asset, check_name, 1, passed_only=False):
        return run_id if passed and state == now else None
    return None


def latest_pass(instance: dg.DagsterInstance, asset: str, check_name: str) -> tuple[str, VerifiedState] | None:
    """The run id and recorded state of the latest passing evaluation of ``check_name`` that recorded one."""
    for run_id, _, state in _evaluations(instance, asset, check_name, HISTORY_DEPTH, passed_only=True):
        if state is not None:
            return run_id, state
    return None


def foreign_commits(path: str, after: int, upto: int, batches: set[str]) -> str | None:
    """Why the commits ``after`` < version <= ``upto`` of a Delta table are not all batch commits of
    ``batches`` (None when they are)."""
    if upto <= after:
        return None if upto == after else f"{path} went back from version {after} to {upto}"
    table = open_target(path)
    if table is None:
        return f"{path} is gone"
    entries = {int(entry["version"]): entry for entry in table.history(upto - after) if "version" in entry}
    for version in range(after + 1, upto + 1):
        entry = entries.get(version)
        if entry is None:
            return f"version {version} of {path} is not in its log any more"
        try:
            batch = json.loads(entry.get("userMetadata") or "{}").get("batch_id")
        except (ValueError, AttributeError):
            batch = None
        if batch not in batches:
            return f"version {version} of {path} ({entry.get('operation')}) is not a commit of this run's batches"
    return None


def foreign_tracker_changes(tracker: FileTracker, after: int, files: set[str]) -> str | None:
    """Why the tracker rows that differ between version ``after`` and now are not all rows of ``files``."""
    def others(rows: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        kept = rows.filter(pc.invert(pc.is_in(rows["file_path"], pa.array(sorted(files), pa.string()))))
        return kept.sort_by([(name, "ascending") for name in CHECKED_TRACKER_COLUMNS])

    try:
        before = others(tracker.read_as_of(after, CHECKED_TRACKER_COLUMNS))
    except Exception as error:  # noqa: BLE001 - an old version that cannot be read only refuses the carry
        return f"the tracker's version {after} cannot be read ({str(error).splitlines()[0][:200]})"
    now = others(tracker.read(columns=CHECKED_TRACKER_COLUMNS))
    if not before.equals(now):
        return "tracker rows of files this run did not load changed"
    return None


def carry_forward(
    instance: dg.DagsterInstance,
    asset: str,
    check_name: str,
    now: VerifiedState,
    tracker: FileTracker,
    target_path: str,
    record: ChangeRecord | None,
    batches: set[str],
    files: set[str] | None,
) -> tuple[str | None, str]:
    """Whether the run's scoped pass (of ``batches``; for ``target_matches_tracker``, of ``files``) extends a
    verified state to ``now``: (the run that verified the base, or "" for the empty state; the reason when not).
    Call it only after the scoped evaluation passed, with ``now`` read before and after it."""
    base = latest_pass(instance, asset, check_name)
    run_id, start = base if base is not None else ("", now.empty())
    reason = foreign_commits(target_path, start.target, now.target, batches)
    if not reason and record is not None:
        reason = (foreign_commits(record.path, start.changes, now.changes, batches)
                  if start.changes is not None and now.changes is not None
                  else "the verified state has no change-record version")
    if not reason and files is not None:
        reason = foreign_tracker_changes(tracker, start.tracker, files)
    return (None, reason) if reason else (run_id, "")


def carried_metadata(now: VerifiedState, base_run: str) -> dict[str, Any]:
    return {"verified_state": str(now), "whole_table": f"carried forward from run {base_run[:8]}" if base_run
            else "carried forward from the empty table"}
