"""Reading a batch of source files into one Spark DataFrame, failing bad files one by one.

Each file is checked before Spark sees it (exists, unchanged since discovery, not empty, a readable parquet
footer), then read on its own so that a file Spark cannot read, or whose columns differ from the table's, fails
alone with an error naming the file, the table and the cause. The good files are unioned (as a balanced tree, so
the plan stays shallow for a thousand files) with ``_source_file`` set to the exact path as a literal.

Why per-file literals and not ``input_file_name()``: Spark returns a URL-encoded URI there (``a%20b``), while the
tracker and operators use the path as it is. File names also reach the reader with Hadoop glob characters
escaped, so ``[``, ``{``, ``*`` and ``?`` in a name mean themselves (DESIGN.md section 9).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader_assets.core.discovery import SourceLocation
from loader_assets.settings import AUDIT_COLUMNS, FileFormat, TableSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

logger = logging.getLogger(__name__)

SOURCE_FILE_COLUMN, LOAD_TIMESTAMP_COLUMN, BATCH_ID_COLUMN = AUDIT_COLUMNS

_GLOB_CHARS = set("[]{}*?\\")


def escape_glob(path: str) -> str:
    """Escape Hadoop glob characters so Spark reads exactly this path."""
    return "".join("\\" + ch if ch in _GLOB_CHARS else ch for ch in path)


@dataclass(frozen=True)
class ExpectedFile:
    """A claimed file as the tracker saw it at discovery."""

    path: str
    size: int
    modified_micros: int


@dataclass
class BatchRead:
    """The outcome of reading a batch: a DataFrame of the good files and an error per bad file."""

    dataframe: DataFrame | None
    loaded_paths: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _short(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:500]


def precheck_file(expected: ExpectedFile, file_format: FileFormat) -> str | None:
    """The reason this file cannot be loaded as discovered, or None. No Spark involved."""
    location = SourceLocation.parse(expected.path)
    fs_path = expected.path[len(location.uri_prefix):]
    try:
        info = location.filesystem.get_file_info(fs_path)
    except OSError as error:
        return f"cannot stat the file: {_short(error)}"
    if info.type == pafs.FileType.NotFound:
        return "file vanished between discovery and load"
    if info.type != pafs.FileType.File:
        return "path is no longer a regular file"
    mtime_us = (info.mtime_ns or 0) // 1000
    if info.size != expected.size or mtime_us != expected.modified_micros:
        return (
            f"file changed since discovery (size {expected.size} -> {info.size}); it may still be being "
            "written, so it was not loaded; it is retried on the next run"
        )
    if info.size == 0:
        return "file is empty (0 bytes); an empty file is not valid " + file_format.value
    if file_format is FileFormat.PARQUET:
        try:
            with location.filesystem.open_input_file(fs_path) as handle:
                pq.read_metadata(handle)
        except Exception as error:  # pyarrow raises several types for a bad footer
            return f"not a readable parquet file: {_short(error)}"
    return None


def _schema_difference(reference: StructType, actual: StructType) -> str | None:
    ref = {f.name: f.dataType for f in reference.fields}
    got = {f.name: f.dataType for f in actual.fields}
    missing = [name for name in ref if name not in got]
    extra = [name for name in got if name not in ref]
    changed = [
        f"{name} ({ref[name].simpleString()} -> {got[name].simpleString()})"
        for name in ref
        if name in got and ref[name] != got[name]
    ]
    if not (missing or extra or changed):
        return None
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if extra:
        parts.append(f"new columns {extra}")
    if changed:
        parts.append(f"changed types {changed}")
    return "columns differ from the table's: " + "; ".join(parts)


def _union_all(frames: Sequence[DataFrame]) -> DataFrame:
    level = list(frames)
    while len(level) > 1:
        paired = [level[i].unionByName(level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def read_batch(
    spark: SparkSession,
    table: TableSettings,
    files: Sequence[ExpectedFile],
    reference_schema: StructType | None,
) -> BatchRead:
    """Read ``files`` (already prechecked) into one DataFrame with ``_source_file``; bad files get an error.

    ``reference_schema`` is the target table's data schema (without audit and SCD2 columns) when the table
    exists; for a new table the first readable file sets it. A file that lacks one of the table's configured
    columns (SCD2 keys, tracking and sequence columns), or has a column the loader writes itself, fails.
    """
    required = table.required_columns()
    reserved = table.loader_columns()
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F
    from py4j.protocol import Py4JJavaError

    result = BatchRead(dataframe=None)
    frames: list[DataFrame] = []
    reference = reference_schema
    for expected in files:
        try:
            frame = (
                spark.read.format(table.file_format.value)
                .options(**table.read_options)
                .load(escape_glob(expected.path))
            )
            schema = frame.schema
        except (PySparkException, Py4JJavaError) as error:
            result.errors[expected.path] = f"Spark cannot read the file: {_short(error)}"
            continue
        names = schema.fieldNames()
        missing = [c for c in required if c not in names]
        if missing:
            result.errors[expected.path] = f"missing configured columns {missing}"
            continue
        clashing = sorted(reserved & set(names))
        if clashing:
            result.errors[expected.path] = f"the file has columns {clashing}, which the loader writes itself"
            continue
        if reference is None:
            reference = schema
        difference = _schema_difference(reference, schema)
        if difference:
            result.errors[expected.path] = difference
            continue
        frames.append(frame.select(*reference.fieldNames()).withColumn(SOURCE_FILE_COLUMN, F.lit(expected.path)))
        result.loaded_paths.append(expected.path)
    if frames:
        result.dataframe = _union_all(frames)
    return result
