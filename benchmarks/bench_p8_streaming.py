"""P8: the loader against the peer users would pick on open-source Spark, Structured Streaming's file source.

The peer is what Auto Loader builds on: ``spark.readStream`` of the landing directory (schema given) with the same
three audit columns (``_source_file`` from ``_metadata.file_path``, ``_load_timestamp``, a batch id) written to
Delta with a checkpoint and ``trigger(availableNow=True)``: exactly-once file ingestion, one query per step.
Same Spark session, same files, same steps, each side into its own table:

(a) a first load of ``--files`` parquet files x ``--rows`` rows (``--repeats`` rounds, alternating which side
    goes first, each round into new tables and a new checkpoint; medians);
(b) ``--increments`` incremental batches of ``--increment-files`` new files each into the loaded tables (the
    last round's), alternating sides; median per batch;
(c) a rerun with nothing new (median of ``--repeats``): the loader starts no Spark session for it.

After every step both tables must hold the same rows: the row count, the number of distinct source file names
and an order-independent hash of every row with its file name (``sum(xxhash64(...))``, computed in Spark) must
be equal (checked, untimed). Targets: loader <= 1.00x the streaming query on (a) and (b); on (c) no Spark
session and at or below the query.

    python -m benchmarks.bench_p8_streaming --files 200 --rows 50000
"""

import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks import _common as common
from loader_assets.api import run_pipeline
from loader_assets.resources import spark as spark_resource

TARGET_RATIO = 1.00


def _stream(spark: Any, source: Path, target: Path, checkpoint: Path) -> None:  # noqa: ANN401
    """One availableNow query over ``source``: every file not yet in the checkpoint, appended to ``target``."""
    from pyspark.sql import functions as F

    schema = spark.read.parquet(str(next(source.glob("*.parquet")))).schema
    query = (
        spark.readStream.schema(schema).format("parquet").load(str(source))
        .withColumn("_source_file", F.col("_metadata.file_path"))
        .withColumn("_load_timestamp", F.current_timestamp())
        .withColumn("_batch_id", F.lit(str(uuid.uuid4())))
        .writeStream.format("delta").option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True).start(str(target))
    )
    query.awaitTermination()
    if query.exception() is not None:
        raise RuntimeError(f"streaming query failed: {query.exception()}")


def _fingerprint(spark: Any, table: Path) -> tuple[int, int, int]:  # noqa: ANN401
    """(rows, distinct file names, order-independent hash of every row with its file's name), in Spark."""
    from pyspark.sql import functions as F

    frame = spark.read.format("delta").load(str(table)).withColumn(
        "_name", F.regexp_extract(F.col("_source_file"), r"[^/]+$", 0))
    row = frame.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("_name").alias("files"),
                    F.sum(F.xxhash64("id", "customer", "amount", "event_time", "_name").cast("decimal(38,0)"))
                    .alias("hash")).collect()[0]
    return int(row["rows"]), int(row["files"]), int(row["hash"] or 0)


class _Sides:
    """The two sides of one round: a loader project and a streaming target with its checkpoint."""

    def __init__(self, spark: Any, root: Path, source: Path) -> None:  # noqa: ANN401
        self.spark, self.source = spark, source
        self.settings = common.write_config(root / "loader", {"table_name": "events", "source_path": str(source)})
        self.stream_table, self.checkpoint = root / "stream" / "events", root / "stream" / "_checkpoint"
        self.instance = dg.DagsterInstance.ephemeral()
        self.steps_checked = 0

    def loader(self) -> Any:  # noqa: ANN401
        summary = run_pipeline(self.settings, instance=self.instance, log_level="WARNING")
        assert summary.success, summary.to_json()
        return summary

    def stream(self) -> None:
        _stream(self.spark, self.source, self.stream_table, self.checkpoint)

    def timed_both(self, loader_first: bool) -> tuple[float, float, Any]:  # noqa: ANN401
        """(loader seconds, streaming seconds, loader summary) of one step, in the given order."""
        if loader_first:
            loader_seconds, summary = common.timed(self.loader)
            stream_seconds, _ = common.timed(self.stream)
        else:
            stream_seconds, _ = common.timed(self.stream)
            loader_seconds, summary = common.timed(self.loader)
        return loader_seconds, stream_seconds, summary

    def assert_equal(self, expected_rows: int, expected_files: int) -> tuple[int, int, int]:
        loader = _fingerprint(self.spark, Path(self.settings.table_path("events")))
        stream = _fingerprint(self.spark, self.stream_table)
        assert loader == stream, f"tables differ: loader {loader}, streaming {stream}"
        assert loader[:2] == (expected_rows, expected_files), (loader, expected_rows, expected_files)
        self.steps_checked += 1
        return loader


def run(
    files: int = 200, rows: int = 50_000, increments: int = 5, increment_files: int = 10, repeats: int = 3,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Time the three steps on both sides (see the module docstring)."""
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p8-"))
    moment = common.yesterday_noon()
    spark = common.spark_session()
    warm_source = root / "landing" / "warmup"
    common.write_data_files(warm_source, 2, 1_000, moment)
    warm = _Sides(spark, root / "warmup", warm_source)  # untimed: class loading, JIT, first Dagster run
    warm.timed_both(True)

    first_loader, first_stream, rounds = [], [], []
    for n in range(repeats):  # each round its own landing copy would cost minutes of writing; the same files
        source = root / "landing" / f"round-{n}"  # in a directory per round (the checkpoint lists its own)
        common.write_data_files(source, files, rows, moment)
        sides = _Sides(spark, root / f"round-{n}", source)
        loader_seconds, stream_seconds, summary = sides.timed_both(loader_first=n % 2 == 1)
        assert summary.total_files_processed == files, summary.to_json()
        sides.assert_equal(files * rows, files)
        first_loader.append(loader_seconds)
        first_stream.append(stream_seconds)
        rounds.append(sides)

    sides = rounds[-1]
    total_files, offset = files, files * rows
    increment_loader, increment_stream = [], []
    for n in range(increments):
        common.write_data_files(sides.source, increment_files, rows, moment, prefix=f"inc{n}",
                                first_offset=offset + n * increment_files * rows)
        total_files += increment_files
        loader_seconds, stream_seconds, summary = sides.timed_both(loader_first=n % 2 == 0)
        assert summary.total_files_processed == increment_files, summary.to_json()
        sides.assert_equal(total_files * rows, total_files)
        increment_loader.append(loader_seconds)
        increment_stream.append(stream_seconds)

    sessions_before = spark_resource.sessions_started()
    rerun_loader, rerun_stream = [], []
    for n in range(repeats):
        loader_seconds, stream_seconds, summary = sides.timed_both(loader_first=n % 2 == 0)
        assert summary.total_files_processed == 0 and not summary.spark_session_started, summary.to_json()
        rerun_loader.append(loader_seconds)
        rerun_stream.append(stream_seconds)
    rerun_started_spark = spark_resource.sessions_started() > sessions_before
    rows_after = sides.assert_equal(total_files * rows, total_files)[0]
    for each in [warm, *rounds]:
        each.instance.dispose()

    med = statistics.median
    first_ratio = med(first_loader) / med(first_stream)
    increment_ratio = med(increment_loader) / med(increment_stream)
    rerun_ratio = med(rerun_loader) / med(rerun_stream)
    met = first_ratio <= TARGET_RATIO and increment_ratio <= TARGET_RATIO and rerun_ratio <= 1.0 \
        and not rerun_started_spark
    return common.result(
        "P8",
        f"first load of {files} parquet files x {rows:,} rows vs Structured Streaming (availableNow); "
        f"{increments} batches of {increment_files} files; a rerun with nothing new",
        med(first_loader),
        med(first_stream),
        TARGET_RATIO,
        "<= 1.00x on the first load and on each batch; a rerun without Spark, at or below the query",
        met,
        first_load_ratio=round(first_ratio, 3),
        increment_ratio=round(increment_ratio, 3),
        increment_loader_seconds=round(med(increment_loader), 3),
        increment_stream_seconds=round(med(increment_stream), 3),
        rerun_ratio=round(rerun_ratio, 3),
        rerun_loader_seconds=round(med(rerun_loader), 3),
        rerun_stream_seconds=round(med(rerun_stream), 3),
        rerun_started_spark=rerun_started_spark,
        steps_checked_equal=sum(each.steps_checked for each in rounds),  # assert_equal raised for a difference
        rows_after=rows_after,
        first_load_loader_times=[round(s, 3) for s in first_loader],
        first_load_stream_times=[round(s, 3) for s in first_stream],
        increment_loader_times=[round(s, 3) for s in increment_loader],
        increment_stream_times=[round(s, 3) for s in increment_stream],
        rerun_loader_times=[round(s, 3) for s in rerun_loader],
        rerun_stream_times=[round(s, 3) for s in rerun_stream],
        baseline="spark.readStream parquet (schema given) + the three audit columns -> Delta, checkpoint, "
                 "trigger(availableNow=True), one query per step",
        repeats=repeats,
    )


def main() -> None:
    common.bench_main(run, __doc__)


if __name__ == "__main__":
    main()
