"""SCD2 in Spark: validate a batch, work out its versions, and express them as one Delta MERGE (DESIGN.md s. 6).

Terms: keys = ``primary_keys``; the *sequence* of a row is its ``scd2_sequence_column`` value, or, without one,
its file's modification time; a row's *tracked values* are its ``tracking_columns`` (compared null-safely, as
JSON of the struct, where a null field and a value differ).

Validation (each problem fails the files involved, naming file and key; nothing is written for them):
- a null key or a null sequence value;
- rows of one key with the same sequence but different values, inside the batch (identical rows collapse);
- a row whose key already has a version starting at the same sequence with other tracked values;
- a late-arriving change: a row older than its key's current version that is not already in the table.
A row whose key already has a version starting at its sequence with the same tracked values was applied
before (a replayed batch, the same content under a new name): it is dropped, so replays add nothing.

Versions: per key, in sequence order (then file time, then path), a row whose tracked values differ from the
key's previous state (its current version, or the previous row of the batch) starts a new version; other rows
write nothing (changes to non-tracking columns only are not versions). A version ends where the key's next
version starts; the key's current version, if it has a new one, is closed at the first new version's start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader_assets.reading import AUDIT_COLUMNS, SOURCE_FILE_COLUMN
from loader_assets.settings import TableSettings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SEQ = "__seq"
FILE_TIME = "__file_time"
VALUES = "__values"
TRACKED = "__tracked"
ACTION = "__action"
CLOSE_AT = "__close_at"
MERGE_KEY_PREFIX = "__mk_"
SAMPLE = 5


def _json(columns: Sequence[str]) -> Column:
    from pyspark.sql import functions as F

    return F.to_json(F.struct(*[F.col(c) for c in columns]))


def data_columns(frame: DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in AUDIT_COLUMNS and not c.startswith("__")]


def with_sequence(
    spark: SparkSession, frame: DataFrame, table: TableSettings, file_times: Mapping[str, int]
) -> DataFrame:
    """Add the sequence, the file time and the JSON of all data and of the tracked values to every row."""
    from pyspark.sql import functions as F

    times = spark.createDataFrame(
        [(path, int(micros)) for path, micros in file_times.items()], f"{SOURCE_FILE_COLUMN} string, micros long"
    ).select(SOURCE_FILE_COLUMN, F.timestamp_micros("micros").alias(FILE_TIME))
    columns = data_columns(frame)
    rows = frame.join(F.broadcast(times), SOURCE_FILE_COLUMN, "left")
    sequence = F.col(table.scd2_sequence_column) if table.scd2_sequence_column else F.col(FILE_TIME)
    return (
        rows.withColumn(SEQ, sequence)
        .withColumn(VALUES, _json(columns))
        .withColumn(TRACKED, _json(table.tracking_columns))
    )


def versions_of_keys(target: DataFrame, rows: DataFrame, table: TableSettings) -> DataFrame:
    """The target's versions of the keys that occur in the batch (all that validation and changes need)."""
    return target.join(rows.select(*table.primary_keys).distinct(), table.primary_keys, "left_semi")


@dataclass
class Scd2Validation:
    """Files to fail with their error, and the rows left to apply."""

    errors: dict[str, str] = field(default_factory=dict)
    rows: DataFrame | None = None


def _add_error(errors: dict[str, str], path: str, message: str) -> None:
    errors[path] = f"{errors[path]}; {message}" if path in errors else message


def validate_batch(
    rows: DataFrame, table: TableSettings, target: DataFrame | None
) -> Scd2Validation:
    """Find the files with bad rows (see the module docstring); return the good files' rows still to apply.
    ``target`` is the target's versions (all, or those of the batch's keys), None for a new table."""
    from pyspark.sql import functions as F

    keys = table.primary_keys
    errors: dict[str, str] = {}
    key_null = F.lit(False)
    for key in keys:
        key_null = key_null | F.col(key).isNull()
    nulls = (
        rows.groupBy(SOURCE_FILE_COLUMN)
        .agg(
            F.sum(F.when(key_null, 1).otherwise(0)).alias("null_keys"),
            F.sum(F.when(F.col(SEQ).isNull() & ~key_null, 1).otherwise(0)).alias("null_seq"),
        )
        .where("null_keys > 0 OR null_seq > 0")
        .collect()
    )
    for row in nulls:
        if row["null_keys"]:
            _add_error(errors, row[SOURCE_FILE_COLUMN],
                       f"{row['null_keys']} rows with a null primary key ({', '.join(keys)})")
        if row["null_seq"]:
            _add_error(errors, row[SOURCE_FILE_COLUMN],
                       f"{row['null_seq']} rows with a null {table.scd2_sequence_column}")
    rows = rows.where(~key_null & F.col(SEQ).isNotNull())

    ambiguous = (
        rows.groupBy(*keys, SEQ)
        .agg(F.countDistinct(VALUES).alias("variants"), F.collect_set(SOURCE_FILE_COLUMN).alias("files"))
        .where("variants > 1")
        .select(F.explode("files").alias("file"), _json(keys).alias("key"), F.col(SEQ).cast("string").alias("seq"))
        .groupBy("file")
        .agg(F.count(F.lit(1)).alias("n"), F.slice(F.collect_list(F.concat_ws(" at ", "key", "seq")), 1, SAMPLE)
             .alias("sample"))
        .collect()
    )
    for row in ambiguous:
        _add_error(errors, row["file"],
                   f"ambiguous: {row['n']} keys have rows with the same sequence value but different values, "
                   f"e.g. {', '.join(row['sample'])}")

    if target is not None:
        versions = target.select(
            *keys,
            F.col(table.scd2_effective_date_column).alias("__t_start"),
            _json(table.tracking_columns).alias("__t_tracked"),
            F.col(table.scd2_current_flag_column).alias("__t_current"),
        )
        same_start = F.col("__t_start") == F.col(SEQ)
        flags = (
            rows.select(SOURCE_FILE_COLUMN, SEQ, TRACKED, *keys)
            .join(versions, keys, "left")
            .groupBy(SOURCE_FILE_COLUMN, SEQ, TRACKED, *keys)
            .agg(
                F.max(F.when(same_start & (F.col("__t_tracked") == F.col(TRACKED)), 1).otherwise(0)).alias("applied"),
                F.max(F.when(same_start & (F.col("__t_tracked") != F.col(TRACKED)), 1).otherwise(0)).alias("clash"),
                F.max(F.when(F.col("__t_current") & (F.col(SEQ) < F.col("__t_start")), 1).otherwise(0)).alias("late"),
                F.max(F.when(F.col("__t_current"), F.col("__t_start"))).alias("current_start"),
            )
        )
        problems = (
            flags.where("clash = 1 OR (late = 1 AND applied = 0)")
            .select(
                SOURCE_FILE_COLUMN,
                F.when(F.col("clash") == 1, F.lit("clash")).otherwise(F.lit("late")).alias("kind"),
                F.concat(_json(keys), F.lit(" at "), F.col(SEQ).cast("string"),
                         F.when(F.col("clash") == 1, F.lit(""))
                         .otherwise(F.concat(F.lit(" (current version from "),
                                             F.col("current_start").cast("string"), F.lit(")")))).alias("what"),
            )
            .groupBy(SOURCE_FILE_COLUMN, "kind")
            .agg(F.count(F.lit(1)).alias("n"), F.slice(F.collect_list("what"), 1, SAMPLE).alias("sample"))
            .collect()
        )
        for row in problems:
            if row["kind"] == "clash":
                message = (f"ambiguous: {row['n']} rows start at the same sequence value as an existing version "
                           f"of their key but with different tracked values, e.g. {', '.join(row['sample'])}")
            else:
                message = (f"late-arriving change: {row['n']} rows are older than their key's current version "
                           f"and are refused, e.g. {', '.join(row['sample'])}")
            _add_error(errors, row[SOURCE_FILE_COLUMN], message)
        applied = versions.select(*keys, F.col("__t_start").alias(SEQ), F.col("__t_tracked").alias(TRACKED))
        rows = rows.join(applied, [*keys, SEQ, TRACKED], "left_anti")
    if errors:
        rows = rows.where(~F.col(SOURCE_FILE_COLUMN).isin(list(errors)))
    return Scd2Validation(errors=errors, rows=rows)


@dataclass(frozen=True)
class Scd2Changes:
    """New versions to insert and current versions to close, as DataFrames (nothing collected)."""

    inserts: DataFrame
    closes: DataFrame


def compute_changes(rows: DataFrame, table: TableSettings, target: DataFrame | None) -> Scd2Changes:
    """The versions a validated batch adds, and where the keys' current versions end. ``target`` as in
    ``validate_batch``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = table.primary_keys
    start, end, current = table.scd2_output_columns
    in_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN)
    # identical rows of one key and sequence (from several files) collapse to the first in load order
    first_per_seq = Window.partitionBy(*keys, SEQ).orderBy(FILE_TIME, SOURCE_FILE_COLUMN)
    rows = rows.withColumn("__n", F.row_number().over(first_per_seq)).where("__n = 1").drop("__n")
    if target is not None:
        currents = target.where(F.col(current)).select(*keys, _json(table.tracking_columns).alias("__cur"),
                                                       F.lit(True).alias("__has_current"))
        rows = rows.join(currents, keys, "left")
    else:
        rows = rows.withColumn("__cur", F.lit(None).cast("string")).withColumn("__has_current", F.lit(None))
    previous = F.coalesce(F.lag(TRACKED).over(in_order), F.col("__cur"))
    changed = rows.withColumn("__changed", previous.isNull() | (previous != F.col(TRACKED))).where("__changed")
    in_version_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN)
    versions = changed.withColumn("__next", F.lead(SEQ).over(in_version_order)).withColumn(
        "__first", F.row_number().over(in_version_order) == 1
    )
    columns = data_columns(rows.drop("__cur", "__has_current"))
    inserts = versions.select(
        *columns,
        F.col(SEQ).alias(start),
        F.col("__next").alias(end),
        F.col("__next").isNull().alias(current),
        SOURCE_FILE_COLUMN,
    )
    closes = versions.where(F.col("__first") & F.col("__has_current")).select(
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


def scd2_violations(spark: SparkSession, target_path: str, table: TableSettings) -> Scd2Violations:
    """Check: one current row per key; current flag <=> end is NULL; per key, versions follow one another
    without gaps or overlaps (each end equals the next start, each start before its end), and the last is the
    current one."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = table.primary_keys
    start, end, current = table.scd2_output_columns
    frame = spark.read.format("delta").load(target_path)
    result = Scd2Violations()

    def count_and_sample(bad: DataFrame, name: str) -> int:
        summary = bad.agg(F.count(F.lit(1)).alias("n"),
                          F.slice(F.collect_list(_json(keys)), 1, SAMPLE).alias("sample")).collect()[0]
        if summary["n"]:
            result.samples[name] = list(summary["sample"])
        return int(summary["n"])

    per_key = frame.groupBy(*keys).agg(F.sum(F.col(current).cast("int")).alias("currents"))
    result.keys_without_one_current = count_and_sample(per_key.where("currents != 1"), "keys_without_one_current")
    disagree = frame.where(
        (F.col(current) & F.col(end).isNotNull()) | (~F.col(current) & F.col(end).isNull()) | F.col(current).isNull()
    )
    result.flag_end_disagreements = count_and_sample(disagree, "flag_end_disagreements")
    ordered = Window.partitionBy(*keys).orderBy(start)
    chained = frame.withColumn("__next_start", F.lead(start).over(ordered))
    breaks = chained.where(
        (F.col("__next_start").isNotNull() & ((F.col(end).isNull()) | (F.col(end) != F.col("__next_start"))))
        | (F.col("__next_start").isNull() & F.col(end).isNotNull())
        | (F.col(end).isNotNull() & (F.col(end) <= F.col(start)))
    )
    result.interval_breaks = count_and_sample(breaks, "interval_breaks")
    return result

