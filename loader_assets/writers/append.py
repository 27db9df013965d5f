"""Append: a batch's rows are added to the target in one commit.

A batch holding a file that may already have rows in the target (``ClaimedBatch.replace``: the tracker says the
file was claimed before, or started after the target held batches) is written instead as an overwrite with
``replaceWhere`` on ``_source_file``: still one commit, and it replaces exactly those files' rows, so the result
is the same however many times a file was written before. Delta's replaceWhere requires every written row to
match the predicate, so it names all the batch's files (a file without rows in the table loses nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loader_assets.batch import ClaimedBatch, PreparedRows
from loader_assets.writers.base import TableWriter, audited, batch_row_counts, replace_predicate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class AppendWriter(TableWriter):
    """Appends each batch with Spark + delta-spark, carrying ``txnAppId``/``txnVersion``."""

    balances_read_tasks = True

    def write(self, batch: ClaimedBatch, prepared: PreparedRows, evolve_schema: bool) -> None:
        """One append (or ``replaceWhere`` overwrite) of the batch. Nothing is computed beside the rows: the check
        after the load reads what the commit wrote from its data files (``loader_assets.written_rows``)."""
        writer = audited(prepared.rows, batch.batch_id).write.format("delta").options(**batch.txn_options())
        if evolve_schema:  # schema_evolution add_new_columns / rescue: new columns join in this commit
            writer = writer.option("mergeSchema", "true")
        if batch.replace:
            writer = writer.mode("overwrite").option("replaceWhere", replace_predicate(batch.paths))
        else:
            writer = writer.mode("append")
        writer.save(batch.target_path)

    def row_counts(self, spark: SparkSession, batch: ClaimedBatch, commit: Mapping[str, Any],
                   footer_rows: Mapping[str, int]) -> dict[str, int]:
        """Parquet appends write every row of every file: the footers' row counts are the rows written, when
        their sum equals the commit's ``numOutputRows`` (checked); otherwise they are aggregated from the table
        by ``_batch_id``."""
        counts = {p: footer_rows[p] for p in batch.paths if p in footer_rows}
        written = (commit.get("operationMetrics") or {}).get("numOutputRows")
        if len(counts) == len(batch.files) and written is not None and int(written) == sum(counts.values()):
            return counts
        return batch_row_counts(spark, batch.target_path, batch.batch_id)
