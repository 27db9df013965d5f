"""Reading a batch of source files into one Spark DataFrame, failing bad files one by one.

Each file is checked before Spark sees it (exists, readable, unchanged since discovery, not empty, a readable
parquet footer). Parquet files that share a footer schema are then read as one relation, with ``_source_file``
mapped from Spark's ``_metadata.file_path`` back to the exact path through a broadcast join (a row whose file
cannot be mapped stops the write); that group read falls back, with a note, to one read per file when Spark
names the files in a way the mapping cannot trust. csv and json files, and a parquet file alone in its schema,
are read on their own with ``_source_file`` as a literal of the exact path, so a file Spark cannot read, or
whose columns differ from the table's, fails alone with an error naming the file, the table and the cause.
The reads are unioned as a balanced tree, so the plan stays shallow for a thousand files.

Per table policies (settings.py):
- ``schema_evolution``: fail (a file with new, missing or retyped columns fails, naming them), add_new_columns
  (new columns join the table's schema in the batch's commit, missing ones are NULL; a retyped column still fails
  the file), rescue (the table's schema is kept; fields it does not know, and values that do not cast to the
  column's type, go to ``_rescued_data`` as JSON, so nothing is dropped silently). Columns that say nothing
  about the schema are not differences: a JSON field no record of the file has (NULL in every record), and a
  parquet column of Arrow's null type (all NULL); the table's column is NULL for them.
- ``bad_records`` (csv, json): rows the parser cannot read (wrong field count, broken JSON) are found with Spark's
  ``_corrupt_record`` column in PERMISSIVE mode, counted per file in one aggregation over the batch (which is
  cached for it), and either fail their file or go to the quarantine table while the file's good rows load.

Why not ``input_file_name()`` as it is: Spark returns a URL-encoded URI there (``a%20b``), while the tracker and
operators use the path as it is. File names also reach the reader with Hadoop glob characters
escaped, so ``[``, ``{``, ``*`` and ``?`` in a name mean themselves (docs/ARCHITECTURE.md, "Traps").
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader_assets.core.discovery import micros_to_datetime, resolve
from loader_assets.core.errors import root_cause
from loader_assets.resources.spark import session_conf
from loader_assets.settings import (
    AUDIT_COLUMNS,
    RESCUED_DATA_COLUMN,
    BadRecords,
    ExpectationAction,
    ExtractMode,
    FileFormat,
    SchemaEvolution,
    TableSettings,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

logger = logging.getLogger(__name__)

SOURCE_FILE_COLUMN, LOAD_TIMESTAMP_COLUMN, BATCH_ID_COLUMN = AUDIT_COLUMNS

CORRUPT_RECORD_COLUMN = "_corrupt_record"
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


@dataclass(frozen=True)
class Precheck:
    """What a look at the file (no Spark) says: fail it (``problem``), wait for it (``now_size``/``now_mtime``:
    it changed since discovery, so it may still be being written), or complete it with 0 rows (``empty``)."""

    problem: str | None = None
    now_size: int | None = None
    now_mtime: datetime | None = None
    empty: bool = False

    @property
    def still_changing(self) -> bool:
        return self.now_size is not None


@dataclass
class BatchRead:
    """The outcome of reading a batch: a DataFrame of the good files and an error per bad file.

    ``quarantine`` holds the rows for the quarantine table (``_source_file``, ``raw_record``, ``expectation``:
    malformed rows when bad_records=quarantine, with no expectation; rows failing a quarantine expectation, with
    its name), and ``quarantined`` their count per file; ``expectations`` gives per file the rows checked and,
    for each expectation some rows failed, how many and one of them as JSON (``{"rows": n, "failed": {name:
    {"rows": n, "sample": "..."}}}``), and ``dropped`` the rows a drop expectation left out; ``cached`` frames
    are unpersisted when the batch is done."""

    dataframe: DataFrame | None
    loaded_paths: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    quarantine: DataFrame | None = None
    quarantined: dict[str, int] = field(default_factory=dict)
    cached: list[DataFrame] = field(default_factory=list)
    evolves_schema: bool = False
    footer_rows: dict[str, int] = field(default_factory=dict)  # parquet: rows per file, from its footer
    notes: list[str] = field(default_factory=list)  # what the read did that the operator should know
    expectations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    # sizes of the files when the batch is one Spark relation (one parquet group), for read_tasks.split_for
    relation_sizes: list[int] = field(default_factory=list)


def _csv_has_header(table: TableSettings) -> bool:
    options = {name.lower(): value for name, value in table.spark_read_options.items()}
    return options.get("header", "false").lower() == "true"


def precheck_file(expected: ExpectedFile, table: TableSettings) -> Precheck:
    """Look at the file before Spark does. No Spark involved; one stat and one small read."""
    file_format = table.file_format
    filesystem, fs_path = resolve(expected.path)
    try:
        info = filesystem.get_file_info(fs_path)
    except PermissionError as error:
        return Precheck(problem=f"permission denied looking up the file: {root_cause(error)}")
    except OSError as error:
        return Precheck(problem=f"cannot stat the file: {root_cause(error)}")
    if info.type == pafs.FileType.NotFound:
        return Precheck(problem="file vanished between discovery and load (it is no longer in the source)")
    if info.type != pafs.FileType.File:
        return Precheck(problem="path is no longer a regular file")
    mtime_us = (info.mtime_ns or 0) // 1000
    if info.size != expected.size or mtime_us != expected.modified_micros:
        return Precheck(now_size=int(info.size or 0), now_mtime=micros_to_datetime(mtime_us))
    try:
        with filesystem.open_input_file(fs_path) as handle:
            handle.read(min(int(info.size or 0), 4096))
    except PermissionError as error:
        return Precheck(problem=f"permission denied reading the file: {root_cause(error)}")
    except OSError as error:
        return Precheck(problem=f"cannot read the file: {root_cause(error)}")
    if info.size == 0:
        if file_format is FileFormat.PARQUET:
            return Precheck(problem="file is empty (0 bytes), which is not a valid parquet file")
        if file_format is FileFormat.CSV and _csv_has_header(table):
            return Precheck(problem="file is empty (0 bytes): no header row, so its columns are unknown")
        if table.keeps_changes and table.extract_mode is ExtractMode.FULL:
            return Precheck(problem="file is empty (0 bytes): as a full extract it would delete every key; an "
                                    "empty source is a file with its columns and no rows (a csv header, an "
                                    "empty parquet file)")
        return Precheck(empty=True)  # an empty json-lines (or header-less csv) file: a valid file of no rows
    if file_format is FileFormat.PARQUET:
        try:
            with filesystem.open_input_file(fs_path) as handle:
                pq.read_metadata(handle)
        except Exception as error:  # pyarrow raises several types for a bad footer
            return Precheck(problem=f"not a readable parquet file (corrupt or truncated): {root_cause(error)}")
    return Precheck()


def content_hash(path: str, chunk_bytes: int = 8 << 20) -> str | None:
    """sha256 of the file's bytes (streamed), or None when it cannot be read (its precheck then says why)."""
    import hashlib

    filesystem, fs_path = resolve(path)
    digest = hashlib.sha256()
    try:
        with filesystem.open_input_stream(fs_path) as stream:
            while chunk := stream.read(chunk_bytes):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


_WIDENING = {
    ("tinyint", "smallint"), ("tinyint", "int"), ("tinyint", "bigint"), ("smallint", "int"),
    ("smallint", "bigint"), ("int", "bigint"), ("int", "double"), ("bigint", "double"), ("float", "double"),
    ("tinyint", "double"), ("smallint", "double"), ("date", "timestamp"),
}


def type_fit(file_type: DataType, table_type: DataType, text_format: bool) -> str:
    """How a file's column type fits the table's: ``same``; ``widen`` (cast, lossless); ``per_value`` (a text
    format inferred string or null, which says nothing about the values: each value is cast, and one that does
    not cast is a malformed row); or ``conflict``."""
    if file_type == table_type:
        return "same"
    if (file_type.simpleString(), table_type.simpleString()) in _WIDENING:
        return "widen"
    if text_format and file_type.simpleString() in ("string", "void"):
        return "per_value"
    return "conflict"


def _schema_difference(reference: StructType, actual: StructType, check_missing: bool = True,
                       check_extra: bool = True, text_format: bool = False,
                       null_columns: frozenset[str] = frozenset()) -> str | None:
    ref = {f.name: f.dataType for f in reference.fields}
    got = {f.name: f.dataType for f in actual.fields}
    missing = [name for name in ref if name not in got] if check_missing else []
    extra = [name for name in got if name not in ref] if check_extra else []
    changed = [
        f"{name} ({ref[name].simpleString()} -> {got[name].simpleString()})"
        for name in ref
        if name in got and name not in null_columns and type_fit(got[name], ref[name], text_format) == "conflict"
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


@dataclass
class _FileFrame:
    """One Spark read: a single file (``_source_file`` a literal), or a group of parquet files with the same
    footer schema read at once (``_source_file`` mapped from Spark's ``_metadata.file_path``)."""

    files: list[ExpectedFile]
    frame: DataFrame
    data_schema: StructType  # the files' columns, without _corrupt_record
    may_have_bad_rows: bool
    source: Column | None = None  # None: the single file's path as a literal
    # parquet columns of Arrow's null type (a column the writer saw only NULLs in: pyarrow and pandas write a
    # delete feed's all-NULL value columns so). Spark reads them as int; they fit a column of any type
    # (``_schema_difference``) and are projected as a NULL of its type (``_project``).
    null_columns: frozenset[str] = frozenset()

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def source_column(self) -> Column:
        from pyspark.sql import functions as F

        return self.source if self.source is not None else F.lit(self.files[0].path)


def _read_file(spark: SparkSession, table: TableSettings, expected: ExpectedFile) -> _FileFrame | str:
    """One file as a DataFrame (csv/json with ``_corrupt_record``), or the reason Spark cannot read it."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException
    from pyspark.sql.types import StringType, StructField, StructType

    path = expected.path
    reader = spark.read.format(table.file_format.value).options(**table.spark_read_options)
    try:
        if table.file_format is FileFormat.CSV:
            inferred = reader.load(escape_glob(path)).schema
            with_corrupt = StructType([*inferred.fields, StructField(CORRUPT_RECORD_COLUMN, StringType())])
            frame = (
                spark.read.format("csv").options(**table.spark_read_options)
                .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT_RECORD_COLUMN)
                .schema(with_corrupt).load(escape_glob(path))
            )
            return _FileFrame([expected], frame, inferred, True)
        if table.file_format is FileFormat.JSON:
            frame = reader.option("mode", "PERMISSIVE").option(
                "columnNameOfCorruptRecord", CORRUPT_RECORD_COLUMN).load(escape_glob(path))
            schema = frame.schema
            data = StructType([f for f in schema.fields if f.name != CORRUPT_RECORD_COLUMN])
            if not data.fields:
                return "no line of the file is a valid JSON record"
            return _FileFrame([expected], frame, data, CORRUPT_RECORD_COLUMN in schema.fieldNames())
        frame = reader.load(escape_glob(path))
        return _FileFrame([expected], frame, frame.schema, False)
    except (PySparkException, Py4JJavaError) as error:
        return f"Spark cannot read the file: {root_cause(error)}"


def _footer(path: str) -> tuple[str, int, frozenset[str]] | None:
    """The parquet footer's schema as text (metadata left out), its row count and its columns of Arrow's null
    type, or None if unreadable."""
    filesystem, fs_path = resolve(path)
    try:
        with filesystem.open_input_file(fs_path) as handle:
            metadata = pq.read_metadata(handle)
    except Exception:  # the per-file read reports the reason
        return None
    schema = metadata.schema.to_arrow_schema().remove_metadata()
    nulls = frozenset(f.name for f in schema if pa.types.is_null(f.type))
    return schema.to_string(show_field_metadata=False, show_schema_metadata=False), metadata.num_rows, nulls


_URI, _SOURCE = "__loader_assets_uri", "__loader_assets_source"
_LOCAL_URI = r"^file:/+"  # Spark writes file:/x in _metadata.file_path where Hadoop qualifies to file:///x
# substring's length argument for "to the end": Spark's own default (Integer.MAX_VALUE). Any other length made
# the expression cost about 1 s more at benchmark P1's 10M rows (measured with 1 << 20)
_TO_THE_END = 2**31 - 1


def _spark_file_uris(input_files: Sequence[str], paths: Sequence[str]) -> list[str] | None:
    """How Spark names each of ``paths`` in ``_metadata.file_path``: the input file (``DataFrame.inputFiles``, a
    qualified Hadoop path as a URI, percent-encoded) whose decoded form is the path, local paths normalised to
    ``file:///`` (the caller maps the ``file:/`` spelling too). None if the names do not pair one to one. Asked
    of the query, not of Hadoop in the driver's JVM, so it works over Spark Connect too."""
    def key(name: str) -> str:
        return re.sub(_LOCAL_URI, "/", name)

    by_key = {key(unquote(uri)): re.sub(_LOCAL_URI, "file:///", uri) for uri in input_files}
    uris = [by_key.get(key(path)) for path in paths]
    if len(by_key) != len(input_files) or None in uris or len(set(uris)) != len(paths):
        return None
    return [uri for uri in uris if uri is not None]


PARALLEL_LISTING_CONF = "spark.sql.sources.parallelPartitionDiscovery.threshold"
_LISTING_CONF_LOCK = threading.Lock()


@contextmanager
def _listed_in_the_driver(spark: SparkSession, paths: Sequence[str]) -> Iterator[None]:
    """Let Spark list ``paths`` in the driver when they are all local files. Above 32 paths Spark lists them
    with a distributed job of its own, which cost 0.7-0.9 s for benchmark P1's 200 files against 0.05 s in the
    driver: those are files the loader has just looked at, one ``stat`` each. On an object store the job stays
    (a listing there is a request per path, which the job runs in parallel). The session conf is read when the
    relation is built (``load``), so it is set around that call only and restored."""
    if not all(isinstance(resolve(path)[0], pafs.LocalFileSystem) for path in paths):
        yield
        return
    # two loads in one process must not restore each other's value
    with _LISTING_CONF_LOCK, session_conf(spark, PARALLEL_LISTING_CONF, str(len(paths) + 1)):
        yield


def _read_parquet_group(spark: SparkSession, table: TableSettings, files: list[ExpectedFile]) -> _FileFrame | str:
    """Files with one footer schema as one Spark read, or why that cannot be done safely (then each file is
    read on its own). Reading 200 files as one relation instead of a 200-way union of one-file relations is
    what makes a large append batch cost about what Spark by hand costs (benchmark P1)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F

    paths = [f.path for f in files]
    try:
        with _listed_in_the_driver(spark, paths):
            frame = (spark.read.format("parquet").options(**table.spark_read_options)
                     .load([escape_glob(p) for p in paths]))
        data_schema = frame.schema
        input_files = frame.inputFiles()
        uris = _spark_file_uris(input_files, paths)
        if uris is None:
            return f"Spark's {len(input_files)} input files do not pair one to one with the {len(paths)} files"
    except (PySparkException, Py4JJavaError) as error:
        return f"the group read failed: {root_cause(error)}"
    if all(uri == "file://" + path for uri, path in zip(uris, paths, strict=True)):
        # Local paths Spark names without escaping (file:///x, or file:/x in _metadata.file_path): the path is
        # the name without its scheme, cut off in place. The broadcast join below costs 0.8 s more at benchmark
        # P1's 10M rows. No per-row guard: Spark has just named every file of this read file:///path (checked
        # above), a local file's name has no authority, so these two spellings are the only ones it can take.
        # A guard that raised on any other spelling cost 0.3 s more of a 1.2-s pass over those 10M rows (a
        # noop-sink probe: 1.55 s against 1.23 s; without the raise_error branch the same checks cost nothing
        # measurable); if a name were ever spelt otherwise, the batch's fingerprint would not match its
        # files and the check after the write (target_matches_tracker) fails, naming them.
        name = F.col("_metadata.file_path")
        source = F.when(name.startswith("file:///"), F.substring(name, 8, _TO_THE_END)).otherwise(
            F.substring(name, 6, _TO_THE_END))
        return _FileFrame(list(files), frame, data_schema, False, source.cast("string"))
    pairs = list(zip(uris, paths, strict=True))
    # both spellings of a local URI; a broadcast hash join, not a literal map (a map lookup scans its keys for
    # every row: 400 string comparisons x 10M rows made benchmark P1 twice as slow as Spark by hand)
    pairs += [(re.sub(_LOCAL_URI, "file:/", uri), path) for uri, path in pairs if uri.startswith("file:///")]
    lookup = spark.createDataFrame(pairs, f"{_URI} string, {_SOURCE} string")
    frame = frame.withColumn(_URI, F.col("_metadata.file_path")).join(F.broadcast(lookup), _URI, "left")
    # A file Spark names differently than expected stops the write instead of loading rows without a source.
    source = F.coalesce(F.col(_SOURCE), F.raise_error(F.concat(F.lit("unmapped source file "), F.col(_URI))))
    return _FileFrame(list(files), frame, data_schema, False, source.cast("string"))


def _read_files(spark: SparkSession, table: TableSettings, files: Sequence[ExpectedFile],
                errors: dict[str, str], footer_rows: dict[str, int], notes: list[str]) -> list[_FileFrame]:
    """Each file as its own read; parquet files that share a footer schema as one read per schema."""
    items: list[_FileFrame] = []
    single: list[ExpectedFile] = list(files)
    nulls: dict[str, frozenset[str]] = {}
    if table.file_format is FileFormat.PARQUET:
        groups: dict[str, list[ExpectedFile]] = {}
        for expected in files:
            footer = _footer(expected.path)
            if footer is not None:
                footer_rows[expected.path] = footer[1]
                nulls[expected.path] = footer[2]
            groups.setdefault(footer[0] if footer else f"\x00{expected.path}", []).append(expected)
        single = []
        for key, members in groups.items():
            if len(members) == 1 or key[:1] == "\x00":
                single.extend(members)
                continue
            group = _read_parquet_group(spark, table, members)
            if isinstance(group, str):
                notes.append(f"{len(members)} parquet files with one footer schema are read one by one, which is "
                             f"slower: {group}")
                single.extend(members)
            else:
                items.append(group)
    for expected in single:
        item = _read_file(spark, table, expected)
        if isinstance(item, str):
            errors[expected.path] = item
        else:
            items.append(item)
    for item in items:  # a group's files share their footer schema, so their null columns too
        item.null_columns = nulls.get(item.paths[0], frozenset()) & set(item.data_schema.fieldNames())
    return items


def _resolve_schema(
    table: TableSettings, reference: StructType | None, files: list[_FileFrame], errors: dict[str, str]
) -> tuple[StructType | None, bool]:
    """The schema the batch is written with, under the table's ``schema_evolution``; files that cannot fit it
    get an error. Returns (schema, whether it adds columns to an existing table)."""
    from pyspark.sql.types import StructType

    policy = table.schema_evolution
    schema = reference
    added = False
    text = table.file_format is not FileFormat.PARQUET
    untyped: set[str] = set()  # a new table's columns only null-typed files have had so far
    # JSON lines have no schema: a field no record of a file has is a NULL of every record (serializers leave out
    # NULL fields, and a file of deletes often carries only keys, sequence and op), as it is for a record that
    # lacks a field another record of the file has. So a missing field is not a difference, and a new table's
    # columns are the fields of its first batch's files together.
    json = table.file_format is FileFormat.JSON
    new_table = reference is None
    for item in files:
        if schema is None:
            schema = item.data_schema
            untyped = set(item.null_columns)
            continue
        if json and new_table:
            schema = StructType([*schema.fields, *[f for f in item.data_schema.fields
                                                   if f.name not in schema.fieldNames()]])
        typed = {f.name: f for f in item.data_schema.fields if f.name in untyped and f.name not in item.null_columns}
        if typed:  # the first file that types such a column gives the new table its type
            schema = StructType([typed.get(f.name, f) for f in schema.fields])
            untyped -= set(typed)
        if policy is SchemaEvolution.FAIL:
            difference = _schema_difference(schema, item.data_schema, check_missing=not json, text_format=text,
                                            null_columns=item.null_columns)
            if difference:
                errors.update(dict.fromkeys(item.paths, difference + " (schema_evolution=fail)"))
        elif policy is SchemaEvolution.ADD_NEW_COLUMNS:
            difference = _schema_difference(schema, item.data_schema, check_missing=False, check_extra=False,
                                            text_format=text, null_columns=item.null_columns)
            if difference:
                errors.update(dict.fromkeys(
                    item.paths, difference + " (schema_evolution=add_new_columns adds columns, never retypes one)"))
                continue
            new = [f for f in item.data_schema.fields if f.name not in schema.fieldNames()]
            if new:
                schema = StructType([*schema.fields, *new])
                added = added or reference is not None
        # rescue: the schema stays; every file fits it, what does not fit is rescued
    return schema, added


def _project(item: _FileFrame, schema: StructType, table: TableSettings) -> DataFrame:
    """The file's rows in the batch schema's column order, plus ``_corrupt_record`` and ``_source_file``.

    A column whose type differs from the table's is cast: losslessly when it widens; value by value when a
    text format inferred it as string (a value that does not cast marks its row malformed, naming the column,
    or under rescue goes to ``_rescued_data``); and under rescue, any other mismatch is cast value by value too.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    frame = item.frame
    text = table.file_format is not FileFormat.PARQUET
    rescue = table.schema_evolution is SchemaEvolution.RESCUE
    own = {f.name: f.dataType for f in item.data_schema.fields}
    columns = []
    rescued = []
    unparsed = []
    for target in schema.fields:
        if target.name not in own or target.name in item.null_columns:
            columns.append(F.lit(None).cast(target.dataType).alias(target.name))
            continue
        original = F.col(f"`{target.name}`")
        fit = type_fit(own[target.name], target.dataType, text)
        if fit == "same":
            columns.append(original)
        elif fit == "widen":
            columns.append(original.cast(target.dataType).alias(target.name))
        else:  # per_value, or a conflict that only rescue lets through
            cast = original.try_cast(target.dataType)
            columns.append(cast.alias(target.name))
            lost = original.isNotNull() & cast.isNull()
            if rescue:
                rescued.append(F.when(lost, original).alias(target.name))
            else:
                unparsed.append(F.when(lost, F.concat(
                    F.lit(f"column {target.name}: value '"), original.cast(StringType()),
                    F.lit(f"' is not a valid {target.dataType.simpleString()}"))))
    if rescue:
        extra = [F.col(f"`{name}`").alias(name) for name in own if name not in schema.fieldNames()]
        fields = rescued + extra
        if fields:
            payload = F.to_json(F.struct(*fields))
            columns.append(F.when(payload != F.lit("{}"), payload).alias(RESCUED_DATA_COLUMN))
        else:
            columns.append(F.lit(None).cast(StringType()).alias(RESCUED_DATA_COLUMN))
    corrupt = (
        F.col(CORRUPT_RECORD_COLUMN) if CORRUPT_RECORD_COLUMN in frame.columns else F.lit(None).cast(StringType())
    )
    if unparsed:
        corrupt = F.coalesce(corrupt, *unparsed)
    columns.append(corrupt.alias(CORRUPT_RECORD_COLUMN))
    columns.append(item.source_column().alias(SOURCE_FILE_COLUMN))
    return frame.select(*columns)


def _split_bad_records(
    table: TableSettings, union: DataFrame, result: BatchRead, check: bool
) -> DataFrame:
    """Count malformed rows per file in one aggregation; fail their files or quarantine the rows."""
    from pyspark.sql import functions as F

    if not check:
        return union.drop(CORRUPT_RECORD_COLUMN)
    union = union.persist()
    result.cached.append(union)
    bad = F.col(CORRUPT_RECORD_COLUMN).isNotNull()
    counts = (
        union.where(bad).groupBy(SOURCE_FILE_COLUMN)
        .agg(F.count(F.lit(1)).alias("bad_rows"), F.min(CORRUPT_RECORD_COLUMN).alias("example"))
        .collect()
    )
    if not counts:
        return union.drop(CORRUPT_RECORD_COLUMN)
    if table.bad_records is BadRecords.FAIL:
        failing = []
        for row in counts:
            path = row[SOURCE_FILE_COLUMN]
            example = (row["example"] or "").strip().replace("\n", " ")[:200]
            result.errors[path] = (
                f"{row['bad_rows']} malformed row(s) that the {table.file_format.value} parser cannot read "
                f"(bad_records=fail); for example: {example!r}"
            )
            failing.append(path)
        result.loaded_paths = [p for p in result.loaded_paths if p not in failing]
        return union.where(~F.col(SOURCE_FILE_COLUMN).isin(failing)).drop(CORRUPT_RECORD_COLUMN)
    result.quarantined = {row[SOURCE_FILE_COLUMN]: int(row["bad_rows"]) for row in counts}
    result.quarantine = union.where(bad).select(
        F.col(SOURCE_FILE_COLUMN), F.col(CORRUPT_RECORD_COLUMN).alias("raw_record"),
        F.lit(None).cast("string").alias(EXPECTATION_COLUMN))
    return union.where(~bad).drop(CORRUPT_RECORD_COLUMN)


EXPECTATION_COLUMN = "expectation"  # in the quarantine table: the expectation a row failed (NULL: malformed)
SAMPLE_CHARS = 200  # a failing row in the tracker and the commit metadata


def apply_expectations(table: TableSettings, frame: DataFrame, result: BatchRead) -> DataFrame:
    """Check every expectation over the batch's rows in one aggregation per file; fail the files of a failing
    ``fail_file`` expectation, leave out ``drop`` rows, move ``quarantine`` rows to ``result.quarantine`` (a row
    failing a quarantine and a drop expectation is quarantined). Counts and a sample row per file and expectation
    go to ``result.expectations``; a parquet file's footer row count is lowered by the rows it lost, so the rows
    written still add up. An expectation Spark cannot evaluate fails every file, naming it."""
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F

    rules = table.expectations
    if not rules or not result.loaded_paths:
        return frame
    for rule in rules:  # analysis is eager: a bad condition raises here, before any data is read
        try:
            frame.select(F.expr(rule.condition))
        except PySparkException as error:
            message = (f"expectation {rule.name!r} of table {table.table_name!r} cannot be evaluated "
                       f"({rule.condition}): {root_cause(error)}")
            result.errors.update(dict.fromkeys(result.loaded_paths, message))
            result.loaded_paths = []
            return frame
    data = [c for c in frame.columns if c != SOURCE_FILE_COLUMN]
    row_json = F.to_json(F.struct(*[F.col(f"`{c}`") for c in data]))
    failing = {r.name: ~F.coalesce(F.expr(r.condition).cast("boolean"), F.lit(False)) for r in rules}
    quarantine_rules = [r for r in rules if r.action is ExpectationAction.QUARANTINE]
    drop_rules = [r for r in rules if r.action is ExpectationAction.DROP]
    to_quarantine = F.coalesce(*[F.when(failing[r.name], F.lit(r.name)) for r in quarantine_rules]) \
        if quarantine_rules else F.lit(None).cast("string")
    to_drop = F.lit(False)
    for rule in drop_rules:
        to_drop = to_drop | failing[rule.name]
    flagged = frame.select("*", *[failing[r.name].alias(f"__fails_{i}") for i, r in enumerate(rules)],
                           to_quarantine.alias("__quarantine"), to_drop.alias("__drop"))
    flagged = flagged.persist()
    result.cached.append(flagged)
    aggregates = [F.count(F.lit(1)).alias("__rows"),
                  F.sum(F.col("__quarantine").isNotNull().cast("long")).alias("__quarantined"),
                  F.sum((F.col("__drop") & F.col("__quarantine").isNull()).cast("long")).alias("__dropped")]
    for i, _ in enumerate(rules):
        aggregates += [F.sum(F.col(f"__fails_{i}").cast("long")).alias(f"__n{i}"),
                       F.min(F.when(F.col(f"__fails_{i}"), row_json)).alias(f"__s{i}")]
    per_file = flagged.groupBy(SOURCE_FILE_COLUMN).agg(*aggregates).collect()  # one row per file
    failed_files: dict[str, str] = {}
    for row in per_file:
        path = row[SOURCE_FILE_COLUMN]
        found = {rule.name: {"rows": int(row[f"__n{i}"]), "sample": (row[f"__s{i}"] or "")[:SAMPLE_CHARS]}
                 for i, rule in enumerate(rules) if row[f"__n{i}"]}
        result.expectations[path] = {"rows": int(row["__rows"]), "failed": found}
        fatal = [r for r in rules if r.action is ExpectationAction.FAIL_FILE and r.name in found]
        if fatal:
            rule = fatal[0]
            failed_files[path] = (
                f"expectation {rule.name!r} ({rule.condition}) failed on {found[rule.name]['rows']} row(s) "
                f"(action fail_file); for example: {found[rule.name]['sample']}")
            continue
        moved, dropped = int(row["__quarantined"]), int(row["__dropped"])
        if moved:
            result.quarantined[path] = result.quarantined.get(path, 0) + moved
        if dropped:
            result.dropped[path] = dropped
        if (moved or dropped) and path in result.footer_rows:
            result.footer_rows[path] -= moved + dropped
    if failed_files:
        result.errors.update(failed_files)
        result.loaded_paths = [p for p in result.loaded_paths if p not in failed_files]
        flagged = flagged.where(~F.col(SOURCE_FILE_COLUMN).isin(list(failed_files)))
    if quarantine_rules:
        moved_rows = flagged.where(F.col("__quarantine").isNotNull()).select(
            F.col(SOURCE_FILE_COLUMN), row_json.alias("raw_record"), F.col("__quarantine").alias(EXPECTATION_COLUMN))
        result.quarantine = moved_rows if result.quarantine is None else result.quarantine.unionByName(moved_rows)
    kept = flagged.where(F.col("__quarantine").isNull() & ~F.col("__drop"))
    return kept.drop(*[f"__fails_{i}" for i in range(len(rules))], "__quarantine", "__drop")


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
    if table.file_format is FileFormat.JSON:  # an absent field is NULL (``_resolve_schema``): tracked values may be
        required = [c for c in required if c in table.primary_keys or c == table.scd2_sequence_column]
    reserved = table.loader_columns() | {CORRUPT_RECORD_COLUMN}
    result = BatchRead(dataframe=None)
    readable: list[_FileFrame] = []
    for item in _read_files(spark, table, files, result.errors, result.footer_rows, result.notes):
        names = item.data_schema.fieldNames()
        missing = [c for c in required if c not in names]
        if missing:
            result.errors.update(dict.fromkeys(item.paths, f"missing configured columns {missing}"))
            continue
        clashing = sorted(reserved & set(names))
        if clashing:
            result.errors.update(dict.fromkeys(
                item.paths, f"the file has columns {clashing}, which the loader writes itself"))
            continue
        readable.append(item)
    schema, result.evolves_schema = _resolve_schema(table, reference_schema, readable, result.errors)
    good = [item for item in readable if not set(item.paths) & set(result.errors)]
    if not good or schema is None:
        return result
    order = {f.path: i for i, f in enumerate(files)}
    result.loaded_paths = sorted((p for item in good for p in item.paths), key=order.__getitem__)
    if len(good) == 1 and good[0].source is not None:
        result.relation_sizes = [f.size for f in good[0].files]
    union = _union_all([_project(item, schema, table) for item in good])
    text = table.file_format is not FileFormat.PARQUET
    own_types = [{f.name: f.dataType for f in item.data_schema.fields} for item in good]
    cast_per_value = any(
        type_fit(types[f.name], f.dataType, text) == "per_value"
        for types in own_types for f in schema.fields if f.name in types
    )
    check = text and (cast_per_value or any(item.may_have_bad_rows for item in good))
    frame = apply_expectations(table, _split_bad_records(table, union, result, check), result)
    if result.loaded_paths:
        result.dataframe = frame
    return result
