"""Per-table run-exclusion lock: a lease in a one-row Delta table, taken by a conditional commit.

Layout: ``<checkpoint_path>/locks/<table_name>``, one table per lock so unrelated lock traffic never conflicts.
The row carries the seed guide's lock fields (``pid``, ``hostname``, ``acquired_at``, ``timeout_at``,
``lock_name``) plus ``owner_id``, ``run_id`` and ``heartbeat_at``. ``owner_id`` is null when the lock is free.

How acquisition stays safe (docs/ARCHITECTURE.md, "The lock"): the process opens the table once, reads the row
from that snapshot, decides "free or stale", and overwrites the row through the *same* ``DeltaTable`` object with
``max_commit_retries=0``. Any commit made by someone else after that snapshot makes ours fail, so of several
racers exactly one wins; the losers re-read and see the winner.

Stale holders: the lease expired (``timeout_at`` passed: the holder stopped renewing it), or the holder ran on
this host and its process is gone (pid not alive, or the pid was reused by a process that started later).
Taking over a stale lease is the same conditional commit, so two processes cannot both take it over.

The holder renews ``timeout_at`` from a heartbeat thread while it works. If a renewal finds that somebody else
owns the row, the lease is marked lost and :meth:`Lease.ensure_held` raises before the next write to the target;
a renewal whose write fails is not a renewal (it says so, and the next beat tries again), and ``ensure_held``
also refuses once the lease's own ``timeout_at`` has passed, since from then on another process may take over.

Whether a holder still counts is decided in one place, :func:`lock_stale_reason` (used by runs, checks, the
sensor and the operator commands alike).

Crash windows: a holder killed while holding leaves the row owned by a dead pid: the next contender on the same
host takes it over at once, one on another host after ``timeout_at``. A holder killed during its own
acquisition commit either committed (it holds a lease of a dead pid: same case) or did not (the lock is free).
"""


import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from pydantic import Field

from loader_assets.core.discovery import TIMESTAMP
from loader_assets.core.errors import LockHeldError, LockLostError, TrackerError
from loader_assets.resources._state_tables import (
    STATE_TABLE_PROPERTIES,
    LocalConfig,
    StorageConfig,
    open_state_table,
    read_latest,
    read_state_table,
    storage_options,
)
from loader_assets.settings import LoaderSettings

logger = logging.getLogger(__name__)

LOCKS_DIR = "locks"

LOCK_SCHEMA = pa.schema(
    [
        pa.field("lock_name", pa.string(), nullable=False),
        pa.field("owner_id", pa.string()),
        pa.field("pid", pa.int64()),
        pa.field("process_start", pa.string()),
        pa.field("hostname", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("acquired_at", TIMESTAMP),
        pa.field("timeout_at", TIMESTAMP),
        pa.field("heartbeat_at", TIMESTAMP),
    ]
)


def _now() -> datetime:
    return datetime.now(UTC)


def process_start_token(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not mistaken for the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime) counted after the ")" that closes the command name
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, start_token: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start_token is not None:
        current = process_start_token(pid)
        if current is not None and current != start_token:
            return False
    # a zombie (killed, not yet reaped by its parent) holds its pid but is dead
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state not in ("Z", "X")


@dataclass(frozen=True)
class LockState:
    """What the lock row says. ``owner_id`` is None when the lock is free."""

    lock_name: str
    owner_id: str | None
    pid: int | None
    process_start: str | None
    hostname: str | None
    run_id: str | None
    acquired_at: datetime | None
    timeout_at: datetime | None
    heartbeat_at: datetime | None

    @property
    def held(self) -> bool:
        return self.owner_id is not None

    def _stale_reason(self, now: datetime | None = None) -> str | None:
        """Why the holder no longer counts by the row alone (expired, dead pid here); see lock_stale_reason."""
        if not self.held:
            return None
        now = now or _now()
        if self.timeout_at is not None and self.timeout_at <= now:
            return f"lease expired at {self.timeout_at.isoformat()}"
        if self.hostname == socket.gethostname() and self.pid is not None:
            if not pid_alive(self.pid, self.process_start):
                return f"holder process {self.pid} on {self.hostname} is gone"
        return None

    def describe(self) -> str:
        if not self.held:
            return "free"
        since = self.acquired_at.isoformat() if self.acquired_at else "?"
        until = self.timeout_at.isoformat() if self.timeout_at else "?"
        return f"PID {self.pid} on {self.hostname} (run {self.run_id}) since {since}, lease until {until}"

    def to_json(self) -> dict[str, Any]:
        """The seed guide's lock JSON, plus the loader's extra fields."""
        return {
            "lock_name": self.lock_name,
            "pid": self.pid,
            "hostname": self.hostname,
            "acquired_at": self.acquired_at.isoformat() if self.acquired_at else None,
            "timeout_at": self.timeout_at.isoformat() if self.timeout_at else None,
            "owner_id": self.owner_id,
            "run_id": self.run_id,
            "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None,
        }


def _state_from_row(row: dict[str, Any]) -> LockState:
    return LockState(**{name: row.get(name) for name in LOCK_SCHEMA.names})


def _row(state: LockState) -> pa.Table:
    return pa.Table.from_pylist([state.__dict__], schema=LOCK_SCHEMA)


@dataclass
class Lease:
    """A held lock. Renewed by a heartbeat thread until released."""

    lock: "TableLock"
    state: LockState
    lost_reason: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def owner_id(self) -> str:
        assert self.state.owner_id is not None
        return self.state.owner_id

    def ensure_held(self) -> None:
        """Raise LockLostError if the lease was taken over, or ran out without a renewal (from then on another
        process may take it over at any moment); call before writing to the target."""
        if self.lost_reason:
            raise LockLostError(self.lock.table_name, self.lost_reason)
        if self.state.timeout_at is not None and self.state.timeout_at <= _now():
            self.lost_reason = f"the lease ran out at {self.state.timeout_at.isoformat()} without a renewal"
            raise LockLostError(self.lock.table_name, self.lost_reason)
        current = self.lock.read()
        if current is None or current.owner_id != self.owner_id:
            holder = current.describe() if current else "nobody (lock table missing)"
            self.lost_reason = f"the lock is now held by {holder}"
            raise LockLostError(self.lock.table_name, self.lost_reason)

    def start_heartbeat(self, interval_seconds: float) -> None:
        def beat() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    if not self.lock.renew(self) and self.lost_reason:
                        return  # somebody else owns the lock now; a failed write alone is retried next beat
                except Exception:
                    logger.warning("lock %s: heartbeat failed", self.lock.table_name, exc_info=True)

        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat-{self.lock.table_name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.lock.release(self)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class TableLock:
    """The lock of one target table."""

    def __init__(self, path: str, table_name: str, lease_seconds: float, options: dict[str, str] | None = None) -> None:
        self.path = path
        self.table_name = table_name
        self.lock_name = f"loader_assets/{table_name}"
        self.lease_seconds = lease_seconds
        self.options = dict(options or {})

    def _damaged_hint(self) -> str:
        return (f"the lock of table {self.table_name!r} is damaged: make sure no run is active, then remove "
                f"{self.path} (it is recreated free)")

    def _open(self) -> DeltaTable | None:
        """A fresh handle, for a caller that commits through it."""
        return open_state_table(self.path, self._damaged_hint(), self.options)

    def _free_state(self) -> LockState:
        return LockState(self.lock_name, None, None, None, None, None, None, None, None)

    def _open_or_create(self) -> DeltaTable:
        table = self._open()
        if table is not None:
            return table
        try:
            write_deltalake(self.path, _row(self._free_state()), mode="error",
                            configuration=STATE_TABLE_PROPERTIES, storage_options=self.options or None)
        except (CommitFailedError, DeltaError) as error:
            logger.debug("lock %s: created concurrently (%s)", self.table_name, error)
        table = self._open()
        if table is None:
            raise TrackerError(f"could not create the lock table of {self.table_name!r} at {self.path}")
        return table

    @staticmethod
    def _state_of(table: DeltaTable) -> "LockState | None":
        rows = read_state_table(table).to_pylist()
        return _state_from_row(rows[0]) if rows else None

    def read(self) -> "LockState | None":
        """The current lock row, or None when the lock table does not exist yet (free)."""
        return read_latest(self.path, self._damaged_hint(), self.options, self._state_of)

    def _conditional_write(self, table: DeltaTable, state: LockState, operation: str) -> bool:
        """Overwrite the row from ``table``'s snapshot; False when another commit came first."""
        try:
            write_deltalake(
                table,
                _row(state),
                mode="overwrite",
                commit_properties=CommitProperties(
                    max_commit_retries=0,
                    custom_metadata={"loader_assets.operation": operation, "loader_assets.owner": state.owner_id or ""},
                ),
            )
            return True
        except (CommitFailedError, DeltaError) as error:
            logger.debug("lock %s: %s lost a race (%s)", self.table_name, operation, error)
            return False

    def try_acquire(self, run_id: str | None, run_ended: "RunEnded | None" = None) -> "Lease | LockState":
        """One attempt. Returns the Lease, or the state of the live holder that keeps us out."""
        table = self._open_or_create()
        current = self._state_of(table) or self._free_state()
        reason = lock_stale_reason(current, run_ended)
        if current.held and reason is None:
            return current
        if current.held:
            logger.warning("lock %s: taking over a stale lease (%s): %s", self.table_name, reason, current.describe())
        now = _now()
        pid = os.getpid()
        mine = LockState(
            lock_name=self.lock_name,
            owner_id=uuid.uuid4().hex,
            pid=pid,
            process_start=process_start_token(pid),
            hostname=socket.gethostname(),
            run_id=run_id,
            acquired_at=now,
            timeout_at=now + timedelta(seconds=self.lease_seconds),
            heartbeat_at=now,
        )
        if self._conditional_write(table, mine, "acquire" if not current.held else "takeover"):
            return Lease(self, mine)
        return self.read() or self._free_state()

    def acquire(
        self, run_id: str | None, wait_seconds: float, heartbeat: bool = True, run_ended: "RunEnded | None" = None
    ) -> Lease:
        """Acquire, waiting up to ``wait_seconds`` for a live holder. Raises LockHeldError after that.
        ``run_ended`` (a Dagster run id -> finished?) makes a holder whose Dagster run has ended stale too."""
        started = time.monotonic()
        delay = 0.05
        while True:
            outcome = self.try_acquire(run_id, run_ended)
            if isinstance(outcome, Lease):
                if heartbeat:
                    outcome.start_heartbeat(max(1.0, min(60.0, self.lease_seconds / 4)))
                return outcome
            waited = time.monotonic() - started
            if waited >= wait_seconds:
                raise LockHeldError(self.table_name, outcome.describe(), waited)
            time.sleep(min(delay, max(0.0, wait_seconds - waited)))
            delay = min(delay * 2, 2.0)

    def renew(self, lease: Lease) -> bool:
        """Push the lease's timeout forward. Returns True only when the renewal was written; False when it could
        not be (another commit kept winning: the lease keeps its old timeout, and the next beat tries again) or
        when we no longer own the lock (the lease is then marked lost)."""
        for _ in range(5):
            table = self._open()
            current = self._state_of(table) if table is not None else None
            if table is None or current is None or current.owner_id != lease.owner_id:
                lease.lost_reason = f"renewal found the lock held by {current.describe() if current else 'nobody'}"
                logger.error("lock %s: %s", self.table_name, lease.lost_reason)
                return False
            now = _now()
            renewed = LockState(
                **{**current.__dict__, "timeout_at": now + timedelta(seconds=self.lease_seconds), "heartbeat_at": now}
            )
            if self._conditional_write(table, renewed, "renew"):
                lease.state = renewed
                return True
        logger.warning("lock %s: renewal not written (kept conflicting); the lease runs until %s",
                       self.table_name, lease.state.timeout_at)
        return False

    def release(self, lease: Lease) -> bool:
        """Free the lock if we still own it. Returns False when somebody else owns it now."""
        for _ in range(10):
            table = self._open()
            current = self._state_of(table) if table is not None else None
            if table is None or current is None or current.owner_id != lease.owner_id:
                logger.warning("lock %s: not released, it is no longer ours", self.table_name)
                return False
            if self._conditional_write(table, self._free_state(), "release"):
                return True
        raise TrackerError(f"lock of table {self.table_name!r}: release kept conflicting")

    def force_release(self) -> "LockState | None":
        """Free the lock whoever holds it (operator action). Returns the state that was removed."""
        for _ in range(10):
            table = self._open()
            if table is None:
                return None
            current = self._state_of(table)
            if current is None or not current.held:
                return current
            if self._conditional_write(table, self._free_state(), "force_release"):
                return current
        raise TrackerError(f"lock of table {self.table_name!r}: force release kept conflicting")


RunEnded = Callable[[str], bool]


def lock_stale_reason(state: "LockState | None", run_ended: RunEnded | None) -> str | None:
    """Why a held lock no longer counts: its lease expired, its holder ran on this host and its process is gone
    (a reused pid does not count as alive), or (with ``run_ended``) its Dagster run has finished. None while
    the holder counts, or when the lock is free. The one liveness rule of runs, checks, sensor and operators."""
    if state is None or not state.held:
        return None
    reason = state._stale_reason()
    if reason is None and run_ended is not None and state.run_id and run_ended(state.run_id):
        reason = f"its Dagster run {state.run_id} has ended"
    return reason



def lease_seconds_of(settings: LoaderSettings) -> float:
    """A lock's lease: the settings' ``timeout_minutes``."""
    return settings.timeout_minutes * 60


def table_lock(checkpoint_path: str, storage: StorageConfig, table_name: str, lease_seconds: float) -> TableLock:
    """The lock of one table under ``checkpoint_path``; what ``DeltaLockResource.for_table`` returns, without
    building the Dagster resource (``tracker.table_tracker`` says why)."""
    return TableLock(f"{checkpoint_path.rstrip('/')}/{LOCKS_DIR}/{table_name}", table_name, lease_seconds,
                     storage_options(storage))


class DeltaLockResource(dg.ConfigurableResource):
    """Per-table lease locks as Delta tables under ``checkpoint_path``.

    Example::

        locks = DeltaLockResource(checkpoint_path="/data/checkpoints", lease_seconds=3600)
        with locks.for_table("transactions").acquire(run_id=None, wait_seconds=60):
            ...  # the only writer of the table and its tracker
    """

    checkpoint_path: str
    lease_seconds: float = 3600.0
    wait_seconds: float = 600.0
    storage: StorageConfig = Field(default_factory=LocalConfig, discriminator="provider")

    @classmethod
    def from_settings(cls, settings: LoaderSettings) -> "DeltaLockResource":
        return cls(checkpoint_path=settings.checkpoint_path, lease_seconds=lease_seconds_of(settings),
                   wait_seconds=settings.lock_wait_seconds, storage=settings.state_storage)

    def for_table(self, table_name: str) -> TableLock:
        return table_lock(self.checkpoint_path, self.storage, table_name, self.lease_seconds)


def holder_is_live(state: "LockState | None", run_ended: RunEnded | None) -> bool:
    """True while the lock is held by a holder that still counts (see lock_stale_reason)."""
    return state is not None and state.held and lock_stale_reason(state, run_ended) is None


def run_ended_checker(instance: dg.DagsterInstance) -> RunEnded:
    """True for a Dagster run id whose run has finished (a lock it still holds is stale)."""

    def ended(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and run.is_finished

    return ended
