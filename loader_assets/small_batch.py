"""The small-batch engine: a plain append of a few parquet files, committed with delta-rs in this process.

Spark costs about a second per query whatever the size of the data, and a JVM start costs 20 s; most landing
zones receive small files often, so that fixed cost is what users feel (benchmark P10). An append batch whose
result is, by construction, what the Spark path would commit goes through here instead: the files are read
with pyarrow, stamped with the audit columns, written as one data file per source file, and committed with
delta-rs as one commit carrying the batch's txn and userMetadata, exactly as the Spark path's commit does
(``writers/append.py``). Nothing about the protocol changes: claim, crash windows, recovery and checks read the
same facts from the tracker and the target's log (docs/ARCHITECTURE.md, "The small-batch engine").

A batch takes this path only when nothing in it needs Spark's semantics, so the two engines cannot disagree:

- ``small_batch_max_bytes`` is above 0 and the files total at most that many bytes (it bounds the memory a
  batch takes in this process);
- the table is append, parquet, with no expectations and ``schema_evolution`` fail or add_new_columns (rescue
  writes ``_rescued_data``);
- the batch does not replace rows (``ClaimedBatch.replace``: a reload goes through Spark's ``replaceWhere``);
- the target exists (Spark creates it, with its protocol and properties), is not partitioned, has no column
  mapping, constraints, generated or identity columns or invariants, all its columns are nullable, and its
  protocol asks for no writer feature beyond append-only;
- every file's columns are the table's data columns with the same Arrow types, in any order: nothing to cast,
  widen, evolve or fail. Anything else (a new column, a widened type, a bad footer, a file pyarrow cannot read)
  goes to Spark, which decides and reports it as it always does.

The commit is made on the snapshot where the target's txn for the table was seen below ``batch_seq``: if the
txn is already recorded, nothing is written (as Delta-Spark skips such a write), and a concurrent commit of the
same txn application makes this commit fail with a conflict (delta-rs checks the app ids a commit carries), so
a writer that lost its lease cannot land after the new holder. Data files are written before the commit; a
crash between leaves files no commit references (``VACUUM`` removes them), exactly as a killed Spark write does.
The named crash point ``during_target_write`` is that instant on this path.

After the commit the engine writes the checkpoint Delta-Spark would have written had it made the commit
(``checkpoint_like_spark``): at every version that is a multiple of 10 (Spark's default
``delta.checkpointInterval``) when the table does not set the property, where delta-rs's own post-commit hook
would wait for 100 commits. Without it each open of the table replays every JSON commit since the last
checkpoint: 22 ms at 99 commits against 2.6 ms at 10, and a small run opens its target about 14 times. A kill
between the commit and the checkpoint leaves the commit whole and only skips that checkpoint (the next multiple
writes one); delta-rs writes the checkpoint file whole or not at all; a failed checkpoint is logged and changes
nothing else.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loader_assets.batch import ClaimedBatch
from loader_assets.core import faults
from loader_assets.core.discovery import resolve
from loader_assets.reading import BATCH_ID_COLUMN, LOAD_TIMESTAMP_COLUMN, SOURCE_FILE_COLUMN, ExpectedFile
from loader_assets.settings import FileFormat, LoaderSettings, LoadingStrategy, SchemaEvolution, TableSettings
from loader_assets.target import open_target

logger = logging.getLogger(__name__)

# writer features a plain append needs nothing for (appendOnly only forbids removing files)
_WRITABLE_FEATURES = {"appendOnly"}
DEFAULT_INDEXED_COLUMNS = 32  # delta.dataSkippingNumIndexedCols when the table does not set it
WRITER_THREADS = max(2, min(4, os.cpu_count() or 1))  # data files of a batch written at once
MAX_STAT_STRING = 4096  # longer strings get no min/max (a bound must be a whole value here; see _column_stats)
CHECKPOINT_INTERVAL_PROPERTY = "delta.checkpointInterval"
SPARK_CHECKPOINT_INTERVAL = 10  # the property's default in Delta-Spark


@dataclass(frozen=True)
class SmallBatch:
    """A batch read into Arrow, ready to commit: per file, its rows in the target's column order (audit columns
    still to be stamped), and the target's Arrow schema."""

    files: tuple[tuple[str, pa.Table], ...]
    schema: pa.Schema

    @property
    def rows(self) -> dict[str, int]:
        return {path: table.num_rows for path, table in self.files}


def _normalised(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    return kind


def table_refusal(table: TableSettings, settings: LoaderSettings) -> str | None:
    """Why none of the table's batches can take this path (None: a batch may, see ``plan_small_batch``)."""
    if table.loading_strategy is not LoadingStrategy.APPEND:
        return f"loading_strategy {table.loading_strategy.value}"
    return input_refusal(table, settings)


def input_refusal(table: TableSettings, settings: LoaderSettings) -> str | None:
    """Why no small-batch engine reads this table's files (both engines read parquet with pyarrow and leave
    expectations and rescue to Spark); None when one may."""
    if settings.small_batch_max_bytes <= 0:
        return "small_batch_max_bytes is 0"
    if table.file_format is not FileFormat.PARQUET:
        return f"file_format {table.file_format.value}"
    if table.expectations:
        return "the table has expectations"
    if table.schema_evolution is SchemaEvolution.RESCUE:
        return "schema_evolution rescue"
    return None


def _target_refusal(target: Any) -> str | None:  # noqa: ANN401 - a deltalake.DeltaTable
    metadata, protocol = target.metadata(), target.protocol()
    if metadata.partition_columns:
        return "the target is partitioned"
    configuration = metadata.configuration or {}
    if (configuration.get("delta.columnMapping.mode") or "none") != "none":
        return "the target uses column mapping"
    if any(key.startswith("delta.constraints.") for key in configuration):
        return "the target has CHECK constraints"
    if str(configuration.get("delta.enableDeletionVectors", "false")).lower() == "true":
        return "the target has deletion vectors enabled"
    features = set(protocol.writer_features or [])
    if protocol.min_writer_version > 7 or features - _WRITABLE_FEATURES or \
            (protocol.min_writer_version > 2 and protocol.writer_features is None):
        return f"the target's writer protocol ({protocol.min_writer_version}, {sorted(features)})"
    schema = pa.schema(target.schema().to_arrow())
    for field in schema:
        if not field.nullable:
            return f"column {field.name} is NOT NULL"
        if any(key.decode().startswith("delta.") for key in (field.metadata or {})):
            return f"column {field.name} has Delta metadata (invariant, generated or identity)"
    return None


def plan_small_batch(table: TableSettings, settings: LoaderSettings, files: Sequence[ExpectedFile],
                     replace: bool) -> SmallBatch | str:
    """The batch of ``files`` read for the small-batch engine, or why it goes to Spark (see the module
    docstring). Reads each file whole with pyarrow: call it only for files that passed their precheck."""
    refusal = table_refusal(table, settings)
    if refusal:
        return refusal
    if replace:
        return "the batch replaces rows its files may have"
    total = sum(f.size for f in files)
    if total > settings.small_batch_max_bytes:
        return f"{total} bytes is above small_batch_max_bytes ({settings.small_batch_max_bytes})"
    target = open_target(settings.table_path(table.table_name))
    if target is None:
        return "the target does not exist yet (Spark creates it)"
    refusal = _target_refusal(target)
    if refusal:
        return refusal
    schema = pa.schema(target.schema().to_arrow())
    own = table.loader_columns()
    data = pa.schema([f for f in schema if f.name not in own])
    if set(schema.names) - set(data.names) != own:
        return "the target's loader columns are not the table's"
    read = read_parquet_files(files, data)
    if isinstance(read, str):
        return read
    return SmallBatch(tuple(read), schema)


def read_parquet_files(files: Sequence[ExpectedFile], data: pa.Schema) -> list[tuple[str, pa.Table]] | str:
    """Each file's rows in ``data``'s column order and types, or why the files go to Spark: a file pyarrow
    cannot read, or whose columns are not ``data``'s with the same Arrow types (in any order; a column of
    Arrow's null type, all NULL, fits any type, as on the Spark path: ``reading._FileFrame``). Every footer is
    read first (cheap), then the rows, so a misfit late in the batch costs no row read."""
    wanted = {f.name: _normalised(f.type) for f in data}

    def fits(columns: pa.Schema) -> bool:
        got = {f.name: _normalised(f.type) for f in columns}
        return got.keys() == wanted.keys() and all(
            got[name].equals(kind) or pa.types.is_null(got[name]) for name, kind in wanted.items())

    read: list[tuple[str, pa.Table]] = []
    for reading in (False, True):
        for expected in files:
            filesystem, fs_path = resolve(expected.path)
            try:
                with filesystem.open_input_file(fs_path) as handle:
                    found = pq.read_table(handle) if reading else pq.read_schema(handle)
            except Exception as error:  # Spark reads it and reports why it cannot, as for any file
                return f"pyarrow cannot read {expected.path}: {str(error)[:200]}"
            if not fits(found.schema if reading else found):
                return f"the columns of {expected.path} are not the table's with the same types"
            if reading:
                read.append((expected.path, found.select(data.names).cast(data)))
    return read


def _indexed(schema: pa.Schema, configuration: Mapping[str, str | None]) -> set[str]:
    """Top-level columns that get statistics, as Delta chooses them: ``delta.dataSkippingStatsColumns``, else the
    first ``delta.dataSkippingNumIndexedCols`` leaf columns (32 by default; -1: all)."""
    named = configuration.get("delta.dataSkippingStatsColumns")
    if named:
        return {name.strip().strip("`") for name in named.split(",")}
    limit = int(configuration.get("delta.dataSkippingNumIndexedCols") or DEFAULT_INDEXED_COLUMNS)
    chosen, leaves = set(), 0
    for field in schema:
        width = len(field.flatten()) if pa.types.is_struct(field.type) else 1
        if limit >= 0 and leaves + width > limit:
            break
        chosen.add(field.name)
        leaves += width
    return chosen


def _stat_timestamp(value: datetime, up: bool) -> str:
    """A UTC timestamp bound at Delta's millisecond precision: rounded down for a minimum, up for a maximum."""
    floor = value.replace(microsecond=value.microsecond // 1000 * 1000)
    if up and floor != value:
        floor += timedelta(milliseconds=1)
    return floor.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{floor.microsecond // 1000:03d}Z"


def _column_stats(column: pa.ChunkedArray) -> tuple[Any, Any] | None:
    """(min, max) as the Delta log writes them, or None when this column gets none: types whose bounds
    this engine does not write (bool, decimal, binary, nested, timestamps without a time zone), floats holding
    NaN or infinities, strings longer than ``MAX_STAT_STRING``, and columns of only NULLs. Leaving a bound out
    is always safe (a reader then cannot skip the file on it); a wrong bound is not."""
    kind = column.type
    if column.null_count == len(column):
        return None
    if pa.types.is_integer(kind):
        low, high = pc.min_max(column).values()
        return int(low.as_py()), int(high.as_py())
    if pa.types.is_floating(kind):
        if pc.any(pc.invert(pc.is_finite(column))).as_py():
            return None
        low, high = pc.min_max(column).values()
        return float(low.as_py()), float(high.as_py())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if pc.max(pc.utf8_length(column)).as_py() > MAX_STAT_STRING:
            return None
        low, high = pc.min_max(column).values()
        return low.as_py(), high.as_py()
    if pa.types.is_date32(kind):
        low, high = pc.min_max(column).values()
        return low.as_py().isoformat(), high.as_py().isoformat()
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        low, high = pc.min_max(pc.cast(column, pa.timestamp("us", "UTC"))).values()
        return _stat_timestamp(low.as_py(), up=False), _stat_timestamp(high.as_py(), up=True)
    return None


def delta_stats(rows: pa.Table, indexed: set[str]) -> str:
    """The ``stats`` JSON of an add action for a data file holding ``rows``: ``numRecords`` exact, and for each
    indexed top-level column its ``nullCount`` (structs left out) and, where ``_column_stats`` gives them, its
    minimum and maximum."""
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name in rows.column_names:
        if name not in indexed:
            continue
        column = rows[name]
        if pa.types.is_struct(column.type):
            continue
        nulls[name] = int(column.null_count)
        bounds = _column_stats(column)
        if bounds is not None:
            minimum[name], maximum[name] = bounds
    # every bound is already a JSON value (ints, floats, strings; dates and timestamps as Delta's strings)
    return json.dumps({"numRecords": rows.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": nulls})


def _stamped(rows: pa.Table, schema: pa.Schema, path: str, batch_id: str, loaded_at: datetime) -> pa.Table:
    """``rows`` with the audit columns, in the target's column order and types."""
    count = rows.num_rows
    audit = {
        SOURCE_FILE_COLUMN: pa.repeat(pa.scalar(path, pa.string()), count),
        LOAD_TIMESTAMP_COLUMN: pa.repeat(pa.scalar(loaded_at, pa.timestamp("us", "UTC")), count),
        BATCH_ID_COLUMN: pa.repeat(pa.scalar(batch_id, pa.string()), count),
    }
    columns = [audit[f.name] if f.name in audit else rows[f.name] for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def commit_small_batch(batch: ClaimedBatch, small: SmallBatch) -> bool:
    """Write ``small`` as the one commit of ``batch`` (see the module docstring). Returns False, writing
    nothing, when the target already recorded the batch's txn (as Delta-Spark skips such a write); raises when
    the commit fails (a conflict included), in which case it did not land."""
    from deltalake import Transaction

    target = open_target(batch.target_path)
    if target is None:
        raise RuntimeError(f"the target of table {batch.table_name!r} vanished at {batch.target_path}")
    if (target.transaction_version(batch.app_id) or 0) >= batch.batch_seq:
        return False
    loaded_at = datetime.now(UTC)
    stamped = [_stamped(rows, small.schema, path, batch.batch_id, loaded_at) for path, rows in small.files
               if rows.num_rows]
    commit_data_files(target, batch.target_path, stamped, Transaction(batch.app_id, batch.batch_seq),
                      batch.user_metadata(), faults.DURING_TARGET_WRITE)
    return True


def commit_data_files(target: Any, table_path: str, tables: Sequence[pa.Table], txn: Any,  # noqa: ANN401
                      user_metadata: str, crash_point: str | None = None) -> None:
    """Write each of ``tables`` (rows already in the table's column order and types) as one data file of the
    Delta table at ``table_path``, side by side, then commit them as one append on ``target``'s snapshot,
    carrying ``txn`` (a delta-rs ``Transaction``) and ``user_metadata``, and write the checkpoint Spark would
    (``checkpoint_like_spark``). ``crash_point`` names the instant between the files and the commit."""
    from deltalake import CommitProperties
    from deltalake.transaction import AddAction

    configuration = target.metadata().configuration or {}
    indexed = _indexed(pa.schema(target.schema().to_arrow()), configuration)
    added_at = math.floor(datetime.now(UTC).timestamp() * 1000)

    def data_file(rows: pa.Table) -> AddAction:
        name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
        filesystem, fs_path = resolve(f"{table_path.rstrip('/')}/{name}")
        with filesystem.open_output_stream(fs_path) as sink:
            pq.write_table(rows, sink, compression="snappy")
        size = filesystem.get_file_info(fs_path).size
        return AddAction(name, int(size or 0), {}, added_at, True, delta_stats(rows, indexed))

    # pyarrow's encoding and writing release the GIL
    with ThreadPoolExecutor(max_workers=WRITER_THREADS) as pool:
        actions = list(pool.map(data_file, tables))
    if crash_point:
        faults.crash_point(crash_point)  # the data files are written, the commit is not
    properties = CommitProperties(app_transactions=[txn], custom_metadata={"userMetadata": user_metadata})
    target.create_write_transaction(actions, mode="append", schema=target.schema(), commit_properties=properties)
    checkpoint_like_spark(target, configuration)


def checkpoint_like_spark(target: Any, configuration: Mapping[str, str | None]) -> int | None:  # noqa: ANN401
    """Write the checkpoint Delta-Spark writes after a commit, on a table that does not set
    ``delta.checkpointInterval``: at every version that is a multiple of Spark's default interval. A table that
    sets the property is left to delta-rs's post-commit hook, which follows it (checkpointing the version before
    each multiple: 9, 19, ... for 10); without the property the hook waits for 100 commits (99, 199, ...).
    ``target`` is the handle the commit was made with; it is brought to the table's latest version first (a
    checkpoint of any version is valid, whoever committed it). Returns the version checkpointed, or None."""
    if configuration.get(CHECKPOINT_INTERVAL_PROPERTY):
        return None
    try:
        target.update_incremental()
        version = target.version()
        if not version or version % SPARK_CHECKPOINT_INTERVAL:
            return None
        target.create_checkpoint()
        return version
    except Exception as error:  # the commit has landed; a missing checkpoint only makes opening it slower
        logger.warning("no checkpoint written after the commit to %s: %s", target.table_uri, error)
        return None
