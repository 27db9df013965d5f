"""SCD2 strategy: a batch becomes one Delta MERGE that closes current versions and inserts new ones.

The version logic lives in ``loader_assets.scd2``; this module wires it to the protocol. The MERGE carries the
batch's txn through the session confs ``spark.databricks.delta.write.txnAppId`` / ``txnVersion`` (with
``txnVersion.autoReset.enabled``) and its userMetadata through ``spark.databricks.delta.commitInfo.userMetadata``;
all are set right before the one MERGE and unset in ``finally``, because a left-over pair would silently skip
the session's next write of any kind (DESIGN.md section 4). The first batch of a new table has nothing to
close, so it is written as an append carrying the same txn options.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from loader_assets.io_managers._delta import DeltaBatchIOManager, PreparedRows
from loader_assets.loading import LoadBatch, open_target
from loader_assets.reading import BATCH_ID_COLUMN, LOAD_TIMESTAMP_COLUMN
from loader_assets.scd2 import (
    compute_changes,
    merge_into,
    merge_source,
    validate_batch,
    versions_of_keys,
    with_sequence,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
TXN_AUTO_RESET_CONF = "spark.databricks.delta.write.txnVersion.autoReset.enabled"
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"


SCHEMA_AUTO_MERGE_CONF = "spark.databricks.delta.schema.autoMerge.enabled"


@contextmanager
def delta_txn(
    spark: "SparkSession", app_id: str, version: int, user_metadata: str, evolve_schema: bool = False
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


class DeltaScd2IOManager(DeltaBatchIOManager):
    """Keeps full history per key: new keys insert a current version; a change in a tracking column closes the
    current version and inserts the new one; unchanged rows write nothing.

    Example::

        DeltaScd2IOManager(target_root="/data/lake", spark=SparkSessionResource(master="local[*]"))
    """

    def validate_batch(self, batch: LoadBatch, frame: "DataFrame") -> tuple[PreparedRows, dict[str, str]]:
        spark = frame.sparkSession
        prepared = PreparedRows(frame)
        # The batch's rows and what the target knows of the batch's keys are each read by several steps:
        # computed once and kept for the batch, instead of re-reading the files and the whole table each time.
        rows = prepared.keep(with_sequence(spark, frame, batch.table, batch.file_times))
        key_versions = None
        if open_target(batch.target_path) is not None:
            target = spark.read.format("delta").load(batch.target_path)
            prepared.extras["target_columns"] = target.columns
            key_versions = prepared.keep(versions_of_keys(target, rows, batch.table))
        result = validate_batch(rows, batch.table, key_versions, keep=prepared.keep)
        assert result.rows is not None
        prepared.rows = result.rows
        return prepared, result.errors

    def write_batch(self, batch: LoadBatch, prepared: PreparedRows) -> bool:
        from pyspark.sql import functions as F

        assert batch.batch_id is not None and batch.batch_seq is not None
        spark = prepared.rows.sparkSession
        target_columns = prepared.extras.get("target_columns")
        changes = compute_changes(prepared.rows, batch.table)
        audit = {LOAD_TIMESTAMP_COLUMN: F.current_timestamp(), BATCH_ID_COLUMN: F.lit(batch.batch_id)}
        if target_columns is None:  # a new table: nothing to close, the versions are one append
            inserts = changes.inserts
            for name, value in audit.items():
                inserts = inserts.withColumn(name, value)
            inserts = inserts.cache()
            try:
                if inserts.isEmpty():
                    return False
                (
                    inserts.write.format("delta").mode("append").option("mergeSchema", str(batch.evolve_schema).lower())
                    .option("txnAppId", batch.app_id)
                    .option("txnVersion", str(batch.batch_seq))
                    .option("userMetadata", batch.user_metadata())
                    .save(batch.target_path)
                )
            finally:
                inserts.unpersist()
            return True
        source = merge_source(changes, batch.table, audit).cache()
        try:
            if source.isEmpty():
                return False
            insert_columns = list(target_columns)
            if batch.evolve_schema:  # columns new to the table are inserted too (the MERGE adds them)
                insert_columns += [c for c in changes.inserts.columns if c not in insert_columns]
                insert_columns += [c for c in audit if c not in insert_columns]
            with delta_txn(spark, batch.app_id, batch.batch_seq, batch.user_metadata(), batch.evolve_schema):
                merge_into(spark, batch.target_path, source, batch.table, insert_columns)
        finally:
            source.unpersist()
        return True
