"""The writer interface: what a loading strategy does with a claimed batch (``load.TableLoad`` drives it).

A writer turns one claimed batch into exactly one commit on the target carrying the batch's txn
(``txnAppId = loader_assets/<table>``, ``txnVersion = batch_seq``), whatever the rows are: a batch that
changes nothing still commits (an empty commit), because the target's txn version is how recovery tells a
committed batch from an interrupted one. Whatever else a strategy keeps (the SCD2 change record) it writes
before that commit, in a way the target's txn version can tell apart (``changes.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from loader_assets.batch import ClaimedBatch, PreparedRows
from loader_assets.settings import LoaderSettings, TableSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SparkProvider = Callable[[], "SparkSession"]


class TableWriter(ABC):
    """One table's loading strategy."""

    # the write is the batch read's own tasks (a map-only append), so their split decides how the job fills
    # the cores (loader_assets.read_tasks); a MERGE shuffles the read, which the model does not describe
    balances_read_tasks: ClassVar[bool] = False

    def __init__(self, table: TableSettings, settings: LoaderSettings) -> None:
        self.table = table
        self.settings = settings
        self.target_path = settings.table_path(table.table_name)

    def txn_floor(self) -> int:
        """A txn version other than the target's that batch numbers must stay above (0: none)."""
        return 0

    def recover(self, spark: SparkProvider, target_txn: int, uncommitted: Sequence[int] = ()) -> None:
        """Clean up what interrupted batches left outside the target (``uncommitted``: batch numbers at or below
        ``target_txn`` that have no commit). Runs under the lock, before planning."""

    def fence(self, spark: SparkSession, batch_seq: int, batch_ids: Sequence[str]) -> None:
        """Make sure no commit of an interrupted batch numbered up to ``batch_seq`` can land from now on.

        Needed only where a write can outlive the process that started it: over Spark Connect the server may
        finish a killed client's last operation later (docs/ARCHITECTURE.md, "Spark Connect"). An empty commit
        carrying the txn (``loader_assets/<table>``, ``batch_seq``) does it: Delta skips it if that txn is
        already recorded (the batch did commit), and a late commit of the batch, which checked the same txn,
        then fails with a concurrent-transaction conflict instead of landing after recovery decided."""
        from loader_assets.target import app_id, target_exists

        if target_exists(self.target_path):
            fence_commit(spark, self.target_path, app_id(self.table.table_name), batch_seq, batch_ids)

    def prepare(self, batch: ClaimedBatch, frame: DataFrame) -> tuple[PreparedRows, dict[str, str]]:
        """Strategy checks that need Spark: the rows to write, and an error per file to fail (those files'
        rows are left out). The default accepts everything."""
        return PreparedRows(frame), {}

    @abstractmethod
    def write(self, batch: ClaimedBatch, prepared: PreparedRows, evolve_schema: bool) -> None:
        """Write the batch as exactly one target commit carrying its txn (see the module docstring)."""

    def abandon(self, spark: SparkProvider, batch: ClaimedBatch) -> None:
        """A write of ``batch`` failed and did not reach the target: undo what the strategy wrote beside it."""

    @abstractmethod
    def row_counts(self, spark: SparkSession, batch: ClaimedBatch, commit: Mapping[str, Any],
                   footer_rows: Mapping[str, int]) -> dict[str, int]:
        """Per-file row counts of a committed batch, as the table (or the strategy's record) holds them."""


FENCE_ATTEMPTS = 5


def fence_commit(spark: SparkSession, path: str, application: str, version: int, batch_ids: Sequence[str]) -> None:
    """An empty commit on the Delta table at ``path`` carrying the txn (``application``, ``version``), unless
    the table already recorded it; its userMetadata names the fenced batches (and no ``batch_id``, so recovery
    never mistakes it for a batch's commit). Retried when a late commit of a fenced batch wins the race."""
    import json

    from loader_assets.target import txn_version

    metadata = json.dumps({"fence": {"batch_seq": version, "batch_ids": list(batch_ids)}})
    for attempt in range(FENCE_ATTEMPTS):
        if txn_version(path, application) >= version:
            return
        try:
            empty_commit(spark, path, {"txnAppId": application, "txnVersion": str(version),
                                       "userMetadata": metadata})
            return
        except Exception as error:  # a concurrent commit of the same txn: look again
            if "oncurrent" not in str(error) or attempt == FENCE_ATTEMPTS - 1:
                raise


def empty_commit(spark: SparkSession, path: str, options: Mapping[str, str]) -> None:
    """A commit that adds no file to the Delta table at ``path``, carrying the writer ``options`` (a txn,
    userMetadata): how a batch that changes nothing, or a fence, still leaves its txn in the log."""
    (spark.read.format("delta").load(path).limit(0).write.format("delta").mode("append")
     .options(**options).save(path))


def batch_row_counts(spark: SparkSession, target_path: str, batch_id: str) -> dict[str, int]:
    """Rows per ``_source_file`` that the target holds for one batch (aggregated in Spark)."""
    from pyspark.sql import functions as F

    from loader_assets.reading import BATCH_ID_COLUMN, SOURCE_FILE_COLUMN

    frame = spark.read.format("delta").load(target_path).where(F.col(BATCH_ID_COLUMN) == F.lit(batch_id))
    rows = frame.groupBy(SOURCE_FILE_COLUMN).count().collect()
    return {row[SOURCE_FILE_COLUMN]: int(row["count"]) for row in rows}


def audited(frame: DataFrame, batch_id: str) -> DataFrame:
    """``frame`` with the audit columns a batch stamps on every row (``_source_file`` is already there)."""
    from pyspark.sql import functions as F

    from loader_assets.reading import BATCH_ID_COLUMN, LOAD_TIMESTAMP_COLUMN

    return frame.withColumn(LOAD_TIMESTAMP_COLUMN, F.current_timestamp()).withColumn(BATCH_ID_COLUMN,
                                                                                     F.lit(batch_id))


def replace_predicate(paths: list[str]) -> str:
    """A Delta ``replaceWhere`` predicate selecting the rows of exactly these source files."""
    from loader_assets.reading import SOURCE_FILE_COLUMN

    def literal(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"{SOURCE_FILE_COLUMN} IN ({', '.join(literal(p) for p in paths)})"
