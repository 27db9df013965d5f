"""Append strategy: a batch's rows are appended to the target in one commit.

A batch that may overlap rows already in the table (a retried file, a tracker that is behind the target) is
written instead as an overwrite with ``replaceWhere`` on ``_source_file``: still one commit, and it replaces
exactly those files' rows, so the result is the same however many times the file was written before.
"""


from typing import Any

from loader_assets.io_managers._delta import DeltaBatchIOManager, PreparedRows
from loader_assets.loading import LoadBatch, audited, replace_predicate

class DeltaAppendIOManager(DeltaBatchIOManager):
    """Appends each batch with Spark + delta-spark, carrying ``txnAppId``/``txnVersion`` for idempotency.

    Example::

        DeltaAppendIOManager(target_root="/data/lake", spark=SparkSessionResource(master="local[*]"))
    """

    def row_counts_from_commit(self, batch: LoadBatch, commit: dict[str, Any]) -> dict[str, int] | None:
        """Parquet appends write every row of every file: the footers' row counts are the rows written, when
        their sum equals the commit's ``numOutputRows`` (checked; otherwise they are aggregated from the table)."""
        if not batch.loaded_paths or any(p not in batch.footer_rows for p in batch.loaded_paths):
            return None
        counts = {p: batch.footer_rows[p] for p in batch.loaded_paths}
        written = (commit.get("operationMetrics") or {}).get("numOutputRows")
        if written is None or int(written) != sum(counts.values()):
            return None
        return counts

    def write_batch(self, batch: LoadBatch, prepared: PreparedRows) -> bool:
        assert batch.batch_id is not None and batch.batch_seq is not None
        writer = (
            audited(prepared.rows, batch.batch_id)
            .write.format("delta")
            .option("txnAppId", batch.app_id)
            .option("txnVersion", str(batch.batch_seq))
            .option("userMetadata", batch.user_metadata())
        )
        if batch.evolve_schema:  # schema_evolution add_new_columns / rescue: new columns join in this commit
            writer = writer.option("mergeSchema", "true")
        if batch.replace_existing:
            writer = writer.mode("overwrite").option("replaceWhere", replace_predicate(batch.loaded_paths))
        else:
            writer = writer.mode("append")
        writer.save(batch.target_path)
        return True
