"""The change record of an scd2 or scd1 table: every change row ever applied, as a Delta table written by Spark.

Layout: ``<target_root>/_changes/<table_name>``: the source columns of each applied change row, its sequence
(``_change_sequence``), its file's modification time (``_change_file_time``), what it is (``_change_op``: upsert,
delete, or the marker of a full extract: one row per extract file, keys NULL, at the extract's sequence),
``_source_file``, and the batch that recorded it (``_batch_id``, ``_change_batch_seq``, ``_load_timestamp``). One
change row per (key, sequence): a row repeating one already recorded is recognised and not recorded again, and
one with another op or other values at the same key and sequence is refused.

Why it exists: the table is a function of the set of change rows (docs/CONTRACT.md, "SCD2 and SCD1"): a late row
re-threads the history around the rows applied before it, a delete that arrives early waits as a tombstone, a
full extract deletes the keys absent from it wherever it falls in sequence order, and rows that repeated a key's
current values, which leave no trace in the table, still decide where a later version starts. The record is
also how a replay (a reload after ``reset-state``, the same content under a new name) is recognised, and what
``history_matches_changes`` checks the table against.

Exactly once, across two tables. A batch writes the record first (an append carrying ``txnAppId =
loader_assets/<table>/changes``, ``txnVersion = batch_seq``), then its one commit on the target (carrying the
batch's txn). Only rows of batches the target committed count: every read filters ``_change_batch_seq <=`` the target's
txn version, so rows of a batch that never reached the target are invisible (``committed``).

Crash window between the two commits: the record holds rows of batch S, the target never got S. Those rows are
invisible by the filter above, and the next holder of the lock deletes them before anything else
(``drop_uncommitted``: rows with ``_change_batch_seq`` above the target's txn version, done only when the record's own
txn version says there can be any); a batch whose target write fails in the same run is cleaned the same way
before its files are split or retried. Batch numbers take the record's txn version into account too
(``load.next_batch_sequence``), so a record write is never skipped by Delta for a number used before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from loader_assets.cdc import EXTRACT, RECORD_BATCH_SEQ, RECORD_FILE_TIME, RECORD_OP, RECORD_SEQUENCE, UPSERT
from loader_assets.reading import BATCH_ID_COLUMN, LOAD_TIMESTAMP_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.scd2 import version_columns
from loader_assets.target import app_id, open_target, sql_table, target_exists, target_txn_version, txn_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from loader_assets.settings import TableSettings

logger = logging.getLogger(__name__)

CHANGES_DIR = "_changes"


def changes_location(target_root: str, table_name: str) -> str:
    """``<target_root>/_changes/<table_name>``: the change record of an SCD2 table."""
    return f"{target_root.rstrip('/')}/{CHANGES_DIR}/{table_name}"


class ChangeRecord:
    """The change record of one SCD2 table (see the module docstring). Reads and writes go through Spark."""

    def __init__(self, path: str, target_path: str, table_name: str) -> None:
        self.path = path
        self.target_path = target_path
        self.table_name = table_name
        self.app_id = f"{app_id(table_name)}/changes"

    def exists(self) -> bool:
        return target_exists(self.path)

    def txn_version(self) -> int:
        """The highest batch_seq whose rows the record took (whether or not the target then committed it)."""
        return txn_version(self.path, self.app_id)

    def committed(self, spark: SparkSession, up_to: int | None = None) -> DataFrame:
        """The rows that count: those of batches up to ``up_to`` (default: the target's txn version), read at the
        record's current version. Pinned because a batch caches what it reads of the record and then appends
        to it: Spark does not use a cached frame of an unpinned Delta read once the table has a newer version,
        and would compute it again from the files (measured: the MERGE of a 500,000-row batch recomputed the
        batch's validation, reading the record twice more)."""
        from pyspark.sql import functions as F

        limit = target_txn_version(self.target_path, self.table_name) if up_to is None else up_to
        reader = spark.read.format("delta")
        table = open_target(self.path)
        if table is not None:
            reader = reader.option("versionAsOf", table.version())
        return reader.load(self.path).where(F.col(RECORD_BATCH_SEQ) <= F.lit(limit))

    def drop_uncommitted(self, spark_provider: Callable[[], SparkSession], target_txn: int,
                         uncommitted: Iterable[int] = ()) -> bool:
        """Delete rows of batches the target did not commit: those above ``target_txn``, and the ``uncommitted``
        batch numbers at or below it (recovery found no commit of them: superseded, or fenced over Spark
        Connect, see ``recovery``). Needs Spark only if the record's txn version says there are any. Call under
        the table's lock. True if it deleted."""
        if not self.exists():
            return False
        taken = self.txn_version()
        below = sorted({int(seq) for seq in uncommitted if int(seq) <= min(target_txn, taken)})
        if taken <= target_txn and not below:
            return False
        where = f"{RECORD_BATCH_SEQ} > {int(target_txn)}"
        if below:
            where += f" OR {RECORD_BATCH_SEQ} IN ({', '.join(map(str, below))})"
        spark = spark_provider()
        spark.sql(f"DELETE FROM {sql_table(self.path)} WHERE {where}")
        logger.warning("table %s: removed change rows of batches that never reached the table (%s)",
                       self.table_name, where)
        return True

    def append(self, rows: DataFrame, batch_id: str, batch_seq: int, evolve_schema: bool) -> None:
        """Record a batch's change rows (``scd2.change_rows``) as one commit carrying the record's txn."""
        from pyspark.sql import functions as F

        (
            rows.withColumn(BATCH_ID_COLUMN, F.lit(batch_id))
            .withColumn(RECORD_BATCH_SEQ, F.lit(batch_seq).cast("long"))
            .withColumn(LOAD_TIMESTAMP_COLUMN, F.current_timestamp())
            .write.format("delta").mode("append")
            .option("mergeSchema", str(evolve_schema).lower())
            .option("txnAppId", self.app_id)
            .option("txnVersion", str(batch_seq))
            # names the batch as the target's commit does, so a check can tell the loader's commits from others
            .option("userMetadata", json.dumps({"batch_id": batch_id, "batch_seq": batch_seq,
                                                "table": self.table_name}, sort_keys=True))
            .save(self.path)
        )

    @staticmethod
    def change_rows(frame: DataFrame) -> DataFrame:
        """The record's change rows, without the markers of full extracts."""
        from pyspark.sql import functions as F

        if RECORD_OP not in frame.columns:
            return frame
        return frame.where(F.coalesce(F.col(RECORD_OP), F.lit(UPSERT)) != F.lit(EXTRACT))

    def rows_per_file(self, spark: SparkSession, paths: list[str], up_to: int) -> dict[str, int]:
        """Change rows each file contributed to the record (every batch up to ``up_to``)."""
        from pyspark.sql import functions as F

        if not paths or not self.exists():
            return {}
        counts = (self.change_rows(self.committed(spark, up_to)).where(F.col(SOURCE_FILE_COLUMN).isin(paths))
                  .groupBy(SOURCE_FILE_COLUMN).count().collect())
        return {row[SOURCE_FILE_COLUMN]: int(row["count"]) for row in counts}

    def bootstrap(self, spark: SparkSession, table: TableSettings) -> int:
        """Create the record of a table loaded before the record existed, from its history: each version is a
        change row (at its start, with its values and ``_source_file``), marked batch 0 so it always counts.
        Rows that repeated a key's values then were never kept anywhere, so they cannot be recovered: a reload
        of such a row is applied again (as a repeat it changes no version). Returns the rows recorded."""
        from pyspark.sql import functions as F

        start = table.scd2_effective_date_column
        history = spark.read.format("delta").load(self.target_path)
        data = [c for c in history.columns if c not in (*version_columns(table), BATCH_ID_COLUMN,
                                                          LOAD_TIMESTAMP_COLUMN)]
        rows = history.select(
            *data, F.col(start).alias(RECORD_SEQUENCE), F.lit(None).cast("timestamp").alias(RECORD_FILE_TIME),
            BATCH_ID_COLUMN, F.lit(0).cast("long").alias(RECORD_BATCH_SEQ), LOAD_TIMESTAMP_COLUMN,
            F.lit(UPSERT).alias(RECORD_OP),
        )
        rows.write.format("delta").mode("errorifexists").save(self.path)
        count = int(spark.read.format("delta").load(self.path).count())
        logger.warning("table %s: change record created from the table's history (%d versions)", self.table_name,
                       count)
        return count

