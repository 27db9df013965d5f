"""Opening and reading the loader's own state tables (tracker, lock, event log) with delta-rs: telling "absent"
from "damaged" (``open_state_table``), reading rows without deltalake's per-file statistics expressions
(``read_state_table``), and keeping the handles of reads up to date instead of opening them again
(``read_latest``). Commits always go through a freshly opened handle.

The state tables live under ``checkpoint_path`` on any store delta-rs writes to. Where they live and with which
credentials is a dagster-deltalake storage config (``LocalConfig``, ``S3Config``, ``AzureConfig``,
``GcsConfig``: the ``state_storage`` setting); ``storage_options`` turns it into delta-rs's options. Secrets are
best left out of it: delta-rs reads the usual environment variables (``AWS_ACCESS_KEY_ID`` and so on) itself.
"""

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from dagster_deltalake import AzureConfig, GcsConfig, LocalConfig, S3Config
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from deltalake.fs import DeltaStorageHandler

from loader_assets.core.discovery import resolve
from loader_assets.core.errors import TrackerError

StorageConfig = LocalConfig | S3Config | AzureConfig | GcsConfig

# Table properties of every state table (tracker, lock, event log) a write creates. Each lock acquire, renewal
# and release and each tracker transition is a commit; delta-rs checkpoints after every 10th, so opening a
# state table replays at most 9 JSON commits (about 5 ms; delta-rs's default interval is 100).
STATE_TABLE_PROPERTIES = {"delta.checkpointInterval": "10"}


# Reader features a state table never has; a table with one is read by deltalake's own reader (which refuses it).
_FEATURES_READ_ELSEWHERE = frozenset({"deletionVectors", "columnMapping"})

__all__ = ["STATE_TABLE_PROPERTIES", "LocalConfig", "StorageConfig", "open_state_table", "read_latest",
           "read_state_table", "storage_options"]

T = TypeVar("T")

# How long a handle kept by ``read_latest`` is brought up to date instead of opened again.
HANDLE_MAX_AGE_SECONDS = 30.0
MAX_KEPT_HANDLES = 64  # above this, a read drops the kept handles older than HANDLE_MAX_AGE_SECONDS
_handles: dict[tuple[int, str, tuple[tuple[str, str], ...]], tuple[DeltaTable, tuple[int, int, int], float]] = {}
_handles_lock = threading.Lock()


def storage_options(config: StorageConfig | None) -> dict[str, str]:
    """delta-rs ``storage_options`` of a dagster-deltalake storage config (its ``provider`` tag left out)."""
    if config is None:
        return {}
    return {key: value for key, value in config.str_dict().items() if key != "provider"}


def _has_files(path: str) -> bool:
    filesystem, fs_path = resolve(path)
    try:
        found = filesystem.get_file_info(pafs.FileSelector(fs_path, recursive=False, allow_not_found=True))
    except OSError:
        return False
    return bool(found)


def open_state_table(path: str, damaged_hint: str, options: Mapping[str, str] | None = None) -> DeltaTable | None:
    """The Delta table at ``path``; None when nothing is there yet.

    A directory that has files but no readable Delta log is damaged: that raises TrackerError with
    ``damaged_hint`` instead of being treated as absent, so state is never silently recreated empty.
    """
    try:
        return DeltaTable(path, storage_options=dict(options or {}) or None)
    except TableNotFoundError:
        if _has_files(path):
            raise TrackerError(f"{path} exists but is not a readable Delta table; {damaged_hint}") from None
        return None


def read_state_table(table: DeltaTable, columns: Sequence[str] | None = None,
                     partition_values: Mapping[str, Sequence[str]] | None = None) -> pa.Table:
    """The rows of the snapshot ``table`` (only ``columns``; only the files of the partitions whose values are in
    ``partition_values``, column by column), as ``DeltaTable.to_pyarrow_table`` reads them.

    The dataset is built from the log's add actions with each file's partition values as its only expression.
    deltalake's own reader also turns every file's column statistics into a pruning expression (min, max and
    null count of every column): on a tracker of seven small files that costs 12 ms to build and more to
    evaluate, against 1-8 ms for the whole read here, and a state-table read only ever filters on its
    partitions. A run reads its tracker about a dozen times (docs/ARCHITECTURE.md, "A small run's fixed cost").
    Files written without a partition column's values read it as NULL; columns added after a file was written
    read as NULL in it, as in deltalake's reader. A table with deletion vectors or column mapping (never one of
    ours) goes to deltalake's reader, which refuses it."""
    wanted = list(columns) if columns is not None else None
    protocol = table.protocol()
    if protocol.reader_features and _FEATURES_READ_ELSEWHERE & set(protocol.reader_features):
        filters = [(name, "in", list(values)) for name, values in (partition_values or {}).items()]
        return table.to_pyarrow_table(columns=wanted, filters=filters or None)
    schema = pa.schema(table.schema().to_arrow())
    partitions = list(table.metadata().partition_columns)
    actions = pa.table(table.get_add_actions(flatten=True))
    for name, values in (partition_values or {}).items():
        if name not in partitions:
            raise ValueError(f"{name!r} is not a partition column of {table.table_uri}")
        actions = actions.filter(pc.is_in(actions[f"partition.{name}"], pa.array(list(values), pa.string())))
    filesystem = pafs.PyFileSystem(DeltaStorageHandler.from_table(
        table._table, table._storage_options, table._table.get_add_file_sizes()))  # noqa: SLF001 - as deltalake's reader
    parquet = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=True))
    fragments = []
    for row in actions.select(["path", *[f"partition.{name}" for name in partitions]]).to_pylist():
        expression = pc.scalar(True)
        for name in partitions:
            value = row[f"partition.{name}"]
            expression = expression & (pc.field(name).is_null() if value is None
                                       else pc.field(name) == pa.scalar(value).cast(schema.field(name).type))
        fragments.append(parquet.make_fragment(row["path"], filesystem=filesystem, partition_expression=expression))
    return ds.FileSystemDataset(fragments, schema, parquet, filesystem).to_table(columns=wanted)


def _local_directory(path: str) -> str | None:
    """The directory of a table on the local filesystem; None for a table in an object store."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else path


def _commit_stamp(directory: str, version: int) -> tuple[int, int, int] | None:
    """What identifies the commit file of ``version``: its inode, modification time (ns) and size; None when it
    is not there."""
    try:
        found = os.stat(os.path.join(directory, "_delta_log", f"{version:020d}.json"))
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


def read_latest(path: str, damaged_hint: str, options: Mapping[str, str] | None,
                read: Callable[[DeltaTable], T]) -> T | None:
    """``read`` of the state table's latest snapshot; None when there is no table (``open_state_table``).

    For reads only: ``read`` must not commit through the table, nor keep it. Opening a state table costs
    5-8 ms (delta-rs loads its checkpoint and the commits after it) and a run reads its tracker and lock about
    twenty times (docs/ARCHITECTURE.md, "A small run's fixed cost"), so a read of a local table keeps the
    handle it opened and the next read of the same table in this process brings it up to date with
    ``update_incremental`` (under 1 ms: it lists the log for newer commits and applies them). That is the
    snapshot a fresh open gives as long as the log only grew, which the handle checks first: the commit file of
    the version it holds must still be the one it read (same inode, modification time and size). A table
    deleted and created again (its log starts over) fails that check and is opened afresh, as is a handle
    older than ``HANDLE_MAX_AGE_SECONDS`` (so no commit it would need can have been cleaned from the log) or
    one from another process (a forked child never touches its parent's handles). A handle is out of the
    cache while a read uses it, so no two threads share one; tables in object stores are opened each time.
    """
    directory = _local_directory(path)
    if directory is None:
        table = open_state_table(path, damaged_hint, options)
        return None if table is None else read(table)
    key = (os.getpid(), path, tuple(sorted((options or {}).items())))
    with _handles_lock:
        entry = _handles.pop(key, None)
    table: DeltaTable | None = None
    opened = time.monotonic()
    if entry is not None:
        cached, stamp, cached_opened = entry
        if opened - cached_opened <= HANDLE_MAX_AGE_SECONDS and _commit_stamp(directory, cached.version()) == stamp:
            try:
                cached.update_incremental()
            except Exception:  # noqa: BLE001 - whatever went wrong, a fresh open decides
                pass
            else:
                table, opened = cached, cached_opened
    if table is None:
        table = open_state_table(path, damaged_hint, options)
        if table is None:
            return None
    result = read(table)
    stamp = _commit_stamp(directory, table.version())
    if stamp is not None:
        with _handles_lock:
            _handles.setdefault(key, (table, stamp, opened))
            if len(_handles) > MAX_KEPT_HANDLES:  # a process that read many tables: drop the handles too old to use
                for old in [k for k, (_, _, at) in _handles.items() if time.monotonic() - at > HANDLE_MAX_AGE_SECONDS]:
                    del _handles[old]
    return result
