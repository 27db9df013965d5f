"""One table's load in one run: the object whose lifetime is the table's lease (docs/ARCHITECTURE.md, "A batch").

    with TableLoad(context, writer) as load:    # takes the table's lease (waits for a live holder, up to a limit)
        outcome = load.run(partition_keys)       # recover -> plan -> claim -> read -> write -> complete
    # here the lease is released and what Spark cached is unpersisted, whatever happened inside

Nothing of a batch outlives the ``with`` block and nothing crosses a Dagster callback: the table asset returns
only an immutable ``LoadRequest`` and its IO manager runs the whole block (``io_managers/table.py``).

Inside the lease, one batch:

1. **Tracker**: a table loaded for the first time gets a tracker whose baseline is the target's txn version (0);
   a missing tracker while the target holds batches stops the run (restore it, or ``reset-state``).
2. **Recover** (``recovery.py``): ``processing`` rows of dead runs are resolved from the target's txn version.
3. **Plan** (``planning.py``): list, register new and changed files, choose the batch.
4. **Claim**: one tracker commit marks the batch ``processing`` with ``batch_id``, ``run_id`` and ``batch_seq =
   1 + max(tracker's last, target's txn version, the writer's floor)``, so a number is never reused and Delta
   never skips a write. Whether the batch replaces rows is decided here, per file, from the tracker alone.
5. **Read** (``reading.py``): prechecks without Spark, then one Spark read; bad files fail one by one. A small
   append batch that needs nothing of Spark is read and committed instead by the small-batch engine
   (``small_batch.py``: pyarrow and delta-rs, the same one commit with the same txn; no JVM).
6. **Write** (``writers/``): the lease is checked, then exactly one target commit carrying
   ``txnAppId = loader_assets/<table>``, ``txnVersion = batch_seq``. A write that fails as a whole without
   landing is split in two, each half a batch of its own, until the bad file stands alone.
7. **Complete**: one tracker commit with per-file row counts and the commit version.

Crash windows (SIGKILL at any instant; named points in ``core/faults.py``) and what the next holder does:
- before the claim: nothing happened; the lease of a dead pid is taken over at once on the same host, after
  ``timeout_minutes`` elsewhere.
- after the claim, before the target commit (``after_claim``, ``before_target_commit``, ``during_target_write``,
  and for scd2 ``after_change_record``): the target's txn version is below ``batch_seq``, so recovery fails the
  files as interrupted (no retry used) and the next batch loads them, replacing any rows they have; change rows
  an scd2 batch recorded are not counted and are deleted.
- after the target commit, before completion (``after_target_commit``, ``during_tracker_commit``): the txn
  version covers ``batch_seq`` and a commit names the batch, so recovery completes the files with their row
  counts. They are never loaded twice.
- after completion (``after_complete``): only the lease is left; it is taken over as stale.
A process that is alive but lost its lease (it expired: paused, partitioned) finds out in ``ensure_held`` right
before its commit and writes nothing. If it committed anyway in the instant between, its commit carries a
``batch_seq`` below the new holder's, so Delta skips it once the new holder committed; if it lands first, the
new holder's batch replaces the files' rows (they were claimed before).
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from loader_assets.batch import ClaimedBatch
from loader_assets.core import faults
from loader_assets.core.errors import BatchWriteError, TrackerError, interruption_of, root_cause
from loader_assets.core.states import FileStatus
from loader_assets.planning import VANISHED_MESSAGE, Plan, plan_batch
from loader_assets.read_tasks import split_for, split_for_write
from loader_assets.reading import (
    BATCH_ID_COLUMN,
    LOAD_TIMESTAMP_COLUMN,
    SOURCE_FILE_COLUMN,
    BatchRead,
    ExpectedFile,
    content_hash,
    precheck_file,
    read_batch,
)
from loader_assets.recovery import RecoveryReport, recover_interrupted
from loader_assets.resources.lock import Lease, RunEnded, TableLock
from loader_assets.resources.tracker import FileTracker
from loader_assets.settings import DuplicateContent, LoaderSettings, SchemaEvolution, TableSettings
from loader_assets.small_batch import commit_small_batch, plan_small_batch, table_refusal
from loader_assets.small_keyed import KeyedSmallBatch, commit_small_keyed, plan_small_keyed
from loader_assets.small_keyed import table_refusal as keyed_refusal
from loader_assets.target import batch_commit, target_exists, target_txn_version
from loader_assets.writers.base import TableWriter, replace_predicate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

WAITING_MESSAGE = (
    "the file changed since it was discovered, so it may still be being written; it was not loaded and is "
    "pending again with its new size and time, to load once it stops changing (min_file_age_seconds makes runs "
    "wait for files to settle)"
)


class Log(Protocol):
    """What the load reports through: Dagster's ``context.log``, or a ``logging.Logger``."""

    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...
    def error(self, msg: str) -> Any: ...


@dataclass(frozen=True)
class LoadRequest:
    """What a materialisation of a table asks for: load the work in these partitions (None: every partition),
    under these settings, for this Dagster run. Immutable: the asset returns it, and the IO manager runs the
    whole load (``TableLoad``) in its ``handle_output``."""

    settings: LoaderSettings
    table_name: str
    partition_keys: tuple[str, ...] | None
    run_id: str
    run_ended: RunEnded | None = None  # Dagster run id -> finished? (a lock held by a finished run is stale)

    @property
    def table(self) -> TableSettings:
        return self.settings.table(self.table_name)


@dataclass(frozen=True)
class LoadContext:
    """Everything a load needs from outside, fixed for its lifetime."""

    table: TableSettings
    settings: LoaderSettings
    run_id: str
    tracker: FileTracker
    lock: TableLock
    spark: Callable[[], SparkSession]  # lazy: the session starts only when a file needs reading
    run_ended: RunEnded | None = None
    log: Log = logger

    @property
    def target_path(self) -> str:
        return self.settings.table_path(self.table.table_name)


@dataclass
class LoadOutcome:
    """What one load did (returned by ``TableLoad.run``; the IO manager turns it into metadata)."""

    discovered: int = 0
    registered: int = 0
    deferred: int = 0
    recovered: RecoveryReport = field(default_factory=RecoveryReport)
    batch_ids: list[str] = field(default_factory=list)
    batch_seqs: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)  # completed by this load (empty files included)
    rows: dict[str, int] = field(default_factory=dict)  # per loaded file
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # duplicates skipped by content hash
    waiting: list[str] = field(default_factory=list)  # still being written: back to pending
    quarantined: dict[str, int] = field(default_factory=dict)
    replaced: bool = False  # a commit replaced rows the files had
    split: bool = False  # a batch that failed as a whole was split to isolate a bad file
    small_batches: int = 0  # batches committed with delta-rs (small_batch.py) rather than Spark
    late_rows: int = 0  # scd2: rows older than their key's newest change (re-threaded); scd1: stale rows
    expectations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # per file (reading.py)
    notes: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(self.rows.values())


def new_batch_id(batch_seq: int) -> str:
    return f"{batch_seq:08d}-{uuid.uuid4().hex[:12]}"


def expected_files(rows: pa.Table) -> list[ExpectedFile]:
    micros = pc.cast(rows["file_modified_time"], pa.int64()).to_pylist()
    return [
        ExpectedFile(path, int(size or 0), int(mtime or 0))
        for path, size, mtime in zip(rows["file_path"].to_pylist(), rows["file_size"].to_pylist(), micros, strict=True)
    ]


def missing_tracker_message(table_name: str, tracker_path: str) -> str:
    return (
        f"the tracker of table {table_name!r} is missing at {tracker_path} but the table holds loaded batches: "
        f"restore it from a backup, or run `loader-assets reset-state --table {table_name}` to track from scratch "
        "(files then load again and replace their own rows)"
    )


def next_batch_sequence(tracker: FileTracker, target_path: str, table_name: str, floor: int = 0) -> int:
    """One more than the largest of the tracker's last batch_seq, the target's recorded txn version and the
    writer's ``floor`` (another txn the batch writes under, such as the SCD2 change record's). Delta skips a
    write whose txnVersion is not above the one it recorded, so a number must never go backwards, even after
    the tracker was reset or lost."""
    return max(tracker.max_batch_seq(), target_txn_version(target_path, table_name), floor) + 1


def data_schema_of_target(spark: SparkSession, target_path: str, table: TableSettings) -> Any:
    """The target's source columns (a StructType: no audit or SCD2 columns), or None if it does not exist yet."""
    from pyspark.sql.types import StructType

    if not target_exists(target_path):
        return None
    schema = spark.read.format("delta").load(target_path).schema
    return StructType([f for f in schema.fields if f.name not in table.loader_columns()])


class TableLoad:
    """A table's load inside its lease: ``with TableLoad(context, writer) as load: load.run(keys)``.

    The lease is taken in ``__enter__`` and released in ``__exit__``; ``run`` does one batch (see the module
    docstring). Nothing it holds survives the block: cached frames are unpersisted and the lease released on
    every exit, normal or not.
    """

    def __init__(self, context: LoadContext, writer: TableWriter) -> None:
        self.context = context
        self.writer = writer
        self._lease: Lease | None = None
        self._cached: list[Any] = []
        self._in_flight: list[ClaimedBatch] = []  # claimed, not yet resolved in the tracker

    # ------------------------------------------------------------------------------------------- lifetime
    def __enter__(self) -> TableLoad:
        self._lease = self.context.lock.acquire(
            self.context.run_id, wait_seconds=self.context.settings.lock_wait_seconds,
            run_ended=self.context.run_ended)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        try:
            if error is not None and self._in_flight:
                self._resolve_after_error(error)
        finally:
            for frame in self._cached:
                try:
                    frame.unpersist()
                except Exception:  # the session may be gone; the cache goes with it
                    logger.debug("could not unpersist a cached frame", exc_info=True)
            self._cached.clear()
            lease, self._lease = self._lease, None
            if lease is not None:
                lease.release()

    @property
    def _table(self) -> TableSettings:
        return self.context.table

    @property
    def _tracker(self) -> FileTracker:
        return self.context.tracker

    @property
    def _log(self) -> Log:
        return self.context.log

    # ------------------------------------------------------------------------------------------- the batch
    def run(self, partition_keys: Sequence[str] | None) -> LoadOutcome:
        """Recover, plan, claim, read, write and complete one batch of the work in ``partition_keys``."""
        assert self._lease is not None, "run() inside `with TableLoad(...)` only"
        outcome = LoadOutcome()
        name = self._table.table_name
        faults.crash_point(faults.AFTER_LOCK)
        self._ensure_tracker()
        outcome.recovered = recover_interrupted(self._tracker, self.writer, self.context.spark)
        if not outcome.recovered.empty:
            self._log.warning(
                f"table {name}: recovered interrupted batches: {len(outcome.recovered.completed)} files were "
                f"committed (now completed), {len(outcome.recovered.failed)} were not (failed, to retry)")
        plan = plan_batch(self._tracker, self._table, list(partition_keys) if partition_keys is not None else None,
                          self.context.settings.retry_attempts, self.context.settings.max_files_per_run,
                          run_id=self.context.run_id)
        self._report_plan(plan, outcome)
        if plan.batch.num_rows == 0:
            self._log.info(f"table {name}: nothing to load in "
                           f"{'every' if partition_keys is None else len(partition_keys)} partition(s)")
            return outcome
        files = expected_files(plan.batch)
        hashes: dict[str, str] = {}
        if self._table.duplicate_content is DuplicateContent.SKIP:
            files, hashes = self._skip_duplicates(files, outcome)
            if not files:
                return outcome
        batch = self._claim(files, plan.batch, hashes)
        faults.crash_point(faults.AFTER_CLAIM)
        self._log.info(f"table {name}: batch {batch.batch_id} claimed {len(files)} files"
                       + (" (replacing rows they may have)" if batch.replace else ""))
        readable = self._precheck(batch, outcome)
        if readable and self._load_small(batch.part([f.path for f in readable], batch.batch_id, batch.batch_seq),
                                         outcome):
            readable = []
        if readable:
            session = self.context.spark()
            reference = data_schema_of_target(session, batch.target_path, self._table)

            def reader(paths: Sequence[str]) -> BatchRead:
                chosen = [f for f in readable if f.path in set(paths)]
                read = read_batch(session, self._table, chosen, reference)
                self._cached.extend(read.cached)
                return read

            read = reader([f.path for f in readable])
            for note in read.notes:
                self._log.warning(f"table {name}: {note}")
                outcome.notes.append(note)
            if read.errors:
                self._fail(batch, read.errors, outcome, read.expectations)
            if read.dataframe is not None and read.loaded_paths:
                evolve = read.evolves_schema or self._table.schema_evolution is not SchemaEvolution.FAIL
                part = batch.part(read.loaded_paths, batch.batch_id, batch.batch_seq)
                budget = [4 * max(1, len(part.files)).bit_length() + 1]
                self._attempt(part, read, evolve, reader, outcome, budget, bisecting=False)
        self._in_flight.clear()
        return outcome

    def _ensure_tracker(self) -> None:
        name = self._table.table_name
        target_txn = target_txn_version(self.context.target_path, name)
        if not self._tracker.exists():
            if target_txn > 0:
                raise TrackerError(missing_tracker_message(name, self._tracker.path))
            self._tracker.create(baseline_txn=0)
        else:
            self._tracker.ensure_baseline(target_txn)

    def _report_plan(self, plan: Plan, outcome: LoadOutcome) -> None:
        name = self._table.table_name
        outcome.discovered, outcome.registered, outcome.deferred = plan.discovered, plan.registered, plan.deferred
        outcome.failed.update(dict.fromkeys(plan.vanished, VANISHED_MESSAGE))
        if plan.registered:
            self._log.info(f"table {name}: registered {plan.registered} new files as pending")
        for change in plan.changes:
            self._log.warning(
                f"table {name}: file {change.file_path!r} changed in the source ({change.old_fingerprint} -> "
                f"{change.new_fingerprint}, size:mtime); on_file_change: {change.action}")
        for path in plan.vanished:
            self._log.warning(f"table {name}: file {path!r} is no longer in the source; marked failed")

    def _claim(self, files: list[ExpectedFile], rows: pa.Table, hashes: dict[str, str]) -> ClaimedBatch:
        """One tracker commit: the files become ``processing`` under a new batch. Whether the batch replaces
        rows comes from the tracker, per file: claimed before (it may have rows from an interrupted or
        superseded batch, or an earlier version), or the tracker's baseline is above 0 (the table held batches
        before this tracker existed, so any file it has not completed may have rows there)."""
        seq = next_batch_sequence(self._tracker, self.context.target_path, self._table.table_name,
                                  self.writer.txn_floor())
        paths = [f.path for f in files]
        chosen = rows.filter(pc.is_in(rows["file_path"], pa.array(paths, pa.string())))
        claimed_before = chosen["batch_seq"].null_count < chosen.num_rows
        baseline = self._tracker.baseline_txn() or 0
        batch = ClaimedBatch(self._table, self.context.target_path, self.context.run_id, new_batch_id(seq), seq,
                             tuple(files), replace=claimed_before or baseline > 0)
        self._tracker.claim(paths, batch.batch_id, seq, self.context.run_id, content_hashes=hashes or None)
        self._in_flight.append(batch)
        return batch

    def _skip_duplicates(self, files: list[ExpectedFile], outcome: LoadOutcome
                         ) -> tuple[list[ExpectedFile], dict[str, str]]:
        """duplicate_content=skip: hash the files; skip those whose content a loaded file (or an earlier file of
        this batch) already has, naming that file. Returns the files left and their hashes."""
        name = self._table.table_name
        hashes = {f.path: h for f in files if (h := content_hash(f.path)) is not None}
        loaded = self._tracker.read(columns=["file_path", "content_hash"], statuses=[FileStatus.COMPLETED])
        owners = {h: p for p, h in zip(loaded["file_path"].to_pylist(), loaded["content_hash"].to_pylist(),
                                      strict=True) if h}
        keep: list[ExpectedFile] = []
        skipped: dict[str, str] = {}
        for expected in files:
            digest = hashes.get(expected.path)
            owner = owners.get(digest) if digest else None
            if owner is not None and owner != expected.path:
                skipped[expected.path] = (
                    f"same content (sha256 {digest[:16]}...) as {owner!r}, which is loaded (or loads in this "
                    "batch); skipped because duplicate_content=skip")
                continue
            if digest:
                owners.setdefault(digest, expected.path)
            keep.append(expected)
        if skipped:
            self._tracker.skip(skipped, {p: hashes[p] for p in skipped})
            self._tracker.events.record([
                {"file_path": p, "event": "skipped:duplicate_content", "detail": reason, "actor": "loader"}
                for p, reason in skipped.items()])
            for path, reason in skipped.items():
                self._log.warning(f"table {name}: file {path!r} skipped: {reason}")
            outcome.skipped.update(skipped)
        return keep, {f.path: hashes[f.path] for f in keep if f.path in hashes}

    def _precheck(self, batch: ClaimedBatch, outcome: LoadOutcome) -> list[ExpectedFile]:
        """Look at each file without Spark: fail the bad ones, release those still being written, complete the
        valid empty ones. Returns the files to read."""
        name = self._table.table_name
        problems: dict[str, str] = {}
        changing: dict[str, tuple[int, datetime]] = {}
        empty: list[str] = []
        readable: list[ExpectedFile] = []
        for expected in batch.files:
            check = precheck_file(expected, self._table)
            if check.problem:
                problems[expected.path] = check.problem
            elif check.still_changing:
                assert check.now_size is not None and check.now_mtime is not None
                changing[expected.path] = (check.now_size, check.now_mtime)
            elif check.empty:
                empty.append(expected.path)
            else:
                readable.append(expected)
        if changing:
            self._tracker.release(changing, WAITING_MESSAGE)
            outcome.waiting.extend(changing)
            for path in changing:
                self._log.warning(f"table {name}: file {path!r} changed since discovery; {WAITING_MESSAGE}")
        if empty:
            self._tracker.complete(dict.fromkeys(empty, 0), batch.batch_id, None)
            outcome.loaded.extend(empty)
            outcome.rows.update(dict.fromkeys(empty, 0))
            self._log.info(f"table {name}: {len(empty)} empty files completed with 0 rows")
        if problems:
            self._fail(batch, problems, outcome)
        return readable

    def _fail(self, batch: ClaimedBatch, errors: dict[str, str], outcome: LoadOutcome,
              expectations: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._tracker.fail(errors, backoff=self.context.settings.retry_delay, expectations=expectations)
        outcome.failed.update(errors)
        outcome.expectations.update({p: r for p, r in (expectations or {}).items() if p in errors})
        for path, error in errors.items():
            self._log.error(f"table {self._table.table_name}: file {path!r} failed: {error}")

    # ------------------------------------------------------------------------------------------- writing
    def _load_small(self, part: ClaimedBatch, outcome: LoadOutcome) -> bool:
        """Commit ``part`` with a small-batch engine when it qualifies (append: ``small_batch.py``; scd2, scd1:
        ``small_keyed.py``); False when the Spark path is to load it instead (it does not qualify, or its
        delta-rs commit failed without landing)."""
        name = self._table.table_name
        settings = self.context.settings
        keyed = self._table.keeps_changes
        if (keyed_refusal if keyed else table_refusal)(self._table, settings):
            return False
        small = (plan_small_keyed(self._table, settings, part.files, part) if keyed
                 else plan_small_batch(self._table, settings, part.files, part.replace))
        if isinstance(small, str):
            self._log.info(f"table {name}: batch {part.batch_id} is loaded with Spark: {small}")
            return False
        assert self._lease is not None
        self._lease.ensure_held()
        faults.crash_point(faults.BEFORE_TARGET_COMMIT)
        counts: Mapping[str, int] | None = None
        try:
            if isinstance(small, KeyedSmallBatch):
                counts = commit_small_keyed(part, small, settings)
                committed = counts is not None
            else:
                committed = commit_small_batch(part, small)
                counts = small.rows
            if committed:
                self._log.info(f"table {name}: batch {part.batch_id} committed with delta-rs (the small-batch "
                               "engine)")
            else:  # completion below finds no commit naming the batch and fails its files, as on the Spark path
                self._log.warning(f"table {name}: batch {part.batch_id} was not written: the target already "
                                  f"recorded txn version {part.batch_seq} (a newer holder committed)")
        except Exception as error:
            if target_txn_version(part.target_path, name) < part.batch_seq:
                self._log.warning(f"table {name}: the delta-rs commit of batch {part.batch_id} failed without "
                                  f"landing ({root_cause(error)}); loading it with Spark instead")
                if keyed:  # the record may hold the batch's rows: they go before Spark records them again
                    self.writer.abandon(self.context.spark, part)
                return False
            self._log.warning(f"table {name}: the delta-rs commit raised after it landed: {root_cause(error)}")
        faults.crash_point(faults.AFTER_TARGET_COMMIT)
        if isinstance(small, KeyedSmallBatch):
            outcome.late_rows += small.late_rows
            if counts is None and target_txn_version(part.target_path, name) >= part.batch_seq:
                counts = self.writer.row_counts(self.context.spark(), part, {}, {})  # it landed, then raised
        self._complete(part, None, outcome, counts=counts)
        outcome.small_batches += 1
        return True

    def _attempt(self, part: ClaimedBatch, read: BatchRead, evolve: bool,
                 reader: Callable[[Sequence[str]], BatchRead], outcome: LoadOutcome, budget: list[int],
                 bisecting: bool) -> None:
        """Validate, write and complete ``part`` as one commit; if the write fails as a whole and did not land,
        split the part in two (each half a new batch with its own batch_seq) until the bad file stands alone."""
        name = self._table.table_name
        assert read.dataframe is not None and self._lease is not None
        budget[0] -= 1
        prepared, errors = self.writer.prepare(part, read.dataframe)
        outcome.late_rows += int(prepared.extras.get("late_rows") or 0)
        try:
            if errors:
                self._fail(part, errors, outcome)
                part = part.part([p for p in part.paths if p not in errors], part.batch_id, part.batch_seq)
            if not part.files:
                return
            part = part.with_quality(read.quarantined, read.expectations)  # commits with the rows
            self._lease.ensure_held()
            faults.crash_point(faults.BEFORE_TARGET_COMMIT)
            faults.crash_during(faults.DURING_TARGET_WRITE)
            self._write_quarantine(part, read)
            split = (split_for(self.context.spark(), read.relation_sizes)
                     if self.writer.balances_read_tasks and read.relation_sizes else None)
            if split is not None:
                self._log.info(f"table {name}: batch {part.batch_id} read in file partitions of at most {split} "
                               "bytes, which fill the session's cores to the end (docs/ARCHITECTURE.md, "
                               "\"Read tasks in full waves\")")
            try:
                with split_for_write(self.context.spark(), split):
                    self.writer.write(part, prepared, evolve)
            except Exception as error:
                if target_txn_version(part.target_path, name) >= part.batch_seq:
                    self._log.warning(f"table {name}: the write raised after its commit landed: "
                                      f"{root_cause(error)}")
                else:
                    self._log.error(f"table {name}: the commit of batch {part.batch_id} failed: "
                                    f"{root_cause(error)}\n{traceback.format_exc()}")
                    self.writer.abandon(self.context.spark, part)
                    self._write_failed(part, error, evolve, reader, outcome, budget, bisecting)
                    return
        finally:
            prepared.release()
        faults.crash_point(faults.AFTER_TARGET_COMMIT)
        self._complete(part, read, outcome)

    def _complete(self, part: ClaimedBatch, read: BatchRead | None, outcome: LoadOutcome,
                  counts: Mapping[str, int] | None = None) -> None:
        """Complete ``part`` in the tracker with its commit's version and per-file row counts (``counts`` when
        the writer knows them exactly, as the small-batch engine does; else the writer's ``row_counts``)."""
        name = self._table.table_name
        commit = batch_commit(part.target_path, part.batch_id)
        if commit is None:
            message = (f"no target commit carries batch {part.batch_id}: Delta skipped the write because txn "
                       f"version {part.batch_seq} was already recorded for {part.app_id}")
            self._tracker.fail(dict.fromkeys(part.paths, message))
            raise BatchWriteError(name, part.batch_id, message)
        version = int(commit["version"])
        if counts is None:
            assert read is not None
            counts = self.writer.row_counts(self.context.spark(), part, commit, read.footer_rows)
        faults.crash_during(faults.DURING_TRACKER_COMMIT)
        quarantined = {p: read.quarantined[p] for p in part.paths if p in read.quarantined} if read else {}
        expectations = {p: read.expectations[p] for p in part.paths if p in read.expectations} if read else {}
        self._tracker.complete({p: counts.get(p, 0) for p in part.paths}, part.batch_id, version, quarantined,
                               expectations)
        self._in_flight = [b for b in self._in_flight if b.batch_id != part.batch_id]
        faults.crash_point(faults.AFTER_COMPLETE)
        rows = sum(counts.get(p, 0) for p in part.paths)
        self._log.info(f"table {name}: batch {part.batch_id} committed as version {version}: "
                       f"{len(part.files)} files, {rows} rows")
        outcome.batch_ids.append(part.batch_id)
        outcome.batch_seqs.append(part.batch_seq)
        outcome.versions.append(version)
        outcome.loaded.extend(part.paths)
        outcome.rows.update({p: counts.get(p, 0) for p in part.paths})
        outcome.quarantined.update(quarantined)
        outcome.expectations.update(expectations)
        outcome.replaced = outcome.replaced or part.replace

    def _write_failed(self, part: ClaimedBatch, error: Exception, evolve: bool,
                      reader: Callable[[Sequence[str]], BatchRead], outcome: LoadOutcome, budget: list[int],
                      bisecting: bool) -> None:
        """The commit of ``part`` failed and did not land: split it (each half re-claimed and re-read on its
        own), or fail its file (alone, when isolated), or fail the run (a whole batch that failed unsplit)."""
        name = self._table.table_name
        cause = root_cause(error)
        if len(part.files) > 1 and budget[0] > 0:
            outcome.split = True
            committed_before = len(outcome.batch_ids)
            self._log.warning(f"table {name}: batch {part.batch_id} of {len(part.files)} files failed as a "
                              f"whole ({cause}); splitting it to isolate the file that fails")
            middle = len(part.files) // 2
            for group in (part.paths[:middle], part.paths[middle:]):
                if budget[0] <= 0:
                    message = ("a batch holding this file failed as a whole and splitting it ran out of "
                               f"attempts; first error: {cause}")
                    self._fail(part, dict.fromkeys(group, message), outcome)
                    continue
                seq = next_batch_sequence(self._tracker, part.target_path, name, self.writer.txn_floor())
                half = part.part(group, new_batch_id(seq), seq)
                self._tracker.claim(group, half.batch_id, seq, part.run_id, reclaim=True)
                self._in_flight.append(half)
                # Read the half again on its own: a filter over the whole batch's read would still read every
                # file (a group read maps _source_file from file paths), so the bad file would fail both halves.
                read = reader(group)
                if read.errors:
                    self._fail(half, read.errors, outcome, read.expectations)
                loaded = [p for p in read.loaded_paths if p not in read.errors]
                if read.dataframe is None or not loaded:
                    continue
                self._attempt(half.part(loaded, half.batch_id, half.batch_seq), read, evolve, reader, outcome,
                              budget, bisecting=True)
            self._in_flight = [b for b in self._in_flight if b.batch_id != part.batch_id]
            if len(outcome.batch_ids) == committed_before and not bisecting:
                raise BatchWriteError(name, part.batch_id, f"every part of the split batch failed; first error: "
                                                          f"{cause}")
            return
        message = (f"isolated by splitting a batch that failed as a whole; Spark failed on this file: {cause}"
                   if bisecting and len(part.files) == 1 else f"the target commit of batch {part.batch_id} "
                                                                f"failed: {cause}")
        self._fail(part, dict.fromkeys(part.paths, message), outcome)
        self._in_flight = [b for b in self._in_flight if b.batch_id != part.batch_id]
        if not bisecting:
            raise BatchWriteError(name, part.batch_id, cause) from error

    def _write_quarantine(self, part: ClaimedBatch, read: BatchRead) -> None:
        """Malformed rows and rows failing a quarantine expectation of the part's files to the quarantine table,
        replacing those files' earlier ones (so a retried batch never doubles them). Written before the target
        commit; a crash in between is harmless."""
        if read.quarantine is None or not any(p in read.quarantined for p in part.paths):
            return
        from pyspark.sql import functions as F

        rows = (
            read.quarantine.where(F.col(SOURCE_FILE_COLUMN).isin(part.paths))
            .withColumn(LOAD_TIMESTAMP_COLUMN, F.current_timestamp())
            .withColumn(BATCH_ID_COLUMN, F.lit(part.batch_id))
        )
        (
            rows.write.format("delta").mode("overwrite")
            .option("replaceWhere", replace_predicate(part.paths))
            .option("mergeSchema", "true")  # a quarantine table from before expectations gains their column
            .save(self.context.settings.quarantine_path(self._table.table_name))
        )

    def _resolve_after_error(self, error: BaseException) -> None:
        """The load raised with batches claimed and not resolved: resolve them now, still holding the lease,
        from the target's txn version (committed -> completed, else failed with the error, counting a retry;
        an interruption by a signal, SIGINT or SIGTERM, counts none and says so, as recovery does for a kill).
        If that fails too, the files stay ``processing`` and the next holder's recovery resolves them."""
        name = self._table.table_name
        cause = root_cause(error)
        interrupted = interruption_of(error) is not None
        try:
            assert self._lease is not None
            self._lease.ensure_held()  # a lease lost to another holder: its recovery resolves our batch
            committed_seq = target_txn_version(self.context.target_path, name)
            rows = self._tracker.read(columns=["file_path", "batch_id"], statuses=[FileStatus.PROCESSING])
            processing = set(zip(rows["file_path"].to_pylist(), rows["batch_id"].to_pylist(), strict=True))
            for batch in self._in_flight:
                paths = [p for p in batch.paths if (p, batch.batch_id) in processing]
                if not paths:
                    continue
                if batch.batch_seq <= committed_seq:
                    recover_interrupted(self._tracker, self.writer, self.context.spark)
                    continue
                if interrupted:  # not the files' fault: like a killed run, it uses no retry (recovery.py)
                    message = (f"interrupted: run {self.context.run_id} was stopped by a signal while loading "
                               f"batch {batch.batch_id}, before its commit; the file is retried")
                    self._tracker.fail(dict.fromkeys(paths, message), count_retry=False)
                else:
                    message = f"run {self.context.run_id} failed while loading batch {batch.batch_id}: {cause}"
                    self._tracker.fail(dict.fromkeys(paths, message), backoff=self.context.settings.retry_delay)
                self.writer.abandon(self.context.spark, batch)
        except Exception as failure:
            self._log.error(f"table {name}: left the interrupted batch to the next run's recovery: "
                            f"{root_cause(failure)}")
        finally:
            self._in_flight.clear()
