"""Change rows in Spark: what a batch of an scd2 or scd1 table applies, checked against the change record.

Terms: keys = ``primary_keys``; the *sequence* of a row is its ``scd2_sequence_column`` value, or, without one,
its file's modification time; a row is a *delete* of its key when ``delete_condition`` holds for it, an *upsert*
otherwise. A *change row* is a source row as applied: (key, sequence, op, values). The change record
(``changes.py``) keeps every change row ever applied, including those that repeated the key's current values and
so started no version, and for full extracts one *extract marker* per file (its sequence), from which the
deletes of keys absent from an extract are derived (``absence_events``).

The tables are functions of the record (docs/CONTRACT.md, "SCD2 and SCD1"): ``scd2.history_from_events`` and
``scd1.latest_from_events`` compute them from the record's events, whatever order, batching or replays the rows
came through. A batch is applied as the difference between the table its keys had before and the table they have
with the batch's new change rows (``writers/keyed.py``).

Validation of a batch (each problem fails the files involved, naming file and key; nothing is written for them):
- a null key or a null sequence value;
- rows of one key with the same sequence but a different op or values, inside the batch (identical rows collapse
  onto the first in load order), or against a change row of the record (``clash``);
- with ``late_arriving: refuse`` (scd2), a row older than its key's newest change row in the record that is not
  itself in the record.
A row equal to a change row of the record (same key, sequence, op and values) was applied before (a replayed batch,
a reload after ``reset-state``, the same content under a new name): it is dropped, so replays add nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader_assets.reading import AUDIT_COLUMNS, SOURCE_FILE_COLUMN
from loader_assets.settings import (
    CHANGE_RECORD_COLUMNS,
    ExtractMode,
    HardDeletes,
    LateArriving,
    TableSettings,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructField

SEQ = "__seq"
FILE_TIME = "__file_time"
VALUES = "__values"
TRACKED = "__tracked"
OP = "__op"
LAST_OP, LAST_TRACKED = "__last_op", "__last_tracked"  # the op and tracked values of the key's newest recorded change
UPSERT, DELETE, EXTRACT = "upsert", "delete", "extract"
SAMPLE = 5

RECORD_SEQUENCE, RECORD_FILE_TIME, RECORD_BATCH_SEQ, RECORD_OP = CHANGE_RECORD_COLUMNS


def key_json(columns: Sequence[str]) -> Column:
    """Key text for error messages, e.g. ``{"customer_id":7}``."""
    from pyspark.sql import functions as F

    return F.to_json(F.struct(*[F.col(c) for c in columns]))


def struct_of(columns: Sequence[str]) -> Column:
    """Values compared as one struct: struct equality in Spark is null-safe per field (null = null, null != x)."""
    from pyspark.sql import functions as F

    return F.struct(*[F.col(c) for c in columns])


def data_columns(frame: DataFrame) -> list[str]:
    """The source columns of a frame: not the audit columns, not the loader's ``__`` working columns, not the
    change record's own columns."""
    return [c for c in frame.columns if c not in AUDIT_COLUMNS and not c.startswith("__")
            and c not in CHANGE_RECORD_COLUMNS]


def tracked_of(table: TableSettings, columns: Sequence[str]) -> Column:
    """What makes a change a version: the tracking columns (scd2); every source column (scd1)."""
    return struct_of(table.tracking_columns if table.is_scd2 else columns)


def tracked_in(values: Column, table: TableSettings) -> Column:
    """The tracked values (``tracked_of``) taken out of a ``VALUES`` struct: the struct itself for scd1 (every
    source column), its tracking fields for scd2; NULL when ``values`` is."""
    from pyspark.sql import functions as F

    if not table.is_scd2:
        return values
    return F.when(values.isNotNull(), F.struct(*[values.getField(c).alias(c) for c in table.tracking_columns]))


def with_sequence(
    spark: SparkSession, frame: DataFrame, table: TableSettings, file_times: Mapping[str, int]
) -> DataFrame:
    """Add to every row its sequence, its file's time, its op, and the structs of all its data and of its
    tracked values."""
    from pyspark.sql import functions as F

    times = spark.createDataFrame(
        [(path, int(micros)) for path, micros in file_times.items()], f"{SOURCE_FILE_COLUMN} string, micros long"
    ).select(SOURCE_FILE_COLUMN, F.timestamp_micros("micros").alias(FILE_TIME))
    columns = data_columns(frame)
    rows = frame.join(F.broadcast(times), SOURCE_FILE_COLUMN, "left")
    sequence = F.col(table.scd2_sequence_column) if table.scd2_sequence_column else F.col(FILE_TIME)
    op = (F.when(F.coalesce(F.expr(table.delete_condition), F.lit(False)), F.lit(DELETE)).otherwise(F.lit(UPSERT))
          if table.delete_condition else F.lit(UPSERT))
    return (
        rows.withColumn(SEQ, sequence)
        .withColumn(OP, op)
        .withColumn(VALUES, struct_of(columns))
        .withColumn(TRACKED, tracked_of(table, columns))
    )


def as_events(record: DataFrame, table: TableSettings, fields: Sequence[StructField]) -> DataFrame:
    """Change rows of the record in the shape ``with_sequence`` gives batch rows (``SEQ``, ``FILE_TIME``, ``OP``,
    ``VALUES`` over ``fields``, ``TRACKED``), so the two compare field by field: each value is cast to the field's
    type, and a column the record does not have yet (the batch adds it) is a NULL of that type. Extract markers
    are left out (``extracts_of``)."""
    from pyspark.sql import functions as F

    present = set(record.columns)
    values = F.struct(*[(F.col(f.name) if f.name in present else F.lit(None)).cast(f.dataType).alias(f.name)
                        for f in fields])
    op = F.coalesce(F.col(RECORD_OP), F.lit(UPSERT)) if RECORD_OP in present else F.lit(UPSERT)
    shaped = record.select(
        *table.primary_keys, F.col(RECORD_SEQUENCE).alias(SEQ), F.col(RECORD_FILE_TIME).alias(FILE_TIME),
        op.alias(OP), values.alias(VALUES), SOURCE_FILE_COLUMN,
    ).where(F.col(OP) != F.lit(EXTRACT))
    return shaped.withColumn(TRACKED, tracked_in(F.col(VALUES), table))


def new_events(annotated: DataFrame, table: TableSettings) -> DataFrame:
    """The events a batch adds: its new rows (``__new``), shaped as ``as_events`` shapes the record's."""
    return annotated.where("__new").select(*table.primary_keys, SEQ, FILE_TIME, OP, VALUES, SOURCE_FILE_COLUMN,
                                           TRACKED)


def in_order_events(annotated: DataFrame, table: TableSettings) -> DataFrame:
    """``new_events`` with each key's newest recorded change (``LAST_OP``, ``LAST_TRACKED``): what
    ``scd2.in_order_versions`` and ``scd1.in_order_rows`` need when no new row is older than its key's newest
    recorded change (a batch with no late rows)."""
    return annotated.where("__new").select(*table.primary_keys, SEQ, FILE_TIME, OP, VALUES, SOURCE_FILE_COLUMN,
                                           TRACKED, LAST_OP, LAST_TRACKED)


def known_of_keys(record: DataFrame, rows: DataFrame, table: TableSettings) -> DataFrame:
    """The record's change rows of the batch's keys (a semi-join), shaped by ``as_events``: what ``annotate``
    compares the batch with, and, cached, the history before the batch on the diff MERGE's path."""
    keys = table.primary_keys
    wanted = rows.select(*keys).distinct()
    return as_events(record.join(wanted, keys, "left_semi"), table, rows.schema[VALUES].dataType.fields)


# ------------------------------------------------------------------------------------------- full extracts
EXTRACT_FIELDS = ("path", "seq", "file_time")


def extract_markers(rows: DataFrame, table: TableSettings, file_times: Mapping[str, int],
                    paths: Sequence[str]) -> DataFrame:
    """One row per full extract of the batch: its path, its sequence (the largest sequence value of its rows when
    a sequence column is configured, else the file's time; an empty extract has the file's time) and its file
    time. ``paths`` are every file of the batch, so an empty extract (an empty source) is one too."""
    from pyspark.sql import functions as F

    spark = rows.sparkSession
    files = spark.createDataFrame([(p, int(file_times[p])) for p in paths],
                                  f"{SOURCE_FILE_COLUMN} string, micros long").select(
        SOURCE_FILE_COLUMN, F.timestamp_micros("micros").alias(FILE_TIME))
    if not table.scd2_sequence_column:
        return files.select(F.col(SOURCE_FILE_COLUMN).alias("path"), F.col(FILE_TIME).alias("seq"),
                            F.col(FILE_TIME).alias("file_time"))
    largest = rows.groupBy(SOURCE_FILE_COLUMN).agg(F.max(SEQ).alias("seq"))
    joined = files.join(largest, SOURCE_FILE_COLUMN, "left")
    return joined.select(F.col(SOURCE_FILE_COLUMN).alias("path"),
                         F.coalesce(F.col("seq"), F.col(FILE_TIME).cast(rows.schema[SEQ].dataType)).alias("seq"),
                         F.col(FILE_TIME).alias("file_time"))


def extracts_of(record: DataFrame) -> DataFrame:
    """The extract markers the record holds (path, seq, file_time)."""
    from pyspark.sql import functions as F

    if RECORD_OP not in record.columns:
        return record.select(F.col(SOURCE_FILE_COLUMN).alias("path"), F.col(RECORD_SEQUENCE).alias("seq"),
                             F.col(RECORD_FILE_TIME).alias("file_time")).limit(0)
    return record.where(F.col(RECORD_OP) == F.lit(EXTRACT)).select(
        F.col(SOURCE_FILE_COLUMN).alias("path"), F.col(RECORD_SEQUENCE).alias("seq"),
        F.col(RECORD_FILE_TIME).alias("file_time"))


def absence_events(events: DataFrame, extracts: DataFrame, table: TableSettings) -> DataFrame:
    """The deletes a set of full extracts implies: a key that is in extract i (in (seq, file time, path) order)
    and not in extract i+1 is deleted at extract i+1's sequence. From the keys' upserts that came from extracts
    (``events``) and every extract (``extracts``, a small frame). Empty with ``hard_deletes: ignore``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = list(table.primary_keys)
    if table.hard_deletes is HardDeletes.IGNORE:
        return events.limit(0)
    order = Window.orderBy("seq", "file_time", "path")
    numbered = extracts.distinct().withColumn("__i", F.row_number().over(order))
    count = numbered.agg(F.max("__i").alias("__n"))
    present = (events.where(F.col(OP) == F.lit(UPSERT)).select(*keys, SOURCE_FILE_COLUMN)
               .join(F.broadcast(numbered.select(F.col("path").alias(SOURCE_FILE_COLUMN), "__i")), SOURCE_FILE_COLUMN)
               .select(*keys, "__i").distinct())
    by_key = Window.partitionBy(*keys).orderBy("__i")
    gaps = (present.withColumn("__next", F.lead("__i").over(by_key)).crossJoin(F.broadcast(count))
            .where((F.col("__next").isNull() | (F.col("__next") != F.col("__i") + 1)) & (F.col("__i") < F.col("__n")))
            .select(*keys, (F.col("__i") + 1).alias("__i")))
    at = F.broadcast(numbered.select("__i", "path", "seq", "file_time"))
    sample = events.schema
    return gaps.join(at, "__i").select(
        *keys, F.col("seq").cast(sample[SEQ].dataType).alias(SEQ), F.col("file_time").alias(FILE_TIME),
        F.lit(DELETE).alias(OP), F.lit(None).cast(sample[VALUES].dataType).alias(VALUES),
        F.col("path").alias(SOURCE_FILE_COLUMN), F.lit(None).cast(sample[TRACKED].dataType).alias(TRACKED))


# ------------------------------------------------------------------------------------------- validation
@dataclass
class ChangeValidation:
    """Files to fail with their error, and the rows left to apply (annotated, see ``annotate``); how many are new
    (to record) and how many are late (older than their key's newest applied change)."""

    errors: dict[str, str] = field(default_factory=dict)
    rows: DataFrame | None = None
    new_rows: int = 0
    late_rows: int = 0


def _add_error(errors: dict[str, str], path: str, message: str) -> None:
    errors[path] = f"{errors[path]}; {message}" if path in errors else message


def annotate(rows: DataFrame, table: TableSettings, known: DataFrame | None) -> DataFrame:
    """Flag each row against what the record knows of its key (``known``, shaped by ``as_events``; None when the
    record is empty) and against the batch's previous row of the key:

    - ``__applied``: the record has this change row (same key, sequence, op and values): a replay, dropped;
    - ``__clash``: the record has a change row of the key at this sequence with another op or other values;
    - ``__late``: older than the key's newest recorded change, and neither applied nor a clash;
    - ``__ambiguous``: the previous row of the key in the batch has the same sequence but another op or other
      values (``__prev_file`` names that row's file);
    - ``__new``: to be recorded and applied: not applied, and not an identical duplicate of the previous row.

    Each row also carries its key's newest recorded change: its sequence (``__last_seq``), op and tracked values
    (``LAST_OP``, ``LAST_TRACKED``).

    One shuffle: the batch's rows and the record's rows of their keys in one frame, partitioned by key and
    ordered by (sequence, file time, path), the record's rows carrying NULL file time and path so that at an
    equal sequence they come before the batch's; one window pass gives each batch row the last record row up to
    it (the row at its sequence, if that is its sequence), the key's last record row (its newest change) and the
    last batch row before it (its previous row). The record holds at most one change row per (key, sequence)
    (a second one is refused as a clash), so "the last record row up to it" is the one at its sequence when
    there is one. The result stays partitioned by key and sorted by (sequence, file time, path), which the
    in-order MERGE's window reuses without a shuffle or a sort (``scd2.in_order_versions``). Each value crosses
    the shuffle once (see the comment below): the source columns other than the keys, and the tracked values,
    travel only inside ``VALUES`` and are taken out of it afterwards.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = list(table.primary_keys)
    origin, record_row, batch_seq = "__from_batch", "__record_row", "__batch_seq"
    # What crosses the shuffle: each value once. The source columns are fields of VALUES (``with_sequence``) and
    # so are the tracked values, so both are taken from VALUES after the window. A record row carries its
    # sequence, op and values in one struct and nothing else of its own; a batch row its own columns. Every
    # window input is then a column of one side (NULL on the other), never an expression, which Spark would
    # compute before the shuffle and send through it as one more copy of the values.
    unkeyed = [c for c in data_columns(rows) if c not in keys]
    as_record_row = F.struct(F.col(SEQ).alias("seq"), F.col(OP).alias("op"), F.col(VALUES).alias("values"))
    both = rows.drop(*unkeyed, TRACKED).select("*", F.col(SEQ).alias(batch_seq), F.lit(True).alias(origin))
    if known is not None:
        both = both.unionByName(known.select(
            *keys, SEQ, F.lit(None).cast("timestamp").alias(FILE_TIME),
            F.lit(None).cast("string").alias(SOURCE_FILE_COLUMN), F.lit(False).alias(origin),
            as_record_row.alias(record_row)),
            allowMissingColumns=True)
    else:  # no record, no record rows: the struct is NULL (of the type a record row's would have)
        both = both.withColumn(record_row, F.when(F.lit(False), as_record_row))
    in_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN, origin)

    def last(column: str, frame_end: int) -> Column:
        """``column`` of the last row up to ``frame_end`` (rows from the current one) where it is not NULL: a
        record row's struct, or a column of the batch's rows (none of them NULL on a batch row but the sequence,
        and a NULL sequence sorts first, so the last non-NULL sequence before a row is its previous row's)."""
        return F.last(F.col(column), ignorenulls=True).over(
            in_order.rowsBetween(Window.unboundedPreceding, frame_end))

    marked = both.select(
        "*",
        last(record_row, Window.currentRow).alias("__rec"),
        last(record_row, Window.unboundedFollowing).alias("__newest"),
        *[last(column, -1).alias(f"__prev_{name}")
          for name, column in (("seq", batch_seq), ("op", OP), ("values", VALUES), ("file", SOURCE_FILE_COLUMN))],
    ).where(F.col(origin))
    recorded = F.coalesce(F.col("__rec.seq") == F.col(SEQ), F.lit(False))
    same = recorded & F.coalesce((F.col("__rec.op") == F.col(OP)) & F.col("__rec.values").eqNullSafe(F.col(VALUES)),
                                 F.lit(False))
    same_seq_as_previous = F.coalesce(F.col("__prev_seq") == F.col(SEQ), F.lit(False))
    equal_to_previous = F.coalesce((F.col("__prev_op") == F.col(OP))
                                   & F.col("__prev_values").eqNullSafe(F.col(VALUES)), F.lit(False))

    def restored(column: str) -> Column:
        if column == SEQ:
            return F.col(SEQ).cast(rows.schema[SEQ].dataType).alias(SEQ)
        if column == TRACKED:
            return tracked_in(F.col(VALUES), table).alias(TRACKED)
        if column in unkeyed:
            return F.col(VALUES).getField(column).alias(column)
        return F.col(column)

    return marked.select(
        *[restored(c) for c in rows.columns],
        F.col("__newest.seq").alias("__last_seq"),  # the record's type: its values may not fit the batch's
        F.col("__newest.op").alias(LAST_OP), tracked_in(F.col("__newest.values"), table).alias(LAST_TRACKED),
        same.alias("__applied"), (recorded & ~same).alias("__clash"),
        (F.coalesce(F.col(SEQ) < F.col("__newest.seq"), F.lit(False)) & ~recorded).alias("__late"),
        (same_seq_as_previous & ~equal_to_previous).alias("__ambiguous"),
        F.col("__prev_file"),
        (~same & ~(same_seq_as_previous & equal_to_previous)).alias("__new"),
    )


@dataclass(frozen=True)
class BatchSummary:
    errors: dict[str, str]
    new_rows: int
    late_rows: int


def summarise(annotated: DataFrame, table: TableSettings) -> BatchSummary:
    """One aggregation over the annotated rows, per file: rows of each problem kind with a few keys of each,
    and the new and late rows."""
    from pyspark.sql import functions as F

    keys = table.primary_keys
    refuse_late = table.is_scd2 and table.late_arriving is LateArriving.REFUSE
    null_key = F.lit(False)
    for key in keys:
        null_key = null_key | F.col(key).isNull()
    flags = {
        "null_key": null_key,
        "null_seq": F.col(SEQ).isNull() & ~null_key,
        "ambiguous": F.col("__ambiguous") & ~null_key,
        "clash": F.col("__clash") & ~null_key,
        "late": F.col("__late") & ~F.col("__ambiguous") & ~null_key,
    }
    at = F.concat(key_json(keys), F.lit(" at "), F.col(SEQ).cast("string"))
    samples = {"ambiguous": at, "clash": at, "late": F.concat(at, F.lit(" (newest change of the key at "),
                                                               F.col("__last_seq").cast("string"), F.lit(")"))}
    files = F.when(flags["ambiguous"], F.array(SOURCE_FILE_COLUMN, "__prev_file")).otherwise(
        F.array(SOURCE_FILE_COLUMN))  # an ambiguity involves the row's file and the previous row's file
    columns = [F.explode(F.array_distinct(files)).alias("file"), F.col("__new"),
               *[flag.alias(f"__is_{kind}") for kind, flag in flags.items()],
               *[F.when(flags[kind], sample).alias(f"__at_{kind}") for kind, sample in samples.items()]]
    aggregates = [F.sum(F.col("__new").cast("long")).alias("new"),
                  *[F.sum(F.col(f"__is_{kind}").cast("long")).alias(kind) for kind in flags],
                  *[F.slice(F.collect_list(f"__at_{kind}"), 1, SAMPLE).alias(f"sample_{kind}") for kind in samples]]
    per_file = annotated.select(*columns).groupBy("file").agg(*aggregates).collect()
    errors: dict[str, str] = {}
    for row in sorted(per_file, key=lambda r: r["file"]):
        path = row["file"]
        if row["null_key"]:
            _add_error(errors, path, f"{row['null_key']} rows with a null primary key ({', '.join(keys)})")
        if row["null_seq"]:
            _add_error(errors, path, f"{row['null_seq']} rows with a null {table.scd2_sequence_column}")
        if row["ambiguous"]:
            _add_error(errors, path, f"ambiguous: {row['ambiguous']} rows have the same key and the same sequence "
                                     f"value but a different op or different values as another row of the batch, "
                                     f"e.g. {', '.join(row['sample_ambiguous'])}")
        if row["clash"]:
            _add_error(errors, path, f"ambiguous: {row['clash']} rows have the same key and sequence value as a "
                                     f"change already applied to the table but a different op or different values, "
                                     f"e.g. {', '.join(row['sample_clash'])}")
        if row["late"] and refuse_late:
            _add_error(errors, path, f"late-arriving change: {row['late']} rows are older than their key's newest "
                                     f"applied change and are refused (late_arriving: refuse), e.g. "
                                     f"{', '.join(row['sample_late'])}")
    return BatchSummary(errors, sum(int(r["new"] or 0) for r in per_file),
                        sum(int(r["late"] or 0) for r in per_file))


def validate_batch(
    rows: DataFrame,
    table: TableSettings,
    known: DataFrame | None,
    keep: Callable[[DataFrame], DataFrame] = lambda frame: frame,
) -> ChangeValidation:
    """Find the files with bad rows (see the module docstring); return the good files' rows, annotated
    (``annotate``), and how many are new and late. ``known`` comes from ``known_of_keys``, None when the record
    is empty. ``keep`` may persist the annotated rows, which the summary and the writes all read.

    Happy path: one shuffle and one window (``annotate``) and one aggregation (``summarise``). When some files
    fail, the annotation is computed again without them, because a failed file's rows must not take part in the
    other files' flags.
    """
    from pyspark.sql import functions as F

    errors: dict[str, str] = {}
    while True:
        good = rows.where(~F.col(SOURCE_FILE_COLUMN).isin(list(errors))) if errors else rows
        annotated = keep(annotate(good, table, known))
        summary = summarise(annotated, table)
        if not summary.errors:
            return ChangeValidation(errors=errors, rows=annotated, new_rows=summary.new_rows,
                                    late_rows=summary.late_rows)
        errors.update(summary.errors)


def change_rows(annotated: DataFrame) -> DataFrame:
    """The rows a batch adds to the change record (new ones), with their sequence, file time and op."""
    from pyspark.sql import functions as F

    return annotated.where("__new").select(
        *data_columns(annotated), F.col(SEQ).alias(RECORD_SEQUENCE), F.col(FILE_TIME).alias(RECORD_FILE_TIME),
        F.col(OP).alias(RECORD_OP), SOURCE_FILE_COLUMN)


def marker_rows(markers: DataFrame, like: DataFrame) -> DataFrame:
    """Extract markers as change-record rows (keys and values NULL) with ``like``'s columns."""
    from pyspark.sql import functions as F

    columns = [F.lit(None).cast(like.schema[c].dataType).alias(c) for c in data_columns(like)]
    return markers.select(*columns, F.col("seq").cast(like.schema[RECORD_SEQUENCE].dataType).alias(RECORD_SEQUENCE),
                          F.col("file_time").alias(RECORD_FILE_TIME), F.lit(EXTRACT).alias(RECORD_OP),
                          F.col("path").alias(SOURCE_FILE_COLUMN))


def is_full(table: TableSettings) -> bool:
    return table.extract_mode is ExtractMode.FULL
