"""What a batch's commit wrote, read back from the data files it added: how the check after a packed append
proves the files' rows without Spark (docs/ARCHITECTURE.md, "A packed append is proven by the files its commit
added").

A Spark append packs several source files into each data file, so the Delta log's statistics cannot count rows
per source file (``target.rows_per_source_file`` answers only when each data file holds one). The files a
batch's commit added can: their ``_source_file`` and ``_batch_id`` columns hold one value per source file and
one per batch, which Spark's parquet writer stores dictionary-encoded in runs (a data file's rows of one source
file are contiguous), so the two column chunks of a data file are a few kilobytes whatever its rows. Reading
them with pyarrow costs about 0.15 s for benchmark P1's 10M rows on the driver and nothing in the write; the
Spark ``Observation`` this replaced hashed every row inside the write (about 1 s of a 17-s write of the same
rows, measured on this machine).

Invariant of ``verified_by_commits``: it returns counts only when they are the rows the table holds for those
files, read from the data files themselves; anything it cannot prove returns None and the caller counts in
Spark, which also names what differs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader_assets.core.discovery import resolve
from loader_assets.reading import BATCH_ID_COLUMN, SOURCE_FILE_COLUMN

READ_ROWS = 1 << 20  # rows decoded at a time: what the driver holds of a data file is bounded by this
READERS = 4  # data files read at once


def _value_counts(column: pa.Array) -> Counter[str | None]:
    """Rows per value of a string column, read as dictionary-encoded (the dictionary's values counted once)."""
    counts: Counter[str | None] = Counter()
    if pa.types.is_dictionary(column.type):
        if column.null_count:
            counts[None] += column.null_count
        dictionary = column.dictionary.to_pylist()
        for entry in pc.value_counts(column.indices.drop_null()).to_pylist():
            counts[dictionary[entry["values"]]] += entry["counts"]
        return counts
    for entry in pc.value_counts(column).to_pylist():
        counts[entry["values"]] += entry["counts"]
    return counts


def _rows_per_file_of(filesystem: pafs.FileSystem, location: str, batch_id: str) -> Counter[str | None] | None:
    """Rows per ``_source_file`` value of one data file, or None if a row belongs to another batch or the file
    cannot be read."""
    counts: Counter[str | None] = Counter()
    try:
        with filesystem.open_input_file(location) as handle:
            data = pq.ParquetFile(handle, read_dictionary=[SOURCE_FILE_COLUMN, BATCH_ID_COLUMN])
            for part in data.iter_batches(batch_size=READ_ROWS, columns=[SOURCE_FILE_COLUMN, BATCH_ID_COLUMN]):
                if set(_value_counts(part.column(BATCH_ID_COLUMN))) != {batch_id}:
                    return None
                counts.update(_value_counts(part.column(SOURCE_FILE_COLUMN)))
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    return counts


def rows_per_file_in(target_path: str, data_files: Iterable[str], batch_id: str) -> dict[str, int] | None:
    """Rows per ``_source_file`` held by ``data_files`` (paths relative to the table's root, as its log names
    them, percent-decoded), read from the files' ``_source_file`` and ``_batch_id`` columns, ``READERS`` files
    at a time (pyarrow decodes without the GIL). None when a row belongs to another batch or has no source
    file, when a file cannot be read, or when a path is not under the table's root (an absolute path in the
    log: left to Spark)."""
    filesystem, root = resolve(target_path.rstrip("/"))
    relative = sorted(data_files)
    if any(":" in path.split("/", 1)[0] or path.startswith("/") for path in relative):
        return None
    with ThreadPoolExecutor(max_workers=max(1, min(READERS, len(relative)))) as pool:
        found = list(pool.map(lambda path: _rows_per_file_of(filesystem, f"{root}/{path}", batch_id), relative))
    counts: Counter[str | None] = Counter()
    for each in found:
        if each is None:
            return None
        counts.update(each)
    if None in counts:
        return None
    return {str(path): rows for path, rows in counts.items()}


def verified_by_commits(target_path: str, expected: pa.Table, every_file: bool) -> pa.Table | None:
    """Rows per file of ``expected`` (tracker rows: ``file_path``, ``status``, ``batch_id``, ``target_version``,
    ``row_count``) as the target holds them, proven without Spark, or None when this cannot be proven here.

    The proof, per batch of ``expected``:
    1. every expected file is completed, with the version of its batch's commit;
    2. every live data file that may hold rows of the expected files (its ``_source_file`` range holds one;
       with ``every_file``, every data file, since the table must hold nothing else) holds rows of one of
       those batches only (``_batch_id`` min == max, no nulls, from the log's statistics): no earlier load of
       the files is left, nothing else is there;
    3. the live data files of the batch are exactly the files its commit added (read from the commit's JSON):
       data files are immutable, so no UPDATE, DELETE or OPTIMIZE has changed the written rows since, and no
       other commit carries the batch's id;
    4. those data files, read (``rows_per_file_in``), hold rows of this batch only, as many per source file
       as the tracker says, and as many in all as the log's ``numRecords``.
    Deletion vectors, statistics the log lacks, or a commit file the log's retention removed leave it unproven.
    """
    from loader_assets.core.states import FileStatus
    from loader_assets.target import data_file_stats, files_added_by, holds_one_of

    if expected.num_rows == 0:
        return None
    if not pc.all(pc.equal(expected["status"], FileStatus.COMPLETED.value)).as_py():
        return None  # a file waiting for a reload still has the rows of an earlier load
    versions = dict(zip(expected["batch_id"].to_pylist(), expected["target_version"].to_pylist(), strict=True))
    if None in versions or None in versions.values():
        return None
    stats = data_file_stats(target_path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN)
    if stats is None:
        return None
    low, high = stats[f"min.{BATCH_ID_COLUMN}"], stats[f"max.{BATCH_ID_COLUMN}"]
    of_batch = pc.fill_null(pc.and_(pc.and_(pc.equal(low, high), pc.equal(stats[f"null_count.{BATCH_ID_COLUMN}"], 0)),
                                    pc.is_in(low, pa.array(sorted(versions), pa.string()))), False)
    if not every_file:
        may_hold = holds_one_of(expected["file_path"].to_pylist(), stats[f"min.{SOURCE_FILE_COLUMN}"],
                                stats[f"max.{SOURCE_FILE_COLUMN}"])
        if not pc.all(pc.or_(pc.invert(may_hold), of_batch)).as_py():
            return None
    elif not pc.all(of_batch).as_py():
        return None
    mine = stats.filter(of_batch)
    live: dict[str, set[str]] = {batch: set() for batch in versions}
    logged = dict.fromkeys(versions, 0)
    for batch, path, records in zip(mine[f"min.{BATCH_ID_COLUMN}"].to_pylist(), mine["path"].to_pylist(),
                                    mine["num_records"].to_pylist(), strict=True):
        if records is None:
            return None
        live[batch].add(unquote(path))
        logged[batch] += int(records)
    with_rows = expected.filter(pc.greater(pc.fill_null(expected["row_count"], 0), 0))
    tracked: dict[str, dict[str, int]] = {batch: {} for batch in versions}
    for path, batch, rows in zip(with_rows["file_path"].to_pylist(), with_rows["batch_id"].to_pylist(),
                                 with_rows["row_count"].to_pylist(), strict=True):
        tracked[batch][path] = int(rows)
    for batch, version in versions.items():
        if files_added_by(target_path, int(version)) != live[batch]:
            return None
        found = rows_per_file_in(target_path, live[batch], batch)
        if found != tracked[batch] or sum(found.values()) != logged[batch]:
            return None
    return (with_rows.select(["file_path", "row_count"]).rename_columns(["file_path", "rows"])
            .cast(pa.schema([("file_path", pa.string()), ("rows", pa.int64())])).sort_by("file_path"))
