"""SCD2 in Spark: the history a set of change rows defines, and the one MERGE that moves a table to it.

The definition (docs/CONTRACT.md, "SCD2 and SCD1"): for a key, take its events (upserts and deletes, from the change
record, plus the deletes full extracts imply) in sequence order (then file time, then path). An upsert starts a
version when the key is not live or its tracked values differ from the key's last upsert; a delete of a live key
ends its current version there (with ``hard_deletes: new_record``, it starts a *deletion version* instead,
flagged by ``scd2_deleted_flag_column`` and carrying the values of the version it ends). A version carries the
values and ``_source_file`` of the event that starts it and ends where the key's next version starts or a delete
ends it (NULL, and current, for the last one of a live key). Late rows, re-ordered files, replays and batching
change nothing: the history is a function of the set of events (``history_from_events``).

A batch is applied as the difference between the history its keys had and the history they have with its new
events (``version_diff``): versions to insert, versions whose end, flag or values change, versions that no longer
exist (a late row that moves a version's start earlier); one MERGE on (key, start) does all three
(``merge_versions``).

A batch with no late row (every new event is newer than its key's newest recorded one; validation counts them) can
only close each key's current version and append versions after it. Then the same difference is computed from the
batch's new events and each key's newest recorded change alone (``in_order_versions``), without the windows over
the keys' recorded events, and applied by the classic close-and-insert MERGE (``merge_in_order``: matched on the
key and the current flag). Equal to ``version_diff`` on such a batch by construction (the steps below say why) and
by test: the CDC property tests take both paths against the same model. It reads the table's current row instead
of the record's history of the key: the two agree while ``history_matches_changes`` holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader_assets.cdc import (
    DELETE,
    FILE_TIME,
    LAST_OP,
    LAST_TRACKED,
    OP,
    SAMPLE,
    SEQ,
    TRACKED,
    UPSERT,
    VALUES,
    key_json,
    struct_of,
)
from loader_assets.reading import AUDIT_COLUMNS, BATCH_ID_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.settings import ExtractMode, HardDeletes, TableSettings
from loader_assets.target import sql_table

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Row, SparkSession

ACTION = "__action"
MERGE_KEY_PREFIX = "__mk_"
INSERT, UPDATE, REMOVE = "insert", "update", "delete"
UPSERT_ROW = "upsert"  # an action of ``merge_diff``: update the row if the MERGE finds it, insert it if not


def deletes_possible(table: TableSettings) -> bool:
    """Whether a key of this table can stop being live (its history then has no current row, or a gap)."""
    return bool(table.delete_condition) or (
        table.extract_mode is ExtractMode.FULL and table.hard_deletes is not HardDeletes.IGNORE)


def version_columns(table: TableSettings) -> tuple[str, ...]:
    """The columns the loader adds to an scd2 table's source columns: start, end, current (and deleted)."""
    return (*table.scd2_output_columns, *((table.scd2_deleted_flag_column,) if table.flags_deletions else ()))


def history_from_events(events: DataFrame, table: TableSettings) -> DataFrame:
    """The versions ``events`` define (see the module docstring). Columns: keys, start, end, current, deleted (a
    boolean, true only for deletion versions), ``VALUES``, ``_source_file``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = list(table.primary_keys)
    start, end, current = table.scd2_output_columns
    in_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN, OP)
    before = in_order.rowsBetween(Window.unboundedPreceding, -1)
    previous_op = F.lag(OP).over(in_order)
    starts = (F.col(OP) == F.lit(UPSERT)) & (
        previous_op.isNull() | (previous_op != F.lit(UPSERT)) | (F.lag(TRACKED).over(in_order) != F.col(TRACKED)))
    ends = (F.col(OP) == F.lit(DELETE)) & F.coalesce(previous_op == F.lit(UPSERT), F.lit(False))
    marked = events.select(
        *keys, SEQ, FILE_TIME, OP, SOURCE_FILE_COLUMN, VALUES,
        starts.alias("__starts"), ends.alias("__ends"),
        F.last(F.when(starts, F.col(VALUES)), ignorenulls=True).over(before).alias("__carried"),
    ).where("__starts OR __ends")
    by_start = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN, OP)
    deletion = F.col("__ends")
    versions = marked.select(
        *keys, F.col(SEQ).alias(start), F.lead(SEQ).over(by_start).alias(end),
        F.lead(SEQ).over(by_start).isNull().alias(current), deletion.alias("__deleted"),
        F.when(deletion, F.col("__carried")).otherwise(F.col(VALUES)).alias(VALUES), SOURCE_FILE_COLUMN,
    )
    if not table.flags_deletions:  # a delete only ends the version before it
        versions = versions.where(~F.col("__deleted"))
    return versions


def diff(old: DataFrame, new: DataFrame, match: Sequence[str], compared: Sequence[str]) -> DataFrame:
    """What turns rows ``old`` into ``new`` (the same columns; unique on ``match``): one full outer join on
    ``match``, one row per row to insert (new only), update (both, any of ``compared`` differs, null-safely) or
    delete (old only), with ``ACTION``, the merge keys (``__mk_<column>`` of ``match``: NULL for an insert, so the
    MERGE finds no row for it) and ``new``'s columns."""
    from pyspark.sql import functions as F

    joined = old.select(*match, *[F.col(c).alias(f"__old_{c}") for c in compared], F.lit(True).alias("__in_old")
                        ).join(new.withColumn("__in_new", F.lit(True)), list(match), "full_outer")
    same = F.lit(True)
    for column in compared:
        same = same & F.col(f"__old_{column}").eqNullSafe(F.col(column))
    action = (F.when(F.col("__in_old").isNull(), F.lit(INSERT)).when(F.col("__in_new").isNull(), F.lit(REMOVE))
              .when(~same, F.lit(UPDATE)))
    replaced = F.col("__in_old").isNotNull()
    return joined.select(*[F.when(replaced, F.col(c)).alias(MERGE_KEY_PREFIX + c) for c in match],
                         action.alias(ACTION), *match, *compared).where(F.col(ACTION).isNotNull())


def quoted(column: str) -> str:
    """A column name as a Spark SQL identifier."""
    return "`" + column.replace("`", "``") + "`"


def merge_diff(spark: SparkSession, target_path: str, source: DataFrame, match: Sequence[str],
               changed: Sequence[str], insert_columns: Sequence[str], *, target_condition: str = "",
               update_condition: str = "") -> None:
    """One MERGE (one commit) applying a ``diff`` whose values are columns of ``source``: matched on ``match``
    (and ``target_condition`` over the target row ``t``), update ``changed`` (where ``update_condition`` holds)
    or delete; not matched, insert ``insert_columns``. An ``UPSERT_ROW`` row is an update if matched and an
    insert if not. Run as SQL over a temporary view of ``source``, so the same statement works locally and over
    Spark Connect (``target.sql_table``)."""
    import uuid

    view = f"__loader_assets_merge_{uuid.uuid4().hex}"
    condition = " AND ".join([*(f"t.{quoted(c)} = s.{quoted(MERGE_KEY_PREFIX + c)}" for c in match),
                              *([target_condition] if target_condition else [])])
    # unqualified on the left: Delta resolves `t.<column>` only for columns the table has, and a column a batch
    # adds (schema_evolution: add_new_columns) fails the MERGE as an unresolved expression
    updates = ", ".join(f"{quoted(c)} = s.{quoted(c)}" for c in changed)
    columns = ", ".join(quoted(c) for c in insert_columns)
    values = ", ".join(f"s.{quoted(c)}" for c in insert_columns)
    also = f" AND ({update_condition})" if update_condition else ""
    source.createOrReplaceTempView(view)
    try:
        spark.sql(
            f"MERGE INTO {sql_table(target_path)} t USING {view} s ON {condition} "
            f"WHEN MATCHED AND s.`{ACTION}` IN ('{UPDATE}', '{UPSERT_ROW}'){also} THEN UPDATE SET {updates} "
            f"WHEN MATCHED AND s.`{ACTION}` = '{REMOVE}' THEN DELETE "
            f"WHEN NOT MATCHED AND s.`{ACTION}` IN ('{INSERT}', '{UPSERT_ROW}') "
            f"THEN INSERT ({columns}) VALUES ({values})"
        )
    finally:
        spark.catalog.dropTempView(view)


def version_diff(old: DataFrame, new: DataFrame, table: TableSettings) -> DataFrame:
    """What turns history ``old`` into ``new`` (both from ``history_from_events``, same keys): ``diff`` on (key,
    start), comparing end, flag, deleted flag, values and ``_source_file``."""
    start, end, current = table.scd2_output_columns
    return diff(old, new, [*table.primary_keys, start], [end, current, "__deleted", VALUES, SOURCE_FILE_COLUMN])


def with_table_columns(diff_rows: DataFrame, audit: Mapping[str, Column]) -> DataFrame:
    """A version or row diff with the table's columns beside it: each field of ``VALUES`` as a column, and the
    audit columns."""
    from pyspark.sql import functions as F

    values = diff_rows.schema[VALUES].dataType.names
    return diff_rows.select("*", *[F.col(f"{VALUES}.{c}").alias(c) for c in values if c not in diff_rows.columns],
                            *[value.alias(name) for name, value in audit.items()])


def _version_rows(versions: DataFrame, table: TableSettings, audit: Mapping[str, Column]) -> DataFrame:
    """A version diff with the table's columns (``with_table_columns``, and the deleted flag)."""
    from pyspark.sql import functions as F

    source = with_table_columns(versions, audit)
    if table.flags_deletions:
        source = source.withColumn(table.scd2_deleted_flag_column, F.col("__deleted"))
    return source


def merge_versions(spark: SparkSession, target_path: str, versions: DataFrame, table: TableSettings,
                   insert_columns: Sequence[str], audit: Mapping[str, Column]) -> None:
    """Apply a ``version_diff``: matched on (key, start), update or delete; not matched, insert. Inserted versions
    get the audit columns; an updated version keeps the batch that inserted it. The caller sets and clears the
    txn session confs around it."""
    start, end, current = table.scd2_output_columns
    values = versions.schema[VALUES].dataType.names
    deleted = (table.scd2_deleted_flag_column,) if table.flags_deletions else ()
    merge_diff(spark, target_path, _version_rows(versions, table, audit), [*table.primary_keys, start],
               [end, current, *values, SOURCE_FILE_COLUMN, *deleted], insert_columns)


def in_order_versions(events: DataFrame, table: TableSettings) -> DataFrame:
    """``version_diff`` for a batch whose new events (``cdc.in_order_events``) are all newer than their key's
    recorded ones, without ``hard_deletes: new_record`` (the module docstring). Per key, the history after the
    batch is the history before it, whose last version is closed where the batch's first version starts or its
    first delete ends it, followed by the versions the batch's events start. Which events start or end a version
    is decided as ``history_from_events`` decides it, by the previous event: the previous new event, or for a
    key's first new event its newest recorded one (``LAST_OP``, ``LAST_TRACKED``), the event before it in the
    key's whole sequence. Rows: an ``INSERT`` per new version (end, flag and values as ``history_from_events``
    gives them) and an ``UPDATE`` per key that was live before (``LAST_OP`` is an upsert) and changes: its merge
    key, end = where the batch's first version starts (or its delete), current false. The caller applies them with
    ``merge_in_order``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = list(table.primary_keys)
    start, end, current = table.scd2_output_columns
    # a batch's new events of a key are unique in this order (see ``scd1.in_order_rows``), the order
    # ``cdc.annotate`` leaves them in: no shuffle, no sort
    in_order = Window.partitionBy(*keys).orderBy(SEQ, FILE_TIME, SOURCE_FILE_COLUMN)
    first = F.lag(SEQ).over(in_order).isNull()  # sequences are never null here (validation fails such rows)
    previous_op = F.when(first, F.col(LAST_OP)).otherwise(F.lag(OP).over(in_order))
    previous_tracked = F.when(first, F.col(LAST_TRACKED)).otherwise(F.lag(TRACKED).over(in_order))
    starts = (F.col(OP) == F.lit(UPSERT)) & (
        previous_op.isNull() | (previous_op != F.lit(UPSERT)) | (previous_tracked != F.col(TRACKED)))
    ends = (F.col(OP) == F.lit(DELETE)) & F.coalesce(previous_op == F.lit(UPSERT), F.lit(False))
    marked = events.select(*keys, SEQ, FILE_TIME, OP, SOURCE_FILE_COLUMN, VALUES, LAST_OP,
                           starts.alias("__starts"), ends.alias("__ends")).where("__starts OR __ends")
    versions = marked.select(
        *keys, SEQ, F.lead(SEQ).over(in_order).alias(end), F.lead(SEQ).over(in_order).isNull().alias(current),
        VALUES, SOURCE_FILE_COLUMN, F.col("__ends"),
        (F.lag(SEQ).over(in_order).isNull() & F.coalesce(F.col(LAST_OP) == F.lit(UPSERT), F.lit(False)))
        .alias("__closes"),
    )
    actions = F.array_compact(F.array(F.when(~F.col("__ends"), F.lit(INSERT)),
                                      F.when(F.col("__closes"), F.lit(UPDATE))))
    closing = F.col(ACTION) == F.lit(UPDATE)
    return versions.select("*", F.explode(actions).alias(ACTION)).select(
        *[F.when(closing, F.col(k)).alias(MERGE_KEY_PREFIX + k) for k in keys], ACTION, *keys,
        F.col(SEQ).alias(start), F.when(closing, F.col(SEQ)).otherwise(F.col(end)).alias(end),
        F.when(closing, F.lit(False)).otherwise(F.col(current)).alias(current), F.lit(False).alias("__deleted"),
        VALUES, SOURCE_FILE_COLUMN,
    )


def merge_in_order(spark: SparkSession, target_path: str, versions: DataFrame, table: TableSettings,
                   insert_columns: Sequence[str], audit: Mapping[str, Column]) -> None:
    """Apply ``in_order_versions``: close the key's current version (matched on the key and the current flag: one
    row per live key, ``scd2_invariants``), insert the new ones with the audit columns. The caller sets and clears
    the txn session confs around it."""
    start, end, current = table.scd2_output_columns
    merge_diff(spark, target_path, _version_rows(versions, table, audit), table.primary_keys, [end, current],
               insert_columns, target_condition=f"t.{quoted(current)} = true")


def versions_frame(history: DataFrame, table: TableSettings, audit: Mapping[str, Column]) -> DataFrame:
    """A history as table rows (a new table's first commit): source columns, version columns, audit columns."""
    from pyspark.sql import functions as F

    start, end, current = table.scd2_output_columns
    values = history.schema[VALUES].dataType.names
    deleted = [F.col("__deleted").alias(table.scd2_deleted_flag_column)] if table.flags_deletions else []
    return history.select(*[F.col(f"{VALUES}.{c}").alias(c) for c in values], start, end, current, *deleted,
                          SOURCE_FILE_COLUMN, *[value.alias(name) for name, value in audit.items()])


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


SCOPED_CHECK_MAX_KEYS = 50_000


def scd2_violations(
    spark: SparkSession, target_path: str, table: TableSettings, batch_ids: Sequence[str] | None = None
) -> Scd2Violations:
    """The invariants (``violations_of``) of the whole table, or, with ``batch_ids``, of the keys those batches
    wrote (their whole history) when they are at most ``SCOPED_CHECK_MAX_KEYS``."""
    from pyspark.sql import functions as F

    keys = table.primary_keys
    frame = spark.read.format("delta").load(target_path)
    if batch_ids is not None:
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


def violation_flags(frame: DataFrame, table: TableSettings) -> dict[str, Column]:
    """The invariants as one flag per row and kind (see ``violations_of``), over one window per key."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = table.primary_keys
    start, end, current = table.scd2_output_columns
    gaps_allowed = deletes_possible(table)
    by_key = Window.partitionBy(*keys)
    ordered = by_key.orderBy(start)
    currents = F.sum(F.coalesce(F.col(current).cast("int"), F.lit(0))).over(by_key)
    following = F.lead(start).over(ordered)
    joined = F.col(end) == following if not gaps_allowed else F.col(end) <= following
    flags = {
        "keys_without_one_current": ((currents > 1) | ((currents == 0) & F.lit(not gaps_allowed)))
        & (F.row_number().over(ordered) == 1),
        "flag_end_disagreements": (F.col(current) & F.col(end).isNotNull()) | (~F.col(current) & F.col(end).isNull())
        | F.col(current).isNull(),
        "interval_breaks": (following.isNotNull() & (F.col(end).isNull() | ~joined))
        | (following.isNull() & F.col(end).isNotNull() & F.lit(not gaps_allowed))  # closed, never superseded
        | (F.col(end).isNotNull() & (F.col(end) <= F.col(start))),
    }
    return {name: F.coalesce(flag, F.lit(False)) for name, flag in flags.items()}


VIOLATION_KINDS = ("keys_without_one_current", "flag_end_disagreements", "interval_breaks")


def violation_sums(table: TableSettings) -> list[Column]:
    """The aggregation of ``violation_flags`` columns: a count of each kind and a few keys (a key as text only
    for the flagged rows, not to_json of every row)."""
    from pyspark.sql import functions as F

    keys = table.primary_keys
    return [*[F.sum(F.col(name).cast("long")).alias(name) for name in VIOLATION_KINDS],
            *[F.slice(F.collect_list(F.when(F.col(name), key_json(keys))), 1, SAMPLE).alias(f"sample_{name}")
              for name in VIOLATION_KINDS]]


def violations_read(summary: Row) -> Scd2Violations:
    """``Scd2Violations`` from a row holding ``violation_sums``."""
    result = Scd2Violations()
    for name in VIOLATION_KINDS:
        setattr(result, name, int(summary[name] or 0))
        if summary[name]:
            result.samples[name] = list(summary[f"sample_{name}"])
    return result


def violations_of(frame: DataFrame, table: TableSettings) -> Scd2Violations:
    """The invariants in one pass (one window over each key, one aggregation): at most one current row per key,
    exactly one unless the table can delete keys; the current flag is set exactly when the end is NULL; each
    version starts before it ends; a key's versions never overlap, and follow one another without gaps unless
    the table can delete keys (a gap is a deleted span); only a key's last version can be current."""
    flags = violation_flags(frame, table)
    flagged = frame.select(*table.primary_keys, *[flag.alias(name) for name, flag in flags.items()])
    return violations_read(flagged.agg(*violation_sums(table)).collect()[0])


@dataclass
class HistoryDifference:
    """Versions (scd2) or rows (scd1) the change record implies but the table lacks (``missing``) or has without
    the record implying them (``unexpected``), counted, with a few keys of each."""

    missing: int = 0
    unexpected: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)
    compared: str = "row by row"  # or "by hash sums" (``same_rows``: equal, so no row-by-row diff was needed)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected)


def table_history(target: DataFrame, table: TableSettings) -> DataFrame:
    """An scd2 table's rows in ``history_from_events``'s shape."""
    from pyspark.sql import functions as F

    start, end, current = table.scd2_output_columns
    columns = [c for c in target.columns if c not in AUDIT_COLUMNS and c not in version_columns(table)]
    deleted = F.col(table.scd2_deleted_flag_column) if table.flags_deletions else F.lit(False)
    return target.select(*table.primary_keys, start, end, current, F.coalesce(deleted, F.lit(False)).alias(
        "__deleted"), struct_of(columns).alias(VALUES), SOURCE_FILE_COLUMN)


def hashable(expected: DataFrame, actual: DataFrame, columns: Sequence[str]) -> bool:
    """Whether ``row_sums`` can vouch for the two frames over ``columns``: no map column (Spark does not hash
    one), and the same types (nullability aside)."""
    from pyspark.sql.types import MapType

    def has_map(data_type: object) -> bool:
        return isinstance(data_type, MapType) or any(has_map(f.dataType) for f in getattr(data_type, "fields", ()))

    if any(has_map(frame.schema[c].dataType) for frame in (expected, actual) for c in columns):
        return False
    return ([expected.schema[c].dataType.simpleString() for c in columns]
            == [actual.schema[c].dataType.simpleString() for c in columns])


ROW_SUMS = ("rows", "h1", "h2")


def hash_inputs(frame: DataFrame, columns: Sequence[str]) -> list[Column]:
    """``columns`` of ``frame`` as inputs to ``xxhash64`` where a NULL cannot move. Spark's ``xxhash64`` skips a
    NULL (the running hash goes on unchanged), so (NULL, 'x') and ('x', NULL) hash alike, in two columns as in
    two fields of a struct or two elements of an array: a table whose value moved into a neighbouring NULL
    column would match its record. Here every value is followed by whether it is NULL, a struct is expanded into
    its fields and an array's elements are expanded the same way, so each NULL leaves a mark in its place."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, StructType

    def expand(column: Column, data_type: object) -> list[Column]:
        if isinstance(data_type, StructType):
            return [column.isNull(), *[part for f in data_type.fields
                                       for part in expand(column.getField(f.name), f.dataType)]]
        if isinstance(data_type, ArrayType):
            element = data_type.elementType
            return [column.isNull(), F.transform(column, lambda e: F.struct(*expand(e, element)))]
        return [column, column.isNull()]

    return [part for c in columns for part in expand(F.col(c), frame.schema[c].dataType)]


def row_sums(frame: DataFrame, columns: Sequence[str]) -> list[Column]:
    """A multiset of rows over ``columns`` as its row count and two sums of 64-bit row hashes (``xxhash64`` of
    ``hash_inputs``, unsalted and salted, summed as decimals so they never overflow): one aggregation, no
    shuffle."""
    from pyspark.sql import functions as F

    row = hash_inputs(frame, columns)
    return [F.count(F.lit(1)).alias("rows"),
            F.sum(F.xxhash64(*row).cast("decimal(20,0)")).alias("h1"),
            F.sum(F.xxhash64(F.lit("loader-assets"), *row).cast("decimal(20,0)")).alias("h2")]


def same_sums(expected: Row, actual: Row) -> bool:
    return all(expected[name] == actual[name] for name in ROW_SUMS)


def same_rows(expected: DataFrame, actual: DataFrame, columns: Sequence[str]) -> bool:
    """Whether ``expected`` and ``actual`` hold the same multiset of rows over ``columns`` (``row_sums`` of both
    sides, collected in one query). Equal sums of different multisets need a 2^-64 accident twice over; anything
    this cannot vouch for (``hashable``; rows that compare equal but hash differently, such as -0.0 and 0.0)
    answers False, and the caller compares row by row."""
    from pyspark.sql import functions as F

    if not hashable(expected, actual, columns):
        return False
    # both sides in one query (a union: one Spark job, where a job per side costs more than these small sums)
    sides = (expected.agg(F.lit(0).alias("side"), *row_sums(expected, columns))
             .unionByName(actual.agg(F.lit(1).alias("side"), *row_sums(actual, columns))).collect())
    both = {row["side"]: row for row in sides}
    return same_sums(both[0], both[1])


def difference(expected: DataFrame, actual: DataFrame, keys: Sequence[str], rest: Sequence[str],
               label: Column, sums_compared: bool = False) -> HistoryDifference:
    """Rows of ``expected`` and ``actual`` (matched on ``keys``) that differ in any of ``rest``: the ``diff`` that
    would turn ``actual`` into ``expected``, counted in one aggregation (a row to insert or update is missing, a
    row to delete or update is unexpected, and so is each extra copy of a row of ``actual`` whose ``keys`` are
    there more than once), with a few keys of each. When ``same_rows`` vouches that both hold
    the same rows (a check that passes, the usual case) the row-by-row diff, a full outer join of both sides, is
    not computed (benchmark P2); ``sums_compared``: the caller compared them already and they differed."""
    from pyspark.sql import functions as F

    if not sums_compared and same_rows(expected, actual, [*keys, *rest]):
        return HistoryDifference(compared="by hash sums")
    action = F.col(ACTION)
    missing, unexpected = action.isin(INSERT, UPDATE), action.isin(REMOVE, UPDATE)
    summary = diff(actual, expected, keys, rest).agg(
        F.sum(missing.cast("long")).alias("missing"), F.sum(unexpected.cast("long")).alias("unexpected"),
        F.slice(F.collect_list(F.when(missing, label)), 1, SAMPLE).alias("sample_missing"),
        F.slice(F.collect_list(F.when(unexpected, label)), 1, SAMPLE).alias("sample_unexpected"),
    ).collect()[0]
    # the join pairs an expected row with every copy of it, so a row in the table twice is counted apart
    copies = (actual.groupBy(*keys).agg(F.count(F.lit(1)).alias("__copies"), F.first(label).alias("__label"))
              .where(F.col("__copies") > 1)
              .agg(F.sum(F.col("__copies") - 1).alias("extra"),
                   F.slice(F.collect_list("__label"), 1, SAMPLE).alias("sample")).collect()[0])
    extra = int(copies["extra"] or 0)
    result = HistoryDifference(missing=int(summary["missing"] or 0),
                               unexpected=int(summary["unexpected"] or 0) + extra)
    for name in ("missing", "unexpected"):
        if summary[name]:
            result.samples[name] = list(summary[f"sample_{name}"])
    if extra:
        samples = result.samples.setdefault("unexpected", [])
        samples += [f"{key} (in the table more than once)" for key in copies["sample"]][:SAMPLE - len(samples)]
    return result


def history_report(target: DataFrame, events: DataFrame, table: TableSettings
                   ) -> tuple[Scd2Violations, HistoryDifference]:
    """The table's invariants (``violations_of``) and its versions against ``history_from_events`` of the
    record's events (already scoped), compared on every column that defines a version: keys, start, end, current
    flag, deleted flag, the source values and ``_source_file``.

    One pass over each side when the table is right (the usual case): the expected history's row sums and its
    invariants in one aggregation (the invariants' window reuses the history's partitioning and order, no second
    shuffle), the table's row sums beside it, one query. Equal sums mean the table holds the same multiset of
    versions, so its invariants are the history's, counted in that pass. Sums that differ (or cannot be taken,
    ``hashable``) fall back to the invariants of the table itself and the row-by-row ``difference``."""
    from pyspark.sql import functions as F

    start, end, current = table.scd2_output_columns
    keys = [*table.primary_keys, start]
    rest = [end, current, "__deleted", VALUES, SOURCE_FILE_COLUMN]
    label = F.concat(key_json(table.primary_keys), F.lit(" from "), F.col(start).cast("string"))
    expected, actual = history_from_events(events, table), table_history(target, table)
    columns = [*keys, *rest]
    sums_taken = hashable(expected, actual, columns)
    if sums_taken:
        flags = violation_flags(expected, table)
        flagged = expected.select(*columns, *[flag.alias(name) for name, flag in flags.items()])
        sides = (flagged.agg(F.lit(0).alias("side"), *row_sums(flagged, columns), *violation_sums(table))
                 .unionByName(actual.agg(F.lit(1).alias("side"), *row_sums(actual, columns)),
                              allowMissingColumns=True)
                 .collect())
        both = {row["side"]: row for row in sides}
        if same_sums(both[0], both[1]):
            return violations_read(both[0]), HistoryDifference(compared="by hash sums")
    return (violations_of(target, table),
            difference(expected, actual, keys, rest, label, sums_compared=sums_taken))
