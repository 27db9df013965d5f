"""The file tracker: one small Delta table per target table, written with delta-rs (no JVM).

Layout: ``<checkpoint_path>/file_processing_tracker/<table_name>``. One table per target table keeps unrelated
tables from conflicting with each other; :meth:`DeltaTrackerResource.read_all` is the logical
``file_processing_tracker`` over all of them.

Invariants
- One row per ``file_path``. ``status`` is one of :class:`~loader_assets.core.states.FileStatus`; each transition
  is a named method that writes one Delta commit and moves rows only from the statuses ``core.states.TRANSITIONS``
  gives it (registration, claim, complete, fail, release, skip, retry, reprocess; ``adopt`` for
  fix-inconsistencies; ``reset``).
- A table's tracker is written only by the holder of that table's lock (see ``lock.py``). Readers (the sensor,
  ``status``, the checks) never write, not even to migrate an older tracker: they read its missing columns as
  nulls. Every write is still an optimistic transaction retried on conflict with fresh state,
  so a write that races anyway (an operator tool, a stale holder) is never lost.
- ``batch_seq`` of a row is the sequence number of the last batch that claimed it; the maximum over the table
  only ever grows. The next batch's number also takes the target's recorded txn version into account
  (``load.next_batch_sequence``) so a tracker that was reset can never make Delta skip later writes.
- The table property ``loader_assets.baseline_txn`` is the target's txn version when the tracker was created
  (``create``, ``reset``). Above 0 it says the target held batches this tracker never saw, so any file the tracker
  has not completed itself may have rows there: it decides, durably, that such files are written with replace
  semantics (``baseline_txn``).

File versions: a file is identified by its path; its fingerprint (size + modification time) says which version
of it the tracker describes. ``source_fingerprint`` is the newest fingerprint seen in the source. When a listing
shows a different one, ``register`` applies the table's ``on_file_change`` policy to a file that was loaded
before (reload: pending again, ``file_version`` + 1; ignore: noted; fail: failed and not retried) and simply
refreshes a file that never loaded. Each change, and each operator action, is also appended to the table's
event log (``events.py``) after the tracker commit (a crash between the two loses the event, never the state).

Crash windows: each transition is one commit, so a crash leaves the tracker at the previous state. A crash
between the claim and the completion leaves rows in ``processing``; recovery resolves them from the target's
txn version (``recovery.recover_interrupted``). ``reset`` is two commits (baseline, then no rows): a crash between
leaves the rows with the new baseline, which only makes more batches replace rows.

Layout (tracker schema 3): the table is partitioned by ``status``. Files move through pending -> processing ->
completed, so the rows a run touches (pending, failed, processing) sit in small partitions apart from the
completed rows, which only grow. Each transition reads only the partitions it may move rows from and its MERGE
names them in its predicate, so a claim of 1,000 files rewrites the small pending partition, never the
million completed rows (benchmark P6). A tracker written by an older version is rewritten into this layout by
its next writer (one overwrite commit: a crash leaves the old layout, which every read still understands).

Maintenance: after each commit, when more than ``MAX_SMALL_FILES`` files under ``SMALL_FILE_BYTES`` have piled
up, they are compacted (files already ``COMPACT_TARGET_BYTES`` or larger are left as they are, so compaction
never rewrites the completed rows it already packed). delta-rs writes a Delta checkpoint itself every 10
commits (``delta.checkpointInterval``): opening the table replays at most 9 JSON commits, about 5 ms instead
of 13 ms with 20 (docs/ARCHITECTURE.md, "Decisions").
"""


import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.schema import Field as DeltaField
from pydantic import Field

from loader_assets.core.discovery import TIMESTAMP, fingerprint, resolve
from loader_assets.core.errors import TrackerError
from loader_assets.core.states import ALL_STATUSES, FileStatus, sources_of, target_of
from loader_assets.resources._state_tables import (
    STATE_TABLE_PROPERTIES,
    LocalConfig,
    StorageConfig,
    open_state_table,
    read_latest,
    read_state_table,
    storage_options,
)
from loader_assets.resources.events import FileEvents
from loader_assets.settings import LoaderSettings, OnFileChange

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRACKER_DIR = "file_processing_tracker"
TRACKER_SCHEMA_VERSION = "4"
SCHEMA_VERSION_PROPERTY = "loader_assets.tracker_schema_version"
PARTITION_COLUMNS = ["status"]
SMALL_FILE_BYTES = 1024 * 1024
MAX_SMALL_FILES = 8
COMPACT_TARGET_BYTES = 8 * 1024 * 1024
MAX_CONFLICT_RETRIES = 8

TRACKER_SCHEMA = pa.schema(
    [
        pa.field("file_path", pa.string(), nullable=False),
        pa.field("file_size", pa.int64()),
        pa.field("file_modified_time", TIMESTAMP),
        pa.field("table_name", pa.string()),
        pa.field("status", pa.string()),
        pa.field("processing_start_time", TIMESTAMP),
        pa.field("processing_end_time", TIMESTAMP),
        pa.field("error_message", pa.string()),
        pa.field("retry_count", pa.int32()),
        pa.field("created_at", TIMESTAMP),
        pa.field("updated_at", TIMESTAMP),
        pa.field("batch_id", pa.string()),
        pa.field("batch_seq", pa.int64()),
        pa.field("run_id", pa.string()),
        pa.field("partition_key", pa.string()),
        pa.field("row_count", pa.int64()),
        pa.field("target_version", pa.int64()),
        pa.field("fingerprint", pa.string()),
        # schema version 2 (added to older trackers when they are opened)
        pa.field("source_fingerprint", pa.string()),
        pa.field("file_version", pa.int32()),
        pa.field("content_hash", pa.string()),
        pa.field("next_attempt_at", TIMESTAMP),
        pa.field("retryable", pa.bool_()),
        pa.field("quarantined_rows", pa.int64()),
        # schema version 4: rows the expectations checked and those that failed (JSON, reading.apply_expectations)
        pa.field("expectation_results", pa.string()),
    ]
)
TABLE_PROPERTIES = {SCHEMA_VERSION_PROPERTY: TRACKER_SCHEMA_VERSION, **STATE_TABLE_PROPERTIES}
# The target's recorded txn version when this tracker was created (0 for a tracker that started with its
# table). Above 0, the target held batches this tracker never saw: any file it has not completed itself may
# already have rows there (see ``FileTracker.baseline_txn``).
BASELINE_PROPERTY = "loader_assets.baseline_txn"


@dataclass(frozen=True)
class FileChange:
    """A known file whose fingerprint changed in the source, and what the policy did with it."""

    file_path: str
    old_fingerprint: str | None
    new_fingerprint: str
    file_version: int
    action: str  # reload | ignore | fail | refresh (a file that never loaded)
    previous_status: str
    previous_batch_id: str | None
    previous_row_count: int | None


@dataclass
class RegisterResult:
    """What one registration did: how many files were new, and which known files changed."""

    new_files: int = 0
    changes: list[FileChange] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def _scalar_column(value: object, pa_type: pa.DataType, length: int) -> pa.Array:
    return pa.array([value] * length, pa_type)


def _replace(table: pa.Table, **columns: object) -> pa.Table:
    """Return ``table`` with the named columns replaced by a scalar (broadcast) or an array."""
    for name, value in columns.items():
        index = table.schema.get_field_index(name)
        field = table.schema.field(index)
        if isinstance(value, pa.Array | pa.ChunkedArray):
            column = value.cast(field.type) if value.type != field.type else value
        else:
            column = _scalar_column(value, field.type, table.num_rows)
        table = table.set_column(index, field, column)
    return table


def changed_files(known: pa.Table, listing: pa.Table) -> pa.Table:
    """Tracked rows (not processing) whose listed fingerprint differs from the newest one the tracker saw, with
    the listing's ``_fp``, ``_size`` and ``_mtime`` appended. One hash lookup per known path, no join; rows
    not in the listing drop out. Shared by ``register`` and the read-only sensor diff (benchmark P5)."""
    if known.num_rows == 0:
        return known.append_column("_fp", pa.array([], pa.string())).append_column(
            "_size", pa.array([], pa.int64())).append_column("_mtime", pa.array([], TIMESTAMP))
    rows = pc.index_in(known["file_path"], value_set=listing["file_path"])
    sizes = pc.take(listing["file_size"], rows)
    mtimes = pc.take(listing["file_modified_time"], rows)
    listed = fingerprint(sizes, mtimes)
    seen = pc.fill_null(pc.coalesce(known["source_fingerprint"], known["fingerprint"]), "")
    differs = pc.and_(pc.not_equal(listed, seen), pc.not_equal(known["status"], FileStatus.PROCESSING.value))
    return (known.append_column("_fp", listed).append_column("_size", sizes).append_column("_mtime", mtimes)
            .filter(pc.fill_null(differs, False)))


def _source_version(rows: pa.Table, seen: Mapping[str, tuple[int, datetime]]) -> dict[str, pa.Array]:
    """The columns that make ``rows`` describe the file versions in the source now: size, modification time and
    fingerprint from ``seen`` (path -> (size, mtime); a path not in it keeps its row's), and the next file version
    where the fingerprint differs from the row's. Shared by ``requeue`` and ``skip``, whose operator actions
    apply to the file as it is when they are given."""
    paths = rows["file_path"].to_pylist()
    old = dict(zip(paths, zip(rows["file_size"].to_pylist(), rows["file_modified_time"].to_pylist(), strict=True),
                   strict=True))
    current = {p: seen.get(p, old[p]) for p in paths}
    sizes = pa.array([current[p][0] for p in paths], pa.int64())
    mtimes = pa.array([current[p][1] for p in paths], TIMESTAMP)
    prints = fingerprint(sizes, mtimes)
    versions = [int(v or 1) + (1 if new != old_fp else 0)
                for v, new, old_fp in zip(rows["file_version"].to_pylist(), prints.to_pylist(),
                                          rows["fingerprint"].to_pylist(), strict=True)]
    return dict(file_size=sizes, file_modified_time=mtimes, fingerprint=prints, source_fingerprint=prints,
                file_version=pa.array(versions, pa.int32()))


def _expectation_results(paths: Sequence[str], results: Mapping[str, Mapping[str, Any]] | None) -> pa.Array:
    """The ``expectation_results`` column for ``paths``: each file's results as JSON (NULL: no expectations)."""
    results = results or {}
    return pa.array([json.dumps(results[p], sort_keys=True) if results.get(p) else None for p in paths],
                    pa.string())


class FileTracker:
    """The tracker table of one target table. Cheap to create; opens the Delta table per operation.

    A long-lived ``DeltaTable`` object slows with every commit made through it (docs/ARCHITECTURE.md, "Traps"),
    so each operation opens the table afresh (a few ms, thanks to checkpoints). Reads never write: a tracker of
    an older schema is read with the missing columns as nulls, and only a writer (the lock holder) migrates it.
    """

    def __init__(self, path: str, table_name: str, options: dict[str, str] | None = None) -> None:
        self.path = path
        self.table_name = table_name
        self.options = dict(options or {})

    # ----------------------------------------------------------------------------------------------- reads
    def exists(self) -> bool:
        """Whether anything is stored at the tracker's path (a damaged tracker exists too)."""
        import pyarrow.fs as pafs

        filesystem, fs_path = resolve(self.path)
        return filesystem.get_file_info(fs_path).type != pafs.FileType.NotFound

    @property
    def events(self) -> FileEvents:
        """The table's append-only log of file changes and operator actions."""
        return FileEvents(self.path.rsplit("/", 2)[0] + "/file_events/" + self.table_name, self.table_name,
                          self.options)

    def _damaged_hint(self) -> str:
        return (f"the tracker of table {self.table_name!r} is damaged (its _delta_log is missing or unreadable). "
                "Restore it from a backup, or run `loader-assets reset-state --table "
                f"{self.table_name}`: a new tracker re-registers the files and, since the table holds batches it "
                "never saw, every reload replaces the files' rows instead of duplicating them")

    def _open(self) -> DeltaTable | None:
        """A fresh handle, for a caller that commits through it."""
        return open_state_table(self.path, self._damaged_hint(), self.options)

    def _read_latest(self, read: Callable[[DeltaTable], T]) -> T | None:
        """``read`` of the latest snapshot without committing (``read_latest``); None when there is no tracker."""
        return read_latest(self.path, self._damaged_hint(), self.options, read)

    def _reopen(self) -> DeltaTable:
        return DeltaTable(self.path, storage_options=self.options or None)

    def _open_for_write(self) -> DeltaTable:
        """The tracker in the current layout (a writer migrates an older one). A missing tracker is an error:
        only ``create`` makes one, knowing the target's txn version (``baseline_txn``)."""
        table = self._open()  # raises TrackerError for a damaged tracker rather than recreating it
        if table is None:
            raise TrackerError(f"the tracker of table {self.table_name!r} does not exist at {self.path}")
        present = set(table.schema().to_arrow().names)
        missing = [f for f in TRACKER_SCHEMA if f.name not in present]
        if missing:  # a tracker written by an older version: add the new columns (one schema commit)
            try:
                table.alter.add_columns([DeltaField.from_arrow(f) for f in missing])
            except CommitFailedError:
                pass  # another process upgraded it a moment ago
            table = self._reopen()
        if table.metadata().partition_columns != PARTITION_COLUMNS:
            table = self._partition_by_status(table)
        configuration = table.metadata().configuration
        if any(configuration.get(key) != value for key, value in TABLE_PROPERTIES.items()):
            table.alter.set_table_properties(TABLE_PROPERTIES, raise_if_not_exists=False)
            table = self._reopen()
        return table

    def _partition_by_status(self, table: DeltaTable) -> DeltaTable:
        """Rewrite a tracker of schema 1 or 2 (not partitioned) into schema 3's layout: one overwrite commit
        holding every row, so a crash leaves either layout whole. Runs under the table's lock (writers hold it)."""
        rows = table.to_pyarrow_table().select(TRACKER_SCHEMA.names).cast(TRACKER_SCHEMA)
        write_deltalake(
            table, rows, mode="overwrite", partition_by=PARTITION_COLUMNS, schema_mode="overwrite",
            storage_options=self.options or None,
            commit_properties=CommitProperties(custom_metadata={
                "loader_assets.operation":
                    f"migrate to tracker schema {TRACKER_SCHEMA_VERSION} (partitioned by status)",
                "loader_assets.table": self.table_name,
            }),
        )
        logger.info("tracker %s: partitioned by status (%d rows rewritten)", self.table_name, rows.num_rows)
        return self._reopen()

    def baseline_txn(self) -> int | None:
        """The target's recorded txn version when this tracker was created; None for a tracker from before the
        property existed (``ensure_baseline`` records one) or when there is no tracker.

        It is what decides, per file and durably, whether the file may already have rows in the target: a
        file this tracker claimed before may (an interrupted or superseded batch, a reload), and when the
        baseline is above 0 so may every file this tracker has not completed itself (the target held batches
        before the tracker existed: ``reset-state``, a lost tracker). Such files are written with replace
        semantics; the flag lives in the tracker, not in a run.
        """
        value = self._read_latest(lambda table: table.metadata().configuration.get(BASELINE_PROPERTY, ""))
        return int(value) if value else None

    def ensure_baseline(self, target_txn: int) -> int:
        """Record a baseline on a tracker written before baselines existed: the target's txn version if the
        target holds batches this tracker has no record of (it was reset by an older version), else 0. Writer
        only (under the table's lock). Returns the baseline."""
        current = self.baseline_txn()
        if current is not None:
            return current
        baseline = target_txn if target_txn > self.max_batch_seq() else 0
        table = self._open_for_write()
        table.alter.set_table_properties({BASELINE_PROPERTY: str(baseline)}, raise_if_not_exists=False)
        return baseline

    def _scan(
        self,
        table: DeltaTable,
        columns: Sequence[str] | None = None,
        statuses: Sequence[FileStatus] | None = None,
        paths: Sequence[str] | None = None,
    ) -> pa.Table:
        """Rows of ``table``: ``statuses`` prunes the scan to those partitions (a filter after the read on a
        tracker still in the old layout), ``paths`` keeps only those files."""
        names = list(columns) if columns else TRACKER_SCHEMA.names
        if paths is not None and not paths:
            return TRACKER_SCHEMA.empty_table().select(names)
        stored = set(table.schema().to_arrow().names)
        wanted = [n for n in dict.fromkeys([*names, *(["file_path"] if paths is not None else [])]) if n in stored]
        partitioned = table.metadata().partition_columns == PARTITION_COLUMNS
        values = [s.value for s in statuses] if statuses is not None else None
        if values is not None and not partitioned and "status" not in wanted:
            wanted.append("status")
        if values is not None and partitioned:
            result = read_state_table(table, wanted, {"status": values})
        else:
            result = read_state_table(table, wanted)
            if values is not None:
                result = result.filter(pc.is_in(result["status"], pa.array(values, pa.string())))
        if paths is not None:
            result = result.filter(pc.is_in(result["file_path"], pa.array(list(paths), pa.string())))
        for name in names:  # a column an older tracker does not have yet reads as nulls (reads never migrate)
            if name not in result.column_names:
                result = result.append_column(TRACKER_SCHEMA.field(name), pa.nulls(result.num_rows,
                                                                                   TRACKER_SCHEMA.field(name).type))
        return result.select(names).cast(pa.schema([TRACKER_SCHEMA.field(name) for name in names]))

    def read(
        self,
        columns: Sequence[str] | None = None,
        statuses: Sequence[FileStatus] | None = None,
        paths: Sequence[str] | None = None,
    ) -> pa.Table:
        """All rows (or the given columns; only rows of the given statuses or paths). An absent tracker reads as
        empty. Filters are pushed into the scan: a status filter reads only those partitions."""
        result = self._read_latest(lambda table: self._scan(table, columns, statuses, paths))
        if result is None:
            empty = TRACKER_SCHEMA.empty_table()
            return empty.select(list(columns)) if columns else empty
        return result

    def read_as_of(self, version: int, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows (or the given columns) as of a Delta version; -1 (before the tracker existed) reads as empty.
        Raises when the version's log or data files are gone."""
        if version < 0:
            empty = TRACKER_SCHEMA.empty_table()
            return empty.select(list(columns)) if columns else empty
        return self._scan(DeltaTable(self.path, version=version, storage_options=self.options or None), columns)

    @staticmethod
    def _file_stats(table: DeltaTable) -> pa.Table:
        """The data files' statistics from the Delta log (no data read)."""
        return pa.table(table.get_add_actions(flatten=True))

    def max_batch_seq(self) -> int:
        """The highest batch_seq in the tracker, from the files' statistics when they all have them."""
        def highest(table: DeltaTable) -> int | None:
            stats = self._file_stats(table)
            if "max.batch_seq" in stats.column_names and stats.num_rows and stats["num_records"].null_count == 0:
                # a file whose batch_seq values are all NULL has a NULL max: it adds nothing
                return pc.max(stats["max.batch_seq"]).as_py()
            return pc.max(self._scan(table, ["batch_seq"])["batch_seq"]).as_py()

        value = self._read_latest(highest)
        return int(value) if value is not None else 0

    def version(self) -> int:
        """The tracker's Delta version (-1 when it does not exist): any change to any row makes a new one."""
        version = self._read_latest(lambda table: table.version())
        return -1 if version is None else version

    def status_counts(self) -> dict[str, int]:
        """Files per status. From the Delta log's per-file record counts of the status partitions when the
        tracker is partitioned (no data read), else from the status column."""
        counts = {status.value: 0 for status in ALL_STATUSES}

        def per_status(table: DeltaTable) -> list[tuple[str, int]]:
            stats = self._file_stats(table)
            if "partition.status" in stats.column_names and stats["num_records"].null_count == 0:
                grouped = stats.group_by("partition.status").aggregate([("num_records", "sum")])
                return list(zip(grouped["partition.status"].to_pylist(), grouped["num_records_sum"].to_pylist(),
                                strict=True))
            values = pc.value_counts(self._scan(table, ["status"])["status"]).to_pylist()
            return [(item["values"], item["counts"]) for item in values]

        for status, count in self._read_latest(per_status) or []:
            counts[status] = counts.get(status, 0) + int(count)
        return counts

    # ---------------------------------------------------------------------------------------------- writes
    def create(self, baseline_txn: int) -> None:
        """Create the tracker with no rows, recording the target's current txn version as its baseline (a run
        creates it for a table it loads first; reset-state replaces a tracker with a new one)."""
        try:
            DeltaTable.create(
                self.path,
                schema=TRACKER_SCHEMA,
                mode="ignore",
                partition_by=PARTITION_COLUMNS,
                name=f"file_processing_tracker_{self.table_name}",
                description=f"loader-assets file tracker of table {self.table_name}",
                configuration={**TABLE_PROPERTIES, BASELINE_PROPERTY: str(baseline_txn)},
                storage_options=self.options or None,
                raise_if_key_not_exists=False,
            )
        except CommitFailedError:
            pass  # created by a racing process a moment ago: that is the table we wanted

    def reset(self, baseline_txn: int) -> int:
        """Forget every file (reset-state): first record ``baseline_txn`` (the target's txn version now), then
        remove every row, two commits. A crash between them leaves the rows with the new baseline, which only
        makes more batches replace rows (harmless); the tracker is never missing. Returns the rows removed."""
        table = self._open_for_write()
        removed = table.to_pyarrow_dataset().count_rows()
        table.alter.set_table_properties({BASELINE_PROPERTY: str(baseline_txn)}, raise_if_not_exists=False)
        write_deltalake(
            self._reopen(), TRACKER_SCHEMA.empty_table(), mode="overwrite", partition_by=PARTITION_COLUMNS,
            storage_options=self.options or None,
            commit_properties=CommitProperties(custom_metadata={
                "loader_assets.operation": "reset", "loader_assets.table": self.table_name}),
        )
        return removed

    def adopt(self, found: Mapping[str, tuple[int, str | None, int | None]], message: str) -> int:
        """Record that the table holds rows of files the tracker does not count as loaded (fix-inconsistencies):
        ``found`` maps each path to (rows, batch id, target version). A file the tracker knows keeps its status
        (failed, skipped) and gains the row count and version, exactly as if it had loaded here before; a file
        it does not know becomes ``completed``. One commit."""
        now = _now()

        def make_rows(table: DeltaTable) -> pa.Table:
            existing = {r["file_path"]: r for r in self._scan(table, paths=list(found)).to_pylist()}
            rows = []
            for path, (count, batch_id, version) in found.items():
                row = existing.get(path)
                if row is None:
                    row = {**dict.fromkeys(TRACKER_SCHEMA.names), "file_path": path, "table_name": self.table_name,
                           "status": FileStatus.COMPLETED.value, "created_at": now, "retry_count": 0,
                           "batch_id": batch_id, "error_message": message}
                row.update(row_count=count, target_version=version, updated_at=now)
                rows.append(row)
            return pa.Table.from_pylist(rows, schema=TRACKER_SCHEMA)

        return self._merge(make_rows, "adopt")

    def _merge(
        self,
        make_rows: Callable[[DeltaTable], pa.Table],
        operation: str,
        from_statuses: Sequence[FileStatus] | None = None,
    ) -> int:
        """Merge the rows ``make_rows(table)`` returns into the tracker, keyed by ``file_path``. One commit.

        ``from_statuses`` (a transition): the rows are updates of existing rows in those statuses; the MERGE's
        predicate names those partitions, so it reads and rewrites only them, and every row must match (a row
        that does not means the state moved underneath: an error, never an insert). Without it (registration),
        rows that match update and the others are inserted. On a commit conflict the current state is read
        again and ``make_rows`` runs again, so no update is lost. Returns the number of rows written.
        """
        predicate = "t.file_path = s.file_path"
        if from_statuses is not None:
            predicate += " AND t.status IN (" + ", ".join(f"'{s.value}'" for s in from_statuses) + ")"
        table: DeltaTable | None = None
        for attempt in range(MAX_CONFLICT_RETRIES):
            table = self._open_for_write() if table is None else self._reopen()
            rows = make_rows(table)
            if rows.num_rows == 0:
                return 0
            rows = rows.select(TRACKER_SCHEMA.names).cast(TRACKER_SCHEMA)
            merger = table.merge(
                source=rows,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                commit_properties=CommitProperties(
                    custom_metadata={"loader_assets.operation": operation, "loader_assets.table": self.table_name},
                    max_commit_retries=0,
                ),
            ).when_matched_update_all()
            if from_statuses is None:
                merger = merger.when_not_matched_insert_all()
            try:
                metrics = merger.execute()
            except CommitFailedError:
                logger.info("tracker %s: commit conflict on %s, retrying (%d)", self.table_name, operation, attempt)
                time.sleep(0.05 * (attempt + 1))
                continue
            if from_statuses is not None and metrics.get("num_target_rows_updated") != rows.num_rows:
                raise TrackerError(
                    f"tracker of table {self.table_name!r}: {operation} updated "
                    f"{metrics.get('num_target_rows_updated')} of {rows.num_rows} rows (their status changed "
                    "while it ran); run `loader-assets status` and retry"
                )
            self._maintain(table)
            return rows.num_rows
        raise TrackerError(
            f"tracker of table {self.table_name!r}: {operation} kept conflicting with other writers "
            f"after {MAX_CONFLICT_RETRIES} attempts"
        )

    def _maintain(self, table: DeltaTable) -> None:
        """Compact small files when they pile up (best effort; delta-rs checkpoints on its own cadence).
        ``table`` is the object the commit went through, already at the new version."""
        try:
            sizes = self._file_stats(table)["size_bytes"]
            small = pc.sum(pc.less(sizes, SMALL_FILE_BYTES)).as_py() or 0
            if small > MAX_SMALL_FILES:
                table.optimize.compact(target_size=COMPACT_TARGET_BYTES)
        except Exception:  # maintenance is optional: a failure here must not fail the transition
            logger.warning("tracker %s: maintenance failed", self.table_name, exc_info=True)

    def register(
        self,
        listing: pa.Table,
        partition_keys: pa.Array,
        on_file_change: OnFileChange = OnFileChange.RELOAD,
    ) -> RegisterResult:
        """Insert files not yet tracked as ``pending``; apply ``on_file_change`` to known files whose fingerprint
        changed (one commit for both). Files in ``processing`` are left alone (their batch decides)."""
        result = RegisterResult()
        if listing.num_rows == 0:
            return result
        now = _now()
        n = listing.num_rows
        fingerprints = fingerprint(listing["file_size"], listing["file_modified_time"])
        candidates = pa.table(
            {
                "file_path": listing["file_path"],
                "file_size": listing["file_size"],
                "file_modified_time": listing["file_modified_time"],
                "table_name": _scalar_column(self.table_name, pa.string(), n),
                "status": _scalar_column(FileStatus.PENDING.value, pa.string(), n),
                "processing_start_time": pa.nulls(n, TIMESTAMP),
                "processing_end_time": pa.nulls(n, TIMESTAMP),
                "error_message": pa.nulls(n, pa.string()),
                "retry_count": _scalar_column(0, pa.int32(), n),
                "created_at": _scalar_column(now, TIMESTAMP, n),
                "updated_at": _scalar_column(now, TIMESTAMP, n),
                "batch_id": pa.nulls(n, pa.string()),
                "batch_seq": pa.nulls(n, pa.int64()),
                "run_id": pa.nulls(n, pa.string()),
                "partition_key": partition_keys,
                "row_count": pa.nulls(n, pa.int64()),
                "target_version": pa.nulls(n, pa.int64()),
                "fingerprint": fingerprints,
                "source_fingerprint": fingerprints,
                "file_version": _scalar_column(1, pa.int32(), n),
                "content_hash": pa.nulls(n, pa.string()),
                "next_attempt_at": pa.nulls(n, TIMESTAMP),
                "retryable": pa.nulls(n, pa.bool_()),
                "quarantined_rows": pa.nulls(n, pa.int64()),
                "expectation_results": pa.nulls(n, pa.string()),
            },
            schema=TRACKER_SCHEMA,
        )

        def make_rows(table: DeltaTable) -> pa.Table:
            # what change detection needs, for every row; whole rows only for the files that changed
            known = self._scan(table, ["file_path", "status", "fingerprint", "source_fingerprint"])
            new = candidates.filter(pc.invert(pc.is_in(candidates["file_path"], known["file_path"])))
            changed = changed_files(known, candidates)["file_path"].to_pylist()
            current = self._scan(table, paths=changed) if changed else TRACKER_SCHEMA.empty_table()
            changed_rows, changes = self._changed(current, candidates, on_file_change, now)
            result.new_files, result.changes = new.num_rows, changes
            return pa.concat_tables([new, changed_rows]) if changed_rows.num_rows else new

        self._merge(make_rows, "register")
        return result

    def _changed(
        self, current: pa.Table, candidates: pa.Table, policy: OnFileChange, now: datetime
    ) -> tuple[pa.Table, list[FileChange]]:
        """Updated tracker rows for known files whose fingerprint differs from the newest one seen."""
        joined = changed_files(current, candidates)
        if joined.num_rows == 0:
            return TRACKER_SCHEMA.empty_table(), []
        rows_out: list[dict[str, object]] = []
        changes: list[FileChange] = []
        for row in joined.to_pylist():
            loaded_before = row["target_version"] is not None or row["status"] == FileStatus.COMPLETED.value
            action = policy.value if loaded_before else "refresh"
            version = int(row["file_version"] or 1) + (0 if action in ("ignore", "fail") else 1)
            old = row["fingerprint"]
            updated = {k: row[k] for k in TRACKER_SCHEMA.names}
            updated.update(source_fingerprint=row["_fp"], updated_at=now)
            described = f"{old} -> {row['_fp']} (size:mtime)"
            if action in ("reload", "refresh"):
                updated.update(
                    file_size=row["_size"], file_modified_time=row["_mtime"], fingerprint=row["_fp"],
                    file_version=version, status=FileStatus.PENDING.value, retry_count=0, retryable=None,
                    next_attempt_at=None, content_hash=None,
                    error_message=(
                        f"file changed in the source after it was loaded ({described}): version {version} is "
                        "pending and replaces the earlier version's rows (on_file_change=reload)"
                        if action == "reload" else None
                    ),
                )
            elif action == "ignore":
                updated.update(error_message=(
                    f"file changed in the source after it was loaded ({described}); the change is ignored "
                    "(on_file_change=ignore): the table keeps the version loaded"
                ))
            else:
                updated.update(
                    status=FileStatus.FAILED.value, retryable=False, next_attempt_at=None,
                    error_message=(
                        f"file changed in the source after it was loaded ({described}) and on_file_change=fail: "
                        f"run `loader-assets reprocess --table {self.table_name} --file <path>` to load the new "
                        "version (it replaces the old rows), or `loader-assets skip` to keep the old one"
                    ),
                )
            rows_out.append(updated)
            changes.append(FileChange(row["file_path"], old, row["_fp"], version, action, row["status"],
                                      row["batch_id"], row["row_count"]))
        return pa.Table.from_pylist(rows_out, schema=TRACKER_SCHEMA), changes

    def _transition(
        self,
        paths: Sequence[str],
        operation: str,
        change: Callable[[pa.Table], pa.Table],
        allowed_from: Sequence[FileStatus] | None = None,
    ) -> int:
        """Move ``paths`` by the named transition of ``core.states.TRANSITIONS`` (or only from ``allowed_from``,
        a subset of its sources); ``change`` gives the rows' new values. One commit. A path in another status,
        or unknown, fails the whole transition."""
        sources = sources_of(operation)
        allowed_from = tuple(allowed_from) if allowed_from is not None else sources
        assert set(allowed_from) <= set(sources), (operation, allowed_from)
        moved_to = target_of(operation).value
        wanted = list(dict.fromkeys(paths))

        def make_rows(table: DeltaTable) -> pa.Table:
            rows = self._scan(table, statuses=allowed_from, paths=wanted)
            if rows.num_rows < len(wanted):
                found = set(rows["file_path"].to_pylist())
                others = self._scan(table, ["file_path", "status"], paths=[p for p in wanted if p not in found])
                if others.num_rows:
                    first = others.slice(0, 1).to_pylist()[0]
                    raise TrackerError(
                        f"tracker of table {self.table_name!r}: cannot {operation} {first['file_path']!r} "
                        f"from status {first['status']!r}"
                    )
                missing = len(wanted) - rows.num_rows
                raise TrackerError(f"tracker of table {self.table_name!r}: {operation} of {missing} unknown files")
            return _replace(change(rows), status=moved_to)

        return self._merge(make_rows, operation, from_statuses=allowed_from)

    def claim(
        self,
        paths: Sequence[str],
        batch_id: str,
        batch_seq: int,
        run_id: str,
        content_hashes: Mapping[str, str] | None = None,
        reclaim: bool = False,
    ) -> int:
        """pending | failed -> processing, stamped with the batch (and each file's sha256 when computed). One
        commit. ``reclaim`` moves files already ``processing`` in this run to a new batch (a bisected batch)."""
        now = _now()

        def change(rows: pa.Table) -> pa.Table:
            columns: dict[str, object] = dict(
                batch_id=batch_id,
                batch_seq=batch_seq,
                run_id=run_id,
                processing_start_time=now,
                processing_end_time=None,
                next_attempt_at=None,
                updated_at=now,
            )
            if content_hashes:
                hashes = [content_hashes.get(p, h) for p, h in zip(
                    rows["file_path"].to_pylist(), rows["content_hash"].to_pylist(), strict=True)]
                columns["content_hash"] = pa.array(hashes, pa.string())
            return _replace(rows, **columns)

        return self._transition(paths, "reclaim" if reclaim else "claim", change)

    def complete(
        self,
        row_counts: Mapping[str, int],
        batch_id: str,
        target_version: int | None,
        quarantined: Mapping[str, int] | None = None,
        expectations: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> int:
        """processing -> completed with each file's row count (and quarantined rows, and its expectation
        results) and the target commit version. One commit."""
        now = _now()
        quarantined = quarantined or {}

        def change(rows: pa.Table) -> pa.Table:
            paths = rows["file_path"].to_pylist()
            counts = [int(row_counts.get(path, 0)) for path in paths]
            return _replace(
                rows,
                row_count=pa.array(counts, pa.int64()),
                quarantined_rows=pa.array([quarantined.get(p) for p in paths], pa.int64()),
                expectation_results=_expectation_results(paths, expectations),
                retry_count=0,
                retryable=None,
                next_attempt_at=None,
                target_version=target_version,
                error_message=None,
                processing_end_time=now,
                updated_at=now,
                batch_id=batch_id,
            )

        return self._transition(list(row_counts), "complete", change)

    def fail(
        self,
        errors: Mapping[str, str],
        count_retry: bool = True,
        backoff: Callable[[int], float] | None = None,
        run_id: str | None = None,
        expectations: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> int:
        """processing | pending -> failed with the error; ``retry_count`` grows by one (unless the failure is an
        interruption) and, with ``backoff`` (retry_count -> seconds), the next attempt waits; ``run_id`` names the
        run that found a file it never claimed failed (one no longer in the source). One commit."""
        now = _now()

        def change(rows: pa.Table) -> pa.Table:
            messages = [errors[path] for path in rows["file_path"].to_pylist()]
            retries = rows["retry_count"]
            next_at: object = None
            if count_retry:
                retries = pc.add(pc.fill_null(retries, 0), pa.scalar(1, pa.int32()))
                if backoff is not None:
                    next_at = pa.array(
                        [now + timedelta(seconds=backoff(int(r))) for r in retries.to_pylist()], TIMESTAMP
                    )
            failed = _replace(
                rows,
                error_message=pa.array(messages, pa.string()),
                expectation_results=_expectation_results(rows["file_path"].to_pylist(), expectations),
                retry_count=retries,
                next_attempt_at=next_at,
                processing_end_time=now,
                updated_at=now,
            )
            return _replace(failed, run_id=run_id) if run_id is not None else failed

        return self._transition(list(errors), "fail", change)

    def release(self, seen: Mapping[str, tuple[int, datetime]], message: str) -> int:
        """processing -> pending with the size and modification time seen now, no retry used: a file that was
        still being written is loaded once it stops changing. One commit."""
        now = _now()

        def change(rows: pa.Table) -> pa.Table:
            paths = rows["file_path"].to_pylist()
            sizes = pa.array([seen[p][0] for p in paths], pa.int64())
            mtimes = pa.array([seen[p][1] for p in paths], TIMESTAMP)
            prints = fingerprint(sizes, mtimes)
            return _replace(
                rows, file_size=sizes, file_modified_time=mtimes,
                fingerprint=prints, source_fingerprint=prints, error_message=message, updated_at=now,
                processing_end_time=now,
            )

        return self._transition(list(seen), "release", change)

    def skip(
        self,
        reasons: Mapping[str, str],
        content_hashes: Mapping[str, str] | None = None,
        seen: Mapping[str, tuple[int, datetime]] | None = None,
    ) -> int:
        """pending | failed -> skipped with the reason (an operator's, or the duplicate it is). One commit.
        ``seen`` gives the size and modification time the file has now: the skip covers the version in the
        source when it is given (a new version number when it differs from the tracker's, whose content hash
        is then unknown), so only a later delivery brings the file back (docs/CONTRACT.md, "Exactly
        once")."""
        now = _now()
        seen = seen or {}

        def change(rows: pa.Table) -> pa.Table:
            paths = rows["file_path"].to_pylist()
            columns: dict[str, object] = dict(
                error_message=pa.array([reasons[p] for p in paths], pa.string()),
                next_attempt_at=None,
                processing_end_time=now,
                updated_at=now,
            )
            hashes = dict(zip(paths, rows["content_hash"].to_pylist(), strict=True))
            if seen:
                source = _source_version(rows, seen)
                columns.update(source)
                moved = [new != old for new, old in zip(source["fingerprint"].to_pylist(),
                                                        rows["fingerprint"].to_pylist(), strict=True)]
                hashes = {p: (None if m else h) for (p, h), m in zip(hashes.items(), moved, strict=True)}
            if content_hashes:
                hashes.update({p: h for p, h in content_hashes.items() if p in hashes})
            if seen or content_hashes:
                columns["content_hash"] = pa.array([hashes[p] for p in paths], pa.string())
            return _replace(rows, **columns)

        return self._transition(list(reasons), "skip", change)

    def requeue(
        self,
        paths: Sequence[str],
        action: str,
        message: str,
        seen: Mapping[str, tuple[int, datetime]] | None = None,
    ) -> int:
        """-> pending with a fresh retry budget: the operator's ``retry`` (failed files) or ``reprocess``
        (completed, skipped or failed files), named by ``action``. Rows of an earlier load
        stay recorded (batch, row count, target version), so the reload replaces them. ``seen`` gives the size
        and modification time the file has now: the version to load is the one in the source (a new version
        number when it differs). One commit."""
        now = _now()
        seen = seen or {}

        def change(rows: pa.Table) -> pa.Table:
            columns: dict[str, object] = dict(
                retry_count=0, retryable=None, next_attempt_at=None,
                error_message=message, updated_at=now,
            )
            if seen:
                columns.update(_source_version(rows, seen))
            return _replace(rows, **columns)

        return self._transition(paths, action, change)


def table_tracker(checkpoint_path: str, storage: StorageConfig, table_name: str) -> FileTracker:
    """The tracker of one table under ``checkpoint_path``; what ``DeltaTrackerResource.for_table`` returns,
    without building the Dagster resource (about 15 ms each: Dagster infers its config schema on every
    construction), for code that runs outside a Dagster run (``api.run_pipeline``)."""
    return FileTracker(f"{checkpoint_path.rstrip('/')}/{TRACKER_DIR}/{table_name}", table_name,
                       storage_options(storage))


class DeltaTrackerResource(dg.ConfigurableResource):
    """File tracker for every table, as Delta tables under ``checkpoint_path``.

    Example::

        tracker = DeltaTrackerResource(checkpoint_path="/data/checkpoints")
        tracker.for_table("transactions").status_counts()
    """

    checkpoint_path: str
    storage: StorageConfig = Field(default_factory=LocalConfig, discriminator="provider")

    @classmethod
    def from_settings(cls, settings: LoaderSettings) -> "DeltaTrackerResource":
        return cls(checkpoint_path=settings.checkpoint_path, storage=settings.state_storage)

    def for_table(self, table_name: str) -> FileTracker:
        return table_tracker(self.checkpoint_path, self.storage, table_name)

    def read_all(self, table_names: Sequence[str]) -> pa.Table:
        """The logical ``file_processing_tracker``: every table's rows in one Arrow table."""
        parts = [self.for_table(name).read() for name in table_names]
        return pa.concat_tables(parts) if parts else TRACKER_SCHEMA.empty_table()
