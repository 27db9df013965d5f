"""SCD2 in Spark: validate a batch against the change record, work out its versions, express them as one MERGE.

Terms: keys = ``primary_keys``; the *sequence* of a row is its ``scd2_sequence_column`` value, or, without one,
its file's modification time; a row's *tracked values* are its ``tracking_columns``, compared null-safely as one
struct (Spark's struct equality: a null field equals a null field and differs from a value). A *change row* is a
source row as applied; the change record (``changes.py``) keeps every change row ever applied, including those
that repeated the key's current values and so started no version.

The definition (docs/CONTRACT.md, "SCD2"): for a key, the versions are the maximal runs of equal tracked values
in sequence order over every change row in the record; each version carries the values of the row that starts
it, starts at that row's sequence and ends where the next version starts (NULL, and current, for the last).

Validation of a batch (each problem fails the files involved, naming file and key; nothing is written for them):
- a null key or a null sequence value;
- rows of one key with the same sequence but different values, inside the batch (identical rows collapse onto the
  first in load order), or against a change row of the record (``clash``);
- a late-arriving change: a row older than its key's newest change row in the record, not in the record itself.
A row equal to a change row of the record (same key, sequence and values) was applied before (a replayed batch, a
reload after ``reset-state``, the same content under a new name with the same sequence): it is dropped, so replays
add nothing; this holds for rows that started no version too, since the record has them.

Versions: per key, in sequence order (then file time, then path), a new row whose tracked values differ from the
key's previous state (its newest recorded change row, or the previous new row of the batch) starts a version;
other new rows are recorded and write no version (changes to non-tracked columns only are not versions). The
key's current version, if it gets a new one, is closed at the first new version's start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader_assets.reading import AUDIT_COLUMNS, BATCH_ID_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.settings import CHANGE_RECORD_COLUMNS, TableSettings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructField

SEQ = "__seq"
FILE_TIME = "__file_time"
VALUES = "__values"
TRACKED = "__tracked"
ACTION = "__action"
CLOSE_AT = "__close_at"
MERGE_KEY_PREFIX = "__mk_"
SAMPLE = 5


def _json(columns: Sequence[str]) -> Column:
    """Key text for error messages, e.g. ``{"customer_id":7}``."""
    from pyspark.sql import functions as F

    return F.to_json(F.struct(*[F.col(c) for c in columns]))


def _struct(columns: Sequence[str]) -> Column:
    """Values compared as one struct: struct equality in Spark is null-safe per field (null = null, null != x)."""
    from pyspark.sql import functions as F

    return F.struct(*[F.col(c) for c in columns])


def data_columns(frame: DataFrame) -> list[str]:
    """The source columns of a frame: not the audit columns, not the loader's ``_``/``__`` working columns."""
    return [c for c in frame.columns if c not in AUDIT_COLUMNS and not c.startswith("__")
            and c not in RECORD_COLUMNS]


# the change record's own columns beside the source columns (changes.py writes them)
RECORD_COLUMNS = CHANGE_RECORD_COLUMNS
RECORD_SEQUENCE, RECORD_FILE_TIME, RECORD_BATCH_SEQ = CHANGE_RECORD_COLUMNS


def with_sequence(
    spark: SparkSession, frame: DataFrame, table: TableSettings, file_times: Mapping[str, int]
) -> DataFrame:
    """Add the sequence, the file time, and the struct of all data and of the tracked values to every row."""
    from pyspark.sql import functions as F

    times = spark.createDataFrame(
        [(path, int(micros)) for path, micros in file_times.items()], f"{SOURCE_FILE_COLUMN} string, micros long"
    ).select(SOURCE_FILE_COLUMN, F.timestamp_micros("micros").alias(FILE_TIME))
    columns = data_columns(frame)
    rows = frame.join(F.broadcast(times), SOURCE_FILE_COLUMN, "left")
    sequence = F.col(table.scd2_sequence_column) if table.scd2_sequence_column else F.col(FILE_TIME)
    return (
        rows.withColumn(SEQ, sequence)
        .withColumn(VALUES, _struct(columns))
        .withColumn(TRACKED, _struct(table.tracking_columns))
    )


def as_change_rows(record: DataFrame, table: TableSettings, fields: Sequence[StructField]) -> DataFrame:
    """Rows of the change record in the shape ``with_sequence`` gives batch rows (``SEQ``, ``FILE_TIME``,
    ``VALUES`` over ``fields``, ``TRACKED``), so the two compare field by field: each value is cast to the
    field's type, and a column the record does not have yet (the batch adds it) is a NULL of that type."""
    from pyspark.sql import functions as F

    present = set(record.columns)
    values = F.struct(*[(F.col(f.name) if f.name in present else F.lit(None)).cast(f.dataType).alias(f.name)
                        for f in fields])
    return record.select(
        *table.primary_keys, F.col(RECORD_SEQUENCE).alias(SEQ), F.col(RECORD_FILE_TIME).alias(FILE_TIME),
        values.alias(VALUES), _struct(table.tracking_columns).alias(TRACKED), SOURCE_FILE_COLUMN,
    )


def known_of_keys(record: DataFrame, rows: DataFrame, table: TableSettings) -> DataFrame:
    """The record's change rows of the batch's keys (a semi-join), shaped by ``as_change_rows``; cache it:
    the annotation reads it twice."""
    keys = table.primary_keys
    wanted = rows.select(*keys).distinct()
    return as_change_rows(record.join(wanted, keys, "left_semi"), table, rows.schema[VALUES].dataType.fields)


@dataclass
class Scd2Validation:
    """Files to fail with their error, and the rows left to apply (annotated, see ``annotate``): how many are
    new (to record) and how many start a version (to merge)."""

    errors: dict[str, str] = field(default_factory=dict)
    rows: DataFrame | None = None
    new_rows: int = 0
    changed_rows: int = 0


def _add_error(errors: dict[str, str], path: str, message: str) -> None:
    errors[path] = f"{errors[path]}; {message}" if path in errors else message


def annotate(rows: DataFrame, table: TableSettings, known: DataFrame | None) -> DataFrame:
    """Join each row with what the record knows of its key (its change row at the row's sequence, if any; its
    newest change row) and, over each key in load order (one window), flag it:

    - ``__applied``: the record has this change row (same key, sequence and values): a replay, dropped;
    - ``__clash``: the record has a change row of the key at this sequence with other values;
    - ``__late``: older than the key's newest recorded change row, and neither applied nor a clash;
    - ``__ambiguous``: the previous row of the key in the batch has the same sequence but other values
      (``__prev_file`` names that row's file);
    - ``__new``: to be recorded: not applied, and not an identical duplicate of the previous row of the batch;
    - ``__changed``: new, and its tracked values differ from the previous new row's, or, for the first, from the
      key's newest recorded change row (``__cur``, NULL for a new key): it starts a version.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = table.primary_keys
    if known is None:
        joined = rows.select(
            "*",
            F.lit(None).cast(rows.schema[TRACKED].dataType).alias("__cur"),
            F.lit(None).cast(rows.schema[SEQ].dataType).alias("__last_seq"),
            F.lit(None).cast(rows.schema[VALUES].dataType).alias("__rec_values"),
        )
    else:
        latest = known.groupBy(*keys).agg(F.max(SEQ).alias("__last_seq"), F.max_by(TRACKED, SEQ).alias("__cur"))
        at_seq = known.select(*keys, SEQ, F.col(VALUES).alias("__rec_values"))
        joined = rows.join(latest, list(keys), "left").join(at_seq, [*keys, SEQ], "left")
    applied = F.coalesce(F.col("__rec_values") == F.col(VALUES), F.lit(False))
    clash = F.coalesce(F.col("__rec_values") != F.col(VALUES), F.lit(False))
    in_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN)
    before = in_order.rowsBetween(Window.unboundedPreceding, -1)
    same_seq_as_previous = F.coalesce(F.lag(SEQ).over(in_order) == F.col(SEQ), F.lit(False))
    duplicate = same_seq_as_previous & F.coalesce(F.lag(VALUES).over(in_order) == F.col(VALUES), F.lit(False))
    flagged = (
        joined.withColumn("__applied", applied)
        .withColumn("__clash", clash)
        .withColumn("__late", F.coalesce(F.col(SEQ) < F.col("__last_seq"), F.lit(False))
                    & ~F.col("__applied") & ~F.col("__clash"))
        .withColumn("__ambiguous", same_seq_as_previous
                    & F.coalesce(F.lag(VALUES).over(in_order) != F.col(VALUES), F.lit(False)))
        .withColumn("__prev_file", F.lag(SOURCE_FILE_COLUMN).over(in_order))
        .withColumn("__new", ~F.col("__applied") & ~duplicate)
    )
    previous_state = F.coalesce(
        F.last(F.when(F.col("__new"), F.col(TRACKED)), ignorenulls=True).over(before), F.col("__cur")
    )
    return flagged.withColumn(
        "__changed", F.col("__new") & (previous_state.isNull() | (previous_state != F.col(TRACKED))))


@dataclass(frozen=True)
class BatchSummary:
    """What one aggregation over an annotated batch found: an error per file, and how many rows are new (to
    record) and start a version (to merge)."""

    errors: dict[str, str]
    new_rows: int
    changed_rows: int


KINDS = ("null_key", "null_seq", "ambiguous", "clash", "late")


def summarise(annotated: DataFrame, table: TableSettings) -> BatchSummary:
    """One aggregation over the annotated rows, per file: rows of each problem kind with a few keys of each,
    and the new and changed rows."""
    from pyspark.sql import functions as F

    keys = table.primary_keys
    null_key = F.lit(False)
    for key in keys:
        null_key = null_key | F.col(key).isNull()
    flags = {
        "null_key": null_key,
        "null_seq": F.col(SEQ).isNull() & ~null_key,
        "ambiguous": F.col("__ambiguous") & ~null_key,
        "clash": F.col("__clash") & ~null_key,
        "late": F.col("__late") & ~F.col("__ambiguous") & ~F.col("__clash") & ~null_key,
    }
    at = F.concat(_json(keys), F.lit(" at "), F.col(SEQ).cast("string"))
    samples = {"ambiguous": at, "clash": at, "late": F.concat(at, F.lit(" (newest change of the key at "),
                                                               F.col("__last_seq").cast("string"), F.lit(")"))}
    # an ambiguity involves the row's file and the previous row's file
    files = F.when(flags["ambiguous"], F.array(SOURCE_FILE_COLUMN, "__prev_file")).otherwise(
        F.array(SOURCE_FILE_COLUMN))
    columns = [F.explode(F.array_distinct(files)).alias("file"), F.col("__new"), F.col("__changed"),
               *[flag.alias(f"__is_{kind}") for kind, flag in flags.items()],
               *[F.when(flags[kind], sample).alias(f"__at_{kind}") for kind, sample in samples.items()]]
    aggregates = [F.sum(F.col("__new").cast("long")).alias("new"), F.sum(F.col("__changed").cast("long")).alias("changed"),
                  *[F.sum(F.col(f"__is_{kind}").cast("long")).alias(kind) for kind in KINDS],
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
                                     f"value but different values as another row of the batch, e.g. "
                                     f"{', '.join(row['sample_ambiguous'])}")
        if row["clash"]:
            _add_error(errors, path, f"ambiguous: {row['clash']} rows have the same key and sequence value as a "
                                     f"change already applied to the table but different values, e.g. "
                                     f"{', '.join(row['sample_clash'])}")
        if row["late"]:
            _add_error(errors, path, f"late-arriving change: {row['late']} rows are older than their key's newest "
                                     f"applied change and are refused, e.g. {', '.join(row['sample_late'])}")
    return BatchSummary(errors, sum(int(r["new"] or 0) for r in per_file),
                        sum(int(r["changed"] or 0) for r in per_file))


def validate_batch(
    rows: DataFrame,
    table: TableSettings,
    known: DataFrame | None,
    keep: Callable[[DataFrame], DataFrame] = lambda frame: frame,
) -> Scd2Validation:
    """Find the files with bad rows (see the module docstring); return the good files' rows, annotated
    (``annotate``), ready for ``compute_changes``, and how many are new and changed. ``known`` comes from
    ``known_of_keys``, None when the record is empty. ``keep`` may persist the annotated rows, which the summary
    and the writes all read.

    Happy path: one join, one window and one aggregation (``summarise``). When some files fail, the annotation
    is computed again without them, because a failed file's rows must not take part in the other files' change
    detection.
    """
    from pyspark.sql import functions as F

    errors: dict[str, str] = {}
    while True:
        good = rows.where(~F.col(SOURCE_FILE_COLUMN).isin(list(errors))) if errors else rows
        annotated = keep(annotate(good, table, known))
        summary = summarise(annotated, table)
        if not summary.errors:
            return Scd2Validation(errors=errors, rows=annotated, new_rows=summary.new_rows,
                                  changed_rows=summary.changed_rows)
        errors.update(summary.errors)


def change_rows(annotated: DataFrame) -> DataFrame:
    """The rows a batch adds to the change record (new ones), with their sequence and file time."""
    from pyspark.sql import functions as F

    return annotated.where("__new").select(
        *data_columns(annotated), F.col(SEQ).alias(RECORD_SEQUENCE), F.col(FILE_TIME).alias(RECORD_FILE_TIME),
        SOURCE_FILE_COLUMN)


@dataclass(frozen=True)
class Scd2Changes:
    """New versions to insert and current versions to close, as DataFrames (nothing collected)."""

    inserts: DataFrame
    closes: DataFrame


def compute_changes(rows: DataFrame, table: TableSettings) -> Scd2Changes:
    """The versions a validated, annotated batch adds, and where the keys' current versions end: each changed
    row starts a version that ends where the key's next one starts; a key's current version is closed at its
    first new version's start."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = table.primary_keys
    start, end, current = table.scd2_output_columns
    in_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN)
    versions = (
        rows.where("__changed")
        .withColumn("__next", F.lead(SEQ).over(in_order))
        .withColumn("__first", F.row_number().over(in_order) == 1)
    )
    columns = data_columns(rows)
    inserts = versions.select(
        *columns,
        F.col(SEQ).alias(start),
        F.col("__next").alias(end),
        F.col("__next").isNull().alias(current),
        SOURCE_FILE_COLUMN,
    )
    closes = versions.where(F.col("__first") & F.col("__cur").isNotNull()).select(
        *[F.col(k).alias(MERGE_KEY_PREFIX + k) for k in keys], F.col(SEQ).alias(CLOSE_AT)
    )
    return Scd2Changes(inserts=inserts, closes=closes)


def merge_source(changes: Scd2Changes, table: TableSettings, audit: Mapping[str, Column]) -> DataFrame:
    """One source for the canonical SCD2 MERGE: close rows carry merge keys, insert rows carry NULL ones."""
    from pyspark.sql import functions as F

    inserts = changes.inserts
    for name, value in audit.items():
        inserts = inserts.withColumn(name, value)
    for key in table.primary_keys:
        inserts = inserts.withColumn(MERGE_KEY_PREFIX + key, F.lit(None).cast(changes.inserts.schema[key].dataType))
    inserts = inserts.withColumn(CLOSE_AT, F.lit(None).cast(changes.inserts.schema[table.scd2_effective_date_column]
                                                           .dataType)).withColumn(ACTION, F.lit("insert"))
    closes = changes.closes.withColumn(ACTION, F.lit("close"))
    return inserts.unionByName(closes, allowMissingColumns=True)


def merge_into(spark: SparkSession, target_path: str, source: DataFrame, table: TableSettings,
               insert_columns: Sequence[str]) -> None:
    """Run the MERGE (one commit). The caller sets and clears the txn session confs around it."""
    from delta.tables import DeltaTable

    start, end, current = table.scd2_output_columns
    condition = " AND ".join([f"t.`{k}` = s.`{MERGE_KEY_PREFIX}{k}`" for k in table.primary_keys] + [f"t.`{current}`"])
    (
        DeltaTable.forPath(spark, target_path).alias("t")
        .merge(source.alias("s"), condition)
        .whenMatchedUpdate(condition=f"s.`{ACTION}` = 'close'",
                           set={end: f"s.`{CLOSE_AT}`", current: "false"})
        .whenNotMatchedInsert(condition=f"s.`{ACTION}` = 'insert'",
                              values={c: f"s.`{c}`" for c in insert_columns})
        .execute()
    )


@dataclass
class Scd2Violations:
    """Invariant violations of an SCD2 table (counts, and a few keys of each)."""

    keys_without_one_current: int = 0
    flag_end_disagreements: int = 0
    interval_breaks: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.keys_without_one_current or self.flag_end_disagreements or self.interval_breaks)


def scd2_violations(
    spark: SparkSession, target_path: str, table: TableSettings, batch_ids: Sequence[str] | None = None
) -> Scd2Violations:
    """Check: one current row per key; current flag <=> end is NULL; per key, versions follow one another
    without gaps or overlaps (each end equals the next start, each start before its end), and the last is the
    current one. With ``batch_ids``, only the keys those batches wrote are checked (their whole history): what
    a load can have broken, at a cost that does not grow with the table; when they are more than
    ``SCOPED_CHECK_MAX_KEYS``, the whole table is checked instead (cheaper than the join at that size)."""
    from pyspark.sql import functions as F

    keys = table.primary_keys
    frame = spark.read.format("delta").load(target_path)
    if batch_ids is not None:
        # The batches' keys (their files are pruned by _batch_id statistics). When they are a large part of the
        # table, a semi-join costs more than checking everything (benchmark P2), so the whole table is checked.
        touched = frame.where(F.col(BATCH_ID_COLUMN).isin(list(batch_ids))).select(*keys).distinct().cache()
        try:
            if touched.count() <= SCOPED_CHECK_MAX_KEYS:
                scoped = frame.join(F.broadcast(touched), list(keys), "left_semi").cache()
                try:
                    return violations_of(scoped, table)
                finally:
                    scoped.unpersist()
        finally:
            touched.unpersist()
    return violations_of(frame, table)


SCOPED_CHECK_MAX_KEYS = 50_000


def violations_of(frame: DataFrame, table: TableSettings) -> Scd2Violations:
    """The three invariants in one pass: one window over each key (its versions in start order, its count of
    current rows) and one aggregation, with a few keys of each kind of violation."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = table.primary_keys
    start, end, current = table.scd2_output_columns
    by_key = Window.partitionBy(*keys)
    ordered = by_key.orderBy(start)
    flags = {
        "keys_without_one_current": (F.sum(F.coalesce(F.col(current).cast("int"), F.lit(0))).over(by_key) != 1)
        & (F.row_number().over(ordered) == 1),
        "flag_end_disagreements": (F.col(current) & F.col(end).isNotNull()) | (~F.col(current) & F.col(end).isNull())
        | F.col(current).isNull(),
        "interval_breaks": (F.lead(start).over(ordered).isNotNull()
                            & (F.col(end).isNull() | (F.col(end) != F.lead(start).over(ordered))))
        | (F.lead(start).over(ordered).isNull() & F.col(end).isNotNull())
        | (F.col(end).isNotNull() & (F.col(end) <= F.col(start))),
    }
    flagged = frame.select(_json(keys).alias("__key"),
                           *[F.coalesce(flag, F.lit(False)).alias(name) for name, flag in flags.items()])
    summary = flagged.agg(
        *[F.sum(F.col(name).cast("long")).alias(name) for name in flags],
        *[F.slice(F.collect_list(F.when(F.col(name), F.col("__key"))), 1, SAMPLE).alias(f"sample_{name}")
          for name in flags],
    ).collect()[0]
    result = Scd2Violations()
    for name in flags:
        setattr(result, name, int(summary[name] or 0))
        if summary[name]:
            result.samples[name] = list(summary[f"sample_{name}"])
    return result


def history_from_changes(changes: DataFrame, table: TableSettings) -> DataFrame:
    """The SCD2 history the definition gives for change rows shaped by ``as_change_rows``: per key, in sequence
    order, each row whose tracked values differ from the previous row's starts a version, which ends where the
    key's next version starts. Columns: keys, start, end, current, ``VALUES``, ``_source_file``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = table.primary_keys
    start, end, current = table.scd2_output_columns
    in_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN)
    starts = (changes.withColumn("__starts", F.coalesce(F.lag(TRACKED).over(in_order) != F.col(TRACKED),
                                                          F.lit(True)))
              .where("__starts"))
    by_start = Window.partitionBy(*keys).orderBy(SEQ)
    return starts.select(
        *keys, F.col(SEQ).alias(start), F.lead(SEQ).over(by_start).alias(end),
        F.lead(SEQ).over(by_start).isNull().alias(current), VALUES, SOURCE_FILE_COLUMN,
    )


@dataclass
class HistoryDifference:
    """Versions the change record implies but the table lacks (``missing``) or has without the record implying
    them (``unexpected``), counted, with a few keys of each."""

    missing: int = 0
    unexpected: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected)


def compare_history(
    target: DataFrame, changes: DataFrame, table: TableSettings, keys_frame: DataFrame | None = None
) -> HistoryDifference:
    """Compare the table's versions with ``history_from_changes`` of the record (``changes``, already filtered to
    the rows that count), on every column that defines a version: keys, start, end, current flag, the source
    values and ``_source_file``. With ``keys_frame``, only those keys."""
    from pyspark.sql import functions as F

    keys = list(table.primary_keys)
    start, end, current = table.scd2_output_columns
    columns = [c for c in target.columns if c not in AUDIT_COLUMNS and c not in table.scd2_output_columns]
    fields = [target.schema[c] for c in columns]
    if keys_frame is not None:
        target = target.join(keys_frame, keys, "left_semi")
        changes = changes.join(keys_frame, keys, "left_semi")
    expected = history_from_changes(as_change_rows(changes, table, fields), table)
    actual = target.select(*keys, start, end, current, _struct(columns).alias(VALUES), SOURCE_FILE_COLUMN)
    rest = [end, current, VALUES, SOURCE_FILE_COLUMN]
    joined = expected.select(*keys, start, *[F.col(c).alias(f"__e_{c}") for c in rest], F.lit(True).alias("__e")).join(
        actual.select(*keys, start, *[F.col(c).alias(f"__a_{c}") for c in rest], F.lit(True).alias("__a")),
        [*keys, start], "full_outer")
    same = F.lit(True)
    for column in rest:
        same = same & F.col(f"__e_{column}").eqNullSafe(F.col(f"__a_{column}"))
    matched = F.col("__e").isNotNull() & F.col("__a").isNotNull() & same
    label = F.concat(_json(keys), F.lit(" from "), F.col(start).cast("string"))
    missing, unexpected = F.col("__e").isNotNull() & ~matched, F.col("__a").isNotNull() & ~matched
    summary = joined.agg(
        F.sum(missing.cast("long")).alias("missing"), F.sum(unexpected.cast("long")).alias("unexpected"),
        F.slice(F.collect_list(F.when(missing, label)), 1, SAMPLE).alias("sample_missing"),
        F.slice(F.collect_list(F.when(unexpected, label)), 1, SAMPLE).alias("sample_unexpected"),
    ).collect()[0]
    result = HistoryDifference(missing=int(summary["missing"] or 0), unexpected=int(summary["unexpected"] or 0))
    for name in ("missing", "unexpected"):
        if summary[name]:
            result.samples[name] = list(summary[f"sample_{name}"])
    return result
