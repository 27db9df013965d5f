"""P7: ``validate_consistency`` on a table holding ``--files`` loaded files, against a Spark count of it.

Fixture (untimed): the target written by Spark in one commit (``--rows-per-file`` rows per file,
``_source_file`` naming ``--files`` files, ``_batch_id`` one of ``--files / 1000`` batches, the txn of the
last batch recorded), and a tracker holding every file as completed with the same batch ids and row counts,
written with delta-rs. The table is consistent, so validation must say so (checked).

Measured (median of ``--repeats``):
- loader: ``operations.validate_consistency`` (what ``loader-assets validate-consistency`` runs): lock,
  tracker reads, and the tracker-vs-target comparison, which aggregates the table per ``_source_file``
  in Spark;
- baseline: ``spark.read.format("delta").load(path).count()``.
Target: <= 3x. Also timed, to locate the cost: a per-file aggregation with string min/max of the batch id,
collected as Rows and as Arrow (the loader's first two versions), the target side of the per-batch
fingerprint the loader now compares first, and a full scan of the two audit columns with no result.

    python -m benchmarks.bench_p7_validate --files 100000
"""

import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from loader_assets.checks import batch_fingerprint_frame
from loader_assets.core.states import FileStatus
from loader_assets.operations import validate_consistency
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.target import app_id

TARGET_RATIO = 3.0
FILES_PER_BATCH = 1_000


def file_path(n: int) -> str:
    return f"/landing/events/d{n // FILES_PER_BATCH:04d}/f{n:07d}.parquet"


def batch_id(n: int) -> str:
    return f"{n // FILES_PER_BATCH + 1:08d}-fixture"


def write_target(spark: Any, path: str, files: int, rows_per_file: int) -> None:  # noqa: ANN401
    """One Spark write whose rows name ``files`` files (same path and batch id scheme as the tracker)."""
    from pyspark.sql import functions as F

    file_index = F.floor(F.col("id") / rows_per_file).cast("long")
    batch = F.floor(file_index / FILES_PER_BATCH).cast("long")
    frame = spark.range(files * rows_per_file).select(
        F.col("id"),
        (F.col("id") % 1000 / 10).alias("amount"),
        F.concat(
            F.lit("/landing/events/d"),
            F.lpad(batch.cast("string"), 4, "0"),
            F.lit("/f"),
            F.lpad(file_index.cast("string"), 7, "0"),
            F.lit(".parquet"),
        ).alias("_source_file"),
        F.current_timestamp().alias("_load_timestamp"),
        F.concat(F.lpad((batch + 1).cast("string"), 8, "0"), F.lit("-fixture")).alias("_batch_id"),
    )
    batches = -(-files // FILES_PER_BATCH)
    (
        frame.write.format("delta")
        .option("txnAppId", app_id("events"))
        .option("txnVersion", str(batches))
        .option("userMetadata", json.dumps({"batch_id": batch_id(files - 1), "batch_seq": batches}))
        .save(path)
    )


def run(
    files: int = 100_000, rows_per_file: int = 10, repeats: int = 3, workdir: Path | None = None
) -> dict[str, Any]:
    """Time validate-consistency on ``files`` loaded files against a Spark count of the table."""
    from pyspark.sql import functions as F

    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p7-"))
    moment = common.yesterday_noon()
    settings = common.write_config(root, {"table_name": "events", "source_path": "landing/events"})
    spark = common.spark_session()
    target = settings.table_path("events")
    write_target(spark, target, files, rows_per_file)
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    common.write_tracker(
        tracker,
        [
            common.tracker_rows(
                [file_path(n) for n in range(files)],
                "events",
                FileStatus.COMPLETED,
                moment,
                batch_ids=[batch_id(n) for n in range(files)],
                batch_seqs=[n // FILES_PER_BATCH + 1 for n in range(files)],
                row_count=rows_per_file,
            )
        ],
    )

    def count() -> int:
        return spark.read.format("delta").load(target).count()

    def validate() -> Any:  # noqa: ANN401
        return validate_consistency(settings, lambda: spark)

    assert count() == files * rows_per_file
    report = validate()  # untimed warm-up of both sides
    table = report.tables[0]
    assert report.consistent and table.target is not None, report.to_json()
    assert table.target.completed_files == table.target.target_files == files, report.to_json()

    baseline_seconds = common.median_seconds(count, repeats)
    with common.loader_phases() as phases:
        loader_seconds = common.median_seconds(validate, repeats)

    def per_file() -> Any:  # noqa: ANN401
        return (
            spark.read.format("delta")
            .load(target)
            .groupBy("_source_file")
            .agg(F.count(F.lit(1)).alias("rows"), F.min("_batch_id"), F.max("_batch_id"))
        )

    def per_batch() -> Any:  # noqa: ANN401
        return batch_fingerprint_frame(spark.read.format("delta").load(target))

    collect_seconds = common.median_seconds(lambda: per_file().collect(), repeats)
    arrow_seconds = common.median_seconds(lambda: per_file().toArrow(), repeats)
    per_batch_seconds = common.median_seconds(lambda: per_batch().toArrow(), repeats)
    noop_seconds = common.median_seconds(
        lambda: per_file().write.format("noop").mode("overwrite").save(), repeats
    )
    scan_seconds = common.median_seconds(
        lambda: (
            spark.read.format("delta")
            .load(target)
            .select("_source_file", "_batch_id")
            .write.format("noop")
            .mode("overwrite")
            .save()
        ),
        repeats,
    )
    ratio = loader_seconds / baseline_seconds
    return common.result(
        "P7",
        f"validate-consistency, {files:,} loaded files",
        loader_seconds,
        baseline_seconds,
        TARGET_RATIO,
        "<= 3x",
        ratio <= TARGET_RATIO,
        files=files,
        rows=files * rows_per_file,
        consistent=report.consistent,
        files_checked=table.files_checked,
        phases={name: round(value["seconds"] / repeats, 3) for name, value in phases.report().items()},
        what_if={
            "per-file aggregation with string min/max, collect() as Rows (the first version)": round(
                collect_seconds, 3),
            "per-file aggregation with string min/max, toArrow()": round(arrow_seconds, 3),
            "per-batch fingerprint of the target side alone, toArrow() (the loader's first step)": round(
                per_batch_seconds, 3),
            "per-file aggregation, no result (noop sink)": round(noop_seconds, 3),
            "scan of _source_file + _batch_id, no result (noop sink)": round(scan_seconds, 3),
        },
        baseline="spark.read.format('delta').load(table).count()",
        repeats=repeats,
    )


def main() -> None:
    common.bench_main(run, __doc__)

if __name__ == "__main__":
    main()
