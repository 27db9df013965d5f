"""SCD2: a batch becomes its change rows in the change record, then one Delta MERGE on the target.

The version logic lives in ``loader_assets.scd2``, the change record in ``loader_assets.changes``; this module
wires them to the protocol. Order per batch: (1) the change record takes the batch's new change rows (one commit
carrying the record's own txn); (2) the target takes one commit carrying the batch's txn: the MERGE that closes
current versions and inserts new ones, an append for a table's first batch, or an empty append when the batch
changes no version (its rows only repeat current values). The MERGE carries the txn through the session confs
``spark.databricks.delta.write.txnAppId`` / ``txnVersion`` (with ``txnVersion.autoReset.enabled``) and its
userMetadata through ``spark.databricks.delta.commitInfo.userMetadata``, set right before it and unset in
``finally``, because a left-over pair would silently skip the session's next write of any kind.

Crash window between (1) and (2): the record holds the batch's rows and the target does not. The rows do not
count (reads keep ``_change_batch_seq <=`` the target's txn version) and are deleted by the next holder's
``recover`` or, if the write failed in this run, by ``abandon`` before the files are retried.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from loader_assets.batch import ClaimedBatch, PreparedRows
from loader_assets.changes import ChangeRecord, changes_location
from loader_assets.core import faults
from loader_assets.reading import BATCH_ID_COLUMN, LOAD_TIMESTAMP_COLUMN
from loader_assets.scd2 import (
    change_rows,
    compute_changes,
    known_of_keys,
    merge_into,
    merge_source,
    validate_batch,
    with_sequence,
)
from loader_assets.settings import LoaderSettings, TableSettings
from loader_assets.target import open_target, target_txn_version
from loader_assets.writers.base import SparkProvider, TableWriter

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
TXN_AUTO_RESET_CONF = "spark.databricks.delta.write.txnVersion.autoReset.enabled"
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
SCHEMA_AUTO_MERGE_CONF = "spark.databricks.delta.schema.autoMerge.enabled"


@contextmanager
def delta_txn(
    spark: SparkSession, app_id: str, version: int, user_metadata: str, evolve_schema: bool = False
) -> Iterator[None]:
    """Make the session's next Delta write carry (app_id, version) and the metadata (and, with
    ``evolve_schema``, let the MERGE add new columns); clear them afterwards."""
    spark.conf.set(TXN_AUTO_RESET_CONF, "true")
    spark.conf.set(TXN_APP_ID_CONF, app_id)
    spark.conf.set(TXN_VERSION_CONF, str(version))
    spark.conf.set(USER_METADATA_CONF, user_metadata)
    keys = [TXN_APP_ID_CONF, TXN_VERSION_CONF, USER_METADATA_CONF]
    if evolve_schema:
        spark.conf.set(SCHEMA_AUTO_MERGE_CONF, "true")
        keys.append(SCHEMA_AUTO_MERGE_CONF)
    try:
        yield
    finally:
        for key in keys:
            spark.conf.unset(key)


class Scd2Writer(TableWriter):
    """Keeps full history per key (see ``loader_assets.scd2`` for the definition)."""

    def __init__(self, table: TableSettings, settings: LoaderSettings) -> None:
        super().__init__(table, settings)
        self.record = ChangeRecord(changes_location(settings.target_root, table.table_name), self.target_path,
                                   table.table_name)

    def txn_floor(self) -> int:
        return self.record.txn_version()

    def recover(self, spark: SparkProvider, target_txn: int) -> None:
        """Create the record of a table loaded before it existed (from the history); delete change rows of
        batches the target never committed."""
        if not self.record.exists() and open_target(self.target_path) is not None:
            self.record.bootstrap(spark(), self.table)
        self.record.drop_uncommitted(spark, target_txn)

    def prepare(self, batch: ClaimedBatch, frame: DataFrame) -> tuple[PreparedRows, dict[str, str]]:
        spark = frame.sparkSession
        prepared = PreparedRows(frame)
        # The batch's rows and what the record knows of the batch's keys are each read by several steps:
        # computed once and kept for the batch, instead of re-reading the files and the record each time.
        rows = prepared.keep(with_sequence(spark, frame, batch.table, batch.file_times))
        known = None
        if self.record.exists():
            committed = self.record.committed(spark, target_txn_version(self.target_path, self.table.table_name))
            known = prepared.keep(known_of_keys(committed, rows, batch.table))
        result = validate_batch(rows, batch.table, known, keep=prepared.keep)
        assert result.rows is not None
        prepared.rows = result.rows
        prepared.extras.update(new_rows=result.new_rows, changed_rows=result.changed_rows)
        return prepared, result.errors

    def write(self, batch: ClaimedBatch, prepared: PreparedRows, evolve_schema: bool) -> None:
        from pyspark.sql import functions as F

        spark = prepared.rows.sparkSession
        if prepared.extras.get("new_rows", 1):  # a pure replay records nothing new
            self.record.append(change_rows(prepared.rows), batch.batch_id, batch.batch_seq, evolve_schema)
        faults.crash_point(faults.AFTER_CHANGE_RECORD)
        changes = compute_changes(prepared.rows, batch.table)
        audit = {LOAD_TIMESTAMP_COLUMN: F.current_timestamp(), BATCH_ID_COLUMN: F.lit(batch.batch_id)}
        if open_target(batch.target_path) is None:  # a new table: nothing to close, the versions are one append
            inserts = changes.inserts
            for name, value in audit.items():
                inserts = inserts.withColumn(name, value)
            (inserts.write.format("delta").mode("append").option("mergeSchema", str(evolve_schema).lower())
             .options(**batch.txn_options()).save(batch.target_path))
            return
        if not prepared.extras.get("changed_rows", 1):  # only repeats: the batch's commit is empty, but there is one
            self._empty_commit(spark, batch)
            return
        target_columns = spark.read.format("delta").load(batch.target_path).columns
        insert_columns = list(target_columns)
        if evolve_schema:  # columns new to the table are inserted too (the MERGE adds them)
            insert_columns += [c for c in changes.inserts.columns if c not in insert_columns]
            insert_columns += [c for c in audit if c not in insert_columns]
        with delta_txn(spark, batch.app_id, batch.batch_seq, batch.user_metadata(), evolve_schema):
            merge_into(spark, batch.target_path, merge_source(changes, batch.table, audit), batch.table,
                       insert_columns)

    @staticmethod
    def _empty_commit(spark: SparkSession, batch: ClaimedBatch) -> None:
        (spark.read.format("delta").load(batch.target_path).limit(0).write.format("delta").mode("append")
         .options(**batch.txn_options()).save(batch.target_path))

    def abandon(self, spark: SparkProvider, batch: ClaimedBatch) -> None:
        self.record.drop_uncommitted(spark, target_txn_version(self.target_path, self.table.table_name))

    def row_counts(self, spark: SparkSession, batch: ClaimedBatch, commit: Mapping[str, Any],
                   footer_rows: Mapping[str, int]) -> dict[str, int]:
        """Change rows each file contributed to the record (all its batches): what the table's history holds
        of the file, and what ``<table>_target_matches_tracker`` compares for scd2 tables."""
        return self.record.rows_per_file(spark, batch.paths, batch.batch_seq)
