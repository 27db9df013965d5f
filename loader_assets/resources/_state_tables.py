"""Opening the loader's own state tables (tracker, lock, event log) with delta-rs, telling "absent" from "damaged".

The state tables live under ``checkpoint_path`` on any store delta-rs writes to. Where they live and with which
credentials is a dagster-deltalake storage config (``LocalConfig``, ``S3Config``, ``AzureConfig``,
``GcsConfig``: the ``state_storage`` setting); ``storage_options`` turns it into delta-rs's options. Secrets are
best left out of it: delta-rs reads the usual environment variables (``AWS_ACCESS_KEY_ID`` and so on) itself.
"""

from collections.abc import Mapping, Sequence

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

__all__ = ["STATE_TABLE_PROPERTIES", "LocalConfig", "StorageConfig", "open_state_table", "read_state_table",
           "storage_options"]


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
    protocol = table.protocol()
    if protocol.reader_features and _FEATURES_READ_ELSEWHERE & set(protocol.reader_features):
        filters = [(name, "in", list(values)) for name, values in (partition_values or {}).items()]
        return table.to_pyarrow_table(columns=list(columns) if columns is not None else None,
                                      filters=filters or None)
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
    return ds.FileSystemDataset(fragments, schema, parquet, filesystem).to_table(
        columns=list(columns) if columns is not None else None)
