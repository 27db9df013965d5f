"""What the loader reads from a target table's Delta log with delta-rs (no Spark): its txn version and commits.

Every commit a batch makes on a target carries ``txnAppId = loader_assets/<table>`` and ``txnVersion =
batch_seq`` and names the batch in its ``userMetadata`` (docs/CONTRACT.md, "The protocol"). So the target itself
says which batches landed: ``txn_version`` is the highest batch_seq it recorded, and ``batch_commit`` finds the
commit of one batch. Recovery, planning and the checks decide from these facts, never from a run's memory.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

APP_ID_PREFIX = "loader_assets/"


def app_id(table_name: str) -> str:
    """The Delta txnAppId every commit of this table carries."""
    return f"{APP_ID_PREFIX}{table_name}"


def sql_table(path: str) -> str:
    """The Delta table at ``path`` as a Spark SQL identifier (delta.`path`, backticks doubled). The loader's
    MERGE and DELETE go through SQL rather than delta-spark's ``DeltaTable`` builder: SQL works the same on a
    local session and over Spark Connect, where ``DeltaTable`` needs a server plugin (Delta Connect) that is not
    published for this Spark and Delta pair (docs/ARCHITECTURE.md, "Spark Connect")."""
    return "delta.`" + path.replace("`", "``") + "`"


def open_target(target_path: str) -> DeltaTable | None:
    """The target's Delta table, or None if it was never written."""
    try:
        return DeltaTable(target_path)
    except TableNotFoundError:
        return None


def target_exists(target_path: str) -> bool:
    """Whether a Delta table (a target or its change record) is at ``target_path``: a look at its ``_delta_log``
    (about 1 ms), where ``open_target`` loads the snapshot with every data file's action (10-20 ms on a target of
    a few hundred files). A run asks this about six times (docs/ARCHITECTURE.md, "A small run's fixed cost")."""
    return DeltaTable.is_deltatable(target_path)


@dataclass(frozen=True)
class TargetSnapshot:
    """The target's latest state from its Delta log: commit version, row count, columns (name, Delta type)."""

    version: int
    row_count: int | None  # None when a data file has no statistics (then the log cannot say)
    columns: tuple[tuple[str, str], ...]


def _type_name(delta_type: Any) -> str:
    """A Delta type as text: ``long``, ``array<string>``, ``map<string,long>``, ``struct<a:int,b:string>``."""
    kind = type(delta_type).__name__
    if kind == "ArrayType":
        return f"array<{_type_name(delta_type.element_type)}>"
    if kind == "MapType":
        return f"map<{_type_name(delta_type.key_type)},{_type_name(delta_type.value_type)}>"
    if kind == "StructType":
        return "struct<" + ",".join(f"{f.name}:{_type_name(f.type)}" for f in delta_type.fields) + ">"
    return str(getattr(delta_type, "type", delta_type))


def target_snapshot(target_path: str) -> TargetSnapshot | None:
    """The target's version, rows and columns from its log alone (the add actions' ``numRecords``; no data
    file is read), or None if the table was never written. The loader's tables have no deletion vectors, so
    the add actions' record counts sum to the table's rows."""
    table = open_target(target_path)
    if table is None:
        return None
    actions = pa.table(table.get_add_actions(flatten=True))
    counts = actions["num_records"] if actions.num_rows else pa.chunked_array([], pa.int64())
    rows = None if counts.null_count else int(pc.sum(counts).as_py() or 0)
    columns = tuple((f.name, _type_name(f.type)) for f in table.schema().fields)
    return TargetSnapshot(version=table.version(), row_count=rows, columns=columns)


NO_ROWS = pa.table({"file_path": pa.array([], pa.string()), "rows": pa.array([], pa.int64())})


def rows_per_source_file(target_path: str, source_column: str, batch_column: str,
                         files: Sequence[str] | None = None) -> pa.Table | None:
    """Rows per source file of the target, from its Delta log alone (no data file is read): a table of
    (``file_path``, ``rows``) for every file with rows (or, with ``files``, for those of them with rows), or None
    when the log cannot say exactly and the caller must count in Spark.

    Each data file's add action carries ``numRecords`` and the min, max and null count of every column. A data
    file whose ``source_column`` has min == max and no nulls holds rows of that one source file only (a string
    longer than Delta's statistics prefix is truncated, and a truncated max then differs from its min), so its
    ``numRecords`` are that file's. The log answers when every data file that may hold rows of the files asked
    for (every data file, without ``files``; with them, those whose [min, max] range holds one of them) is of one
    source file and of one batch (``batch_column`` min == max: rows of a file under two batch ids are a duplicate
    load, which the caller's Spark query names), and has statistics. Never for a table with deletion vectors
    (``numRecords`` would count deleted rows): the loader creates none, a user may turn them on."""
    actions = data_file_stats(target_path, source_column, batch_column)
    if actions is None:
        return None
    if actions.num_rows == 0:
        return NO_ROWS
    low, high = actions[f"min.{source_column}"], actions[f"max.{source_column}"]
    if files is not None:
        actions = actions.filter(holds_one_of(files, low, high))
        low, high = actions[f"min.{source_column}"], actions[f"max.{source_column}"]
    exact = pc.and_(
        pc.and_(pc.equal(low, high), pc.equal(actions[f"null_count.{source_column}"], 0)),
        pc.and_(pc.equal(actions[f"min.{batch_column}"], actions[f"max.{batch_column}"]),
                pc.is_valid(actions["num_records"])))
    if not pc.all(pc.fill_null(exact, False)).as_py() and actions.num_rows:
        return None
    per_file = (pa.table({"file_path": low, "rows": pc.cast(actions["num_records"], pa.int64()),
                          "batch": actions[f"min.{batch_column}"]})
                .group_by("file_path").aggregate([("rows", "sum"), ("batch", "min"), ("batch", "max")]))
    if not pc.all(pc.equal(per_file["batch_min"], per_file["batch_max"])).as_py():
        return None  # a file with rows under two batch ids: the caller's Spark query names them
    per_file = per_file.select(["file_path", "rows_sum"]).rename_columns(["file_path", "rows"])
    if files is not None:
        per_file = per_file.filter(pc.is_in(per_file["file_path"], pa.array(list(files), pa.string())))
    return per_file.filter(pc.greater(per_file["rows"], 0)).sort_by("file_path")


def data_file_stats(target_path: str, source_column: str, batch_column: str) -> pa.Table | None:
    """The statistics of the target's live data files from its Delta log, one row per file: its ``path``,
    ``num_records`` and the min, max and null count of ``source_column`` and of ``batch_column`` (flattened names such as
    ``min._source_file``); empty when the table does not exist or has no file. None when the log cannot be
    trusted to count rows: statistics not collected for these columns, or deletion vectors (``numRecords``
    would count deleted rows: the loader creates none, a user may turn them on)."""
    table = open_target(target_path)
    wanted = ["path", "num_records", f"min.{source_column}", f"max.{source_column}", f"null_count.{source_column}",
              f"min.{batch_column}", f"max.{batch_column}", f"null_count.{batch_column}"]
    empty = pa.table({name: pa.array([], pa.int64() if name.startswith(("num", "null")) else pa.string())
                      for name in wanted})
    if table is None:
        return empty
    if str(table.metadata().configuration.get("delta.enableDeletionVectors", "false")).lower() == "true" or \
            "deletionVectors" in (table.protocol().writer_features or []):
        return None
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return empty
    if any(name not in actions.column_names for name in wanted):
        return None  # statistics not collected for these columns
    return actions.select(wanted)


def files_added_by(target_path: str, version: int) -> set[str] | None:
    """The data files (paths as the log names them, percent-decoded) that commit ``version`` of the target
    added, read from its JSON commit; None if that file is gone (the log's retention removed it)."""
    from loader_assets.core.discovery import resolve

    filesystem, root = resolve(target_path.rstrip("/"))
    try:
        with filesystem.open_input_stream(f"{root}/_delta_log/{version:020d}.json") as stream:
            lines = stream.read().decode("utf-8").splitlines()
    except (FileNotFoundError, OSError):
        return None
    added = set()
    for line in lines:
        action = json.loads(line) if line.strip() else {}
        if "add" in action:
            added.add(unquote(action["add"]["path"]))
    return added


def holds_one_of(asked: Sequence[str], low: pa.ChunkedArray, high: pa.ChunkedArray) -> pa.Array:
    """Per data file, whether its [low, high] statistics range may hold one of ``asked`` (a missing bound: yes)."""
    ordered = sorted(set(asked))
    return pa.array([lo is None or hi is None or _holds_one(ordered, lo, hi)
                     for lo, hi in zip(low.to_pylist(), high.to_pylist(), strict=True)], pa.bool_())


def _holds_one(asked: list[str], low: str, high: str) -> bool:
    """Whether the sorted ``asked`` has a value in [low, high]."""
    at = bisect.bisect_left(asked, low)
    return at < len(asked) and asked[at] <= high


def history_counts(target_path: str, current_column: str) -> tuple[int, int] | None:
    """(all versions, current versions) of an SCD2 table, counted with delta-rs (no Spark); None if unwritten."""
    table = open_target(target_path)
    if table is None:
        return None
    # Only the flag column is read. (A filtered count_rows on delta-rs' dataset returned 0 for a boolean column
    # with true rows, so the count is done on the column itself.)
    flags = table.to_pyarrow_dataset().to_table(columns=[current_column])[current_column]
    return len(flags), int(pc.sum(pc.cast(flags, "int64")).as_py() or 0)


def txn_version(target_path: str, application: str) -> int:
    """The highest txnVersion the table at ``target_path`` recorded for ``application`` (0 when none)."""
    table = open_target(target_path)
    if table is None:
        return 0
    return table.transaction_version(application) or 0


def target_txn_version(target_path: str, table_name: str) -> int:
    """The highest batch_seq the target has committed for this table (0 when none)."""
    return txn_version(target_path, app_id(table_name))


def batch_commit(target_path: str, batch_id: str, search_depth: int = 200) -> dict[str, Any] | None:
    """The history entry (version, operation, operationMetrics, ...) of the commit that carries ``batch_id``
    in its userMetadata, looking back ``search_depth`` commits; None if there is none."""
    table = open_target(target_path)
    if table is None:
        return None
    for entry in table.history(search_depth):
        raw = entry.get("userMetadata")
        if not raw:
            continue
        try:
            if json.loads(raw).get("batch_id") == batch_id:
                return entry
        except (ValueError, AttributeError):
            continue
    return None


MERGE_IN_ORDER = "in_order"  # a keyed batch with no late row: close-and-insert (scd2) or upsert (scd1)
MERGE_DIFF = "diff"  # the difference of the batch's keys' tables before and after it (late rows, full extracts)


def commit_metadata(batch_id: str, batch_seq: int, run_id: str, table_name: str, files: int,
                    quality: dict[str, Any] | None = None, merge: str | None = None) -> str:
    """The userMetadata of a batch's commit (JSON naming the batch; ``quality``: per file, the rows it had
    quarantined and its expectation results, when any; ``merge``: for a keyed table's MERGE, which one,
    ``MERGE_IN_ORDER`` or ``MERGE_DIFF``)."""
    payload: dict[str, Any] = {"batch_id": batch_id, "batch_seq": batch_seq, "run_id": run_id, "table": table_name,
                               "files": files}
    if quality:
        payload["quality"] = quality
    if merge:
        payload["merge"] = merge
    return json.dumps(payload, sort_keys=True)


def commit_quality(commit: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What a batch's commit recorded per file (``commit_metadata``'s ``quality``): empty when nothing."""
    try:
        return dict(json.loads(commit.get("userMetadata") or "{}").get("quality") or {})
    except (ValueError, AttributeError):
        return {}
