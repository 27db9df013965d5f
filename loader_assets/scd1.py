"""SCD1 in Spark: the latest row per key that a set of change rows defines, and the one MERGE that applies it.

The definition (docs/CONTRACT.md, "SCD2 and SCD1"): for a key, its latest event in sequence order (then file
time, then path) decides: an upsert is the key's row, with its values and ``_source_file``; a delete means the
key has no row. An older change that arrives after a newer one is *stale*: it is recorded (so a later, even older
delete or a replay is judged right) and changes nothing; runs count such rows. Deletes that arrive before the rows
they delete are kept in the record as tombstones, so a stale upsert never revives a deleted key.

A batch with no stale row (every new event is newer than its key's recorded ones) decides each of its keys by its
own newest event: ``in_order_rows`` takes it, and ``merge_in_order`` applies it as an upsert MERGE on the key that
updates a row only where its values or ``_source_file`` differ, as ``row_diff`` would, without computing the keys'
rows before and after from the record. It compares with the table's row instead of the record's: the two agree
while ``rows_match_changes`` holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from loader_assets.cdc import FILE_TIME, OP, SEQ, UPSERT, VALUES, key_json, struct_of
from loader_assets.reading import AUDIT_COLUMNS, SOURCE_FILE_COLUMN
from loader_assets.scd2 import (
    ACTION,
    MERGE_KEY_PREFIX,
    REMOVE,
    UPSERT_ROW,
    HistoryDifference,
    diff,
    difference,
    merge_diff,
    quoted,
    with_table_columns,
)
from loader_assets.settings import TableSettings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


def latest_from_events(events: DataFrame, table: TableSettings) -> DataFrame:
    """The rows ``events`` define: per key, the latest event if it is an upsert. Columns: keys, ``VALUES``,
    ``_source_file``."""
    from pyspark.sql import functions as F

    return (newest_events(events, table).where(F.col(OP) == F.lit(UPSERT))
            .select(*table.primary_keys, VALUES, SOURCE_FILE_COLUMN))


def newest_events(events: DataFrame, table: TableSettings) -> DataFrame:
    """Each key's newest event in sequence order (then file time, then path)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest_first = Window.partitionBy(*table.primary_keys).orderBy(
        F.col(SEQ).desc(), F.col(FILE_TIME).desc(), F.col(SOURCE_FILE_COLUMN).desc(), F.col(OP).desc())
    return events.withColumn("__rank", F.row_number().over(newest_first)).where(F.col("__rank") == 1)


def row_diff(old: DataFrame, new: DataFrame, table: TableSettings) -> DataFrame:
    """What turns rows ``old`` into ``new`` (both from ``latest_from_events``, same keys): ``diff`` on the key,
    comparing values and ``_source_file``."""
    return diff(old, new, table.primary_keys, [VALUES, SOURCE_FILE_COLUMN])


def merge_rows(spark: SparkSession, target_path: str, rows: DataFrame, table: TableSettings,
               insert_columns: Sequence[str], audit: Mapping[str, Column]) -> None:
    """Apply a ``row_diff``: matched on the key, update (values, source file and audit columns: the row is the
    batch's now) or delete; not matched, insert."""
    values = rows.schema[VALUES].dataType.names
    merge_diff(spark, target_path, with_table_columns(rows, audit), table.primary_keys,
               [*values, SOURCE_FILE_COLUMN, *audit], insert_columns)


def in_order_rows(events: DataFrame, table: TableSettings) -> DataFrame:
    """``row_diff`` for a batch whose new events (``cdc.in_order_events``) are all newer than their key's recorded
    ones (the module docstring): per key, the batch's newest event: an ``UPSERT_ROW`` with its values and
    ``_source_file``, or a delete (``REMOVE``), matched on the key. The newest is the key's last event in
    (sequence, file time, path) order, unique among a batch's new events (rows equal there are one file's rows at
    one sequence: identical ones are not new, others fail the file), and the order ``cdc.annotate`` leaves the
    rows in, so the window needs neither a shuffle nor a sort."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = list(table.primary_keys)
    in_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN)
    return (events.withColumn("__last", F.lead(SEQ).over(in_order).isNull()).where("__last")
            .select(*[F.col(k).alias(MERGE_KEY_PREFIX + k) for k in keys],
                    F.when(F.col(OP) == F.lit(UPSERT), F.lit(UPSERT_ROW)).otherwise(F.lit(REMOVE)).alias(ACTION),
                    *keys, VALUES, SOURCE_FILE_COLUMN))


def merge_in_order(spark: SparkSession, target_path: str, rows: DataFrame, table: TableSettings,
                   insert_columns: Sequence[str], audit: Mapping[str, Column], target_columns: Sequence[str]
                   ) -> None:
    """Apply ``in_order_rows``: a delete removes the key's row; an upsert inserts it, or updates it (values,
    source file, audit columns) where a value or ``_source_file`` differs, null-safely, as ``row_diff`` compares.
    A value column the table does not have yet (schema evolution) counts as NULL in the table's row."""
    values = rows.schema[VALUES].dataType.names
    same = [f"t.{quoted(c)} <=> s.{quoted(c)}" if c in target_columns else f"s.{quoted(c)} IS NULL"
            for c in [*values, SOURCE_FILE_COLUMN]]
    merge_diff(spark, target_path, with_table_columns(rows, audit), table.primary_keys,
               [*values, SOURCE_FILE_COLUMN, *audit], insert_columns,
               update_condition="NOT (" + " AND ".join(same) + ")")


def rows_frame(latest: DataFrame, audit: Mapping[str, Column]) -> DataFrame:
    """Latest rows as table rows (a new table's first commit): source columns and audit columns."""
    from pyspark.sql import functions as F

    values = latest.schema[VALUES].dataType.names
    return latest.select(*[F.col(f"{VALUES}.{c}").alias(c) for c in values], SOURCE_FILE_COLUMN,
                         *[value.alias(name) for name, value in audit.items()])


def table_rows(target: DataFrame, table: TableSettings) -> DataFrame:
    """An scd1 table's rows in ``latest_from_events``'s shape."""
    columns = [c for c in target.columns if c not in AUDIT_COLUMNS]
    return target.select(*table.primary_keys, struct_of(columns).alias(VALUES), SOURCE_FILE_COLUMN)


def compare_rows(target: DataFrame, events: DataFrame, table: TableSettings) -> HistoryDifference:
    """The table's rows against ``latest_from_events`` of the record's events (already scoped): keys, values and
    ``_source_file``; a key in the table twice counts as unexpected."""
    label = key_json(table.primary_keys)
    return difference(latest_from_events(events, table), table_rows(target, table), list(table.primary_keys),
                      [VALUES, SOURCE_FILE_COLUMN], label)
