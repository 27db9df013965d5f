"""P4: the cost of one ``--batch-files``-file batch into a table that already holds ``--batches`` batches,
against the same batch into an empty table.

Fixture (untimed): the populated table's history built batch by batch with the loader's own pieces, as that
many runs would have left it: per batch, the lock taken and released, the files registered, claimed, read with
``reading.read_batch`` and appended with the audit columns and the batch's txnAppId/txnVersion/userMetadata,
the row counts read back, and the files completed (so the target has ``--batches`` commits, the tracker
three per batch, the lock two). Running the loader itself ``--batches`` times would take several minutes
more and build the same state.

Measured (median of ``--repeats``; each repeat adds a new batch of fresh files on both sides):
- loader: ``run_pipeline`` of the new batch into the populated table (landing directory, tracker and Delta log
  all carry the history);
- baseline: ``run_pipeline`` of identical files into a new, empty table;
both with the small-batch engine off (a first batch is always Spark's). Reported beside them, in the same
repeats: a batch of as many fresh files into the populated table through the small-batch engine
(``small_batch_seconds``, no Spark), then a Spark batch right after that engine commit
(``populated_after_engine_seconds``). The ratio's populated side always follows a Spark commit: delta-rs writes
no version checksum (``_delta_log/N.crc``), so the first Spark operation after a delta-rs commit reconstructs
the table's state in a job of its own ("Compute snapshot"), a cost of mixing the engines that is reported
beside the ratio, not folded into it. Target: <= 1.2x.

    python -m benchmarks.bench_p4_batch_cost --batches 100 --batch-files 10
"""

import statistics
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from benchmarks import _common as common
from loader_assets.api import run_pipeline
from loader_assets.batch import ClaimedBatch, PreparedRows
from loader_assets.core.discovery import list_source_files
from loader_assets.core.partitions import partition_keys_for
from loader_assets.load import expected_files, new_batch_id
from loader_assets.reading import read_batch
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.settings import LoaderSettings
from loader_assets.target import batch_commit
from loader_assets.writers.append import AppendWriter
from loader_assets.writers.base import batch_row_counts

TARGET_RATIO = 1.2


def build_history(
    spark: Any,  # noqa: ANN401
    settings: LoaderSettings,
    batches: int,
    files: int,
    rows: int,
    moment: float,
) -> None:
    """``batches`` committed batches of ``files`` files through the loader's tracker, lock, reader, writer."""
    table = settings.table("events")
    source = Path(table.source_path)
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    tracker.create(baseline_txn=0)
    locks = DeltaLockResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    writer = AppendWriter(table, settings)
    for seq in range(1, batches + 1):
        paths = common.write_data_files(
            source / f"b{seq:04d}", files, rows, moment - 86400 * 2, first_offset=seq * files * rows
        )
        lease = locks.acquire(f"history-{seq}", wait_seconds=0, heartbeat=False)
        listing = list_source_files(str(source))
        listing = listing.filter(pc.is_in(listing["file_path"], pa.array([str(p) for p in paths])))
        tracker.register(listing, partition_keys_for(listing["file_modified_time"], "day", "2024-01-01"))
        rows_of_batch = tracker.read(paths=[str(p) for p in paths])
        batch_id = new_batch_id(seq)
        tracker.claim([str(p) for p in paths], batch_id, seq, f"history-{seq}")
        read = read_batch(spark, table, expected_files(rows_of_batch), None)
        assert read.dataframe is not None and not read.errors, read.errors
        batch = ClaimedBatch(table, settings.table_path("events"), f"history-{seq}", batch_id, seq,
                             tuple(expected_files(rows_of_batch)), replace=False)
        writer.write(batch, PreparedRows(read.dataframe), evolve_schema=False)  # the loader's own commit code
        commit = batch_commit(batch.target_path, batch_id)
        counts = batch_row_counts(spark, batch.target_path, batch_id)
        tracker.complete(counts, batch_id, int(commit["version"]) if commit else None)
        lease.release()


def _load(settings: LoaderSettings) -> tuple[float, Any, dict[str, Any]]:
    with dg.DagsterInstance.ephemeral() as instance, common.loader_phases() as phases:
        seconds, summary = common.timed(
            lambda: run_pipeline(settings, instance=instance, log_level="WARNING")
        )
    return seconds, summary, phases.report()


def run(
    batches: int = 100,
    batch_files: int = 10,
    rows: int = 1_000,
    repeats: int = 3,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Time one batch into a table with ``batches`` batches against the same batch into an empty table."""
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p4-"))
    moment = common.yesterday_noon()
    spark = common.spark_session()
    # both sides through Spark (the small-batch engine off): an empty table's first batch is always Spark's, and
    # what P4 measures is whether the cost of a batch grows with the table's history; the engine's batch into
    # the populated table is timed beside it (small_batch_times)
    populated = common.write_config(
        root / "populated", {"table_name": "events", "source_path": "landing/events"}, small_batch_max_bytes=0
    )
    engine = populated.model_copy(update={"small_batch_max_bytes": 32 << 20})
    build_seconds, _ = common.timed(
        lambda: build_history(spark, populated, batches, batch_files, rows, moment)
    )

    warm = common.write_config(root / "warmup", {"table_name": "events", "source_path": "landing/events"})
    common.write_data_files(root / "warmup" / "landing" / "events", 2, rows, moment)
    _load(warm)

    empty_times, populated_times, small_batch_times, after_engine_times, phases = [], [], [], [], {}
    engine_checksums: list[bool] = []  # whether the engine's commit left a version checksum
    for n in range(repeats):
        offset = (batches + 1 + n) * batch_files * rows
        fresh = common.write_config(
            root / f"empty-{n}", {"table_name": "events", "source_path": "landing/events"}, small_batch_max_bytes=0
        )
        for settings in (fresh, populated):
            common.write_data_files(
                Path(settings.table("events").source_path) / f"new-{n}",
                batch_files,
                rows,
                moment,
                first_offset=offset,
            )
        seconds, summary, phases_empty = _load(fresh)
        assert summary.success and summary.total_files_processed == batch_files, summary.to_json()
        empty_times.append(seconds)
        seconds, summary, phases_populated = _load(populated)
        assert summary.success and summary.total_files_processed == batch_files, summary.to_json()
        populated_times.append(seconds)
        common.write_data_files(Path(engine.table("events").source_path) / f"engine-{n}", batch_files, rows, moment,
                                first_offset=offset + batch_files * rows * (repeats + 1))
        seconds, summary, phases_engine = _load(engine)
        assert summary.success and summary.total_files_processed == batch_files, summary.to_json()
        assert not summary.spark_session_started, summary.to_json()
        small_batch_times.append(seconds)
        engine_version = DeltaTable(populated.table_path("events")).version()
        engine_checksums.append(Path(populated.table_path("events"), "_delta_log", f"{engine_version:020d}.crc")
                                .exists())
        # a Spark batch right after the engine's commit (the next repeat's populated batch follows this one,
        # a Spark commit, as every measured populated batch does)
        common.write_data_files(Path(populated.table("events").source_path) / f"after-engine-{n}", batch_files,
                                rows, moment, first_offset=offset + batch_files * rows * (2 * repeats + 2))
        seconds, summary, phases_after = _load(populated)
        assert summary.success and summary.total_files_processed == batch_files, summary.to_json()
        after_engine_times.append(seconds)
        phases = {"populated": phases_populated, "empty": phases_empty, "populated_small_batch": phases_engine,
                  "populated_after_engine": phases_after}

    expected = (batches + 3 * repeats) * batch_files * rows
    total = spark.read.format("delta").load(populated.table_path("events")).count()
    assert total == expected, (total, expected)
    counts = (
        DeltaTrackerResource(checkpoint_path=populated.checkpoint_path).for_table("events").status_counts()
    )
    assert counts["completed"] == (batches + 3 * repeats) * batch_files, counts
    loader_seconds, baseline_seconds = statistics.median(populated_times), statistics.median(empty_times)
    ratio = loader_seconds / baseline_seconds
    return common.result(
        "P4",
        f"one {batch_files}-file batch into a table of {batches} batches",
        loader_seconds,
        baseline_seconds,
        TARGET_RATIO,
        "<= 1.2x",
        ratio <= TARGET_RATIO,
        batches=batches,
        batch_files=batch_files,
        rows_per_file=rows,
        populated_rows_after=total,
        tracker_completed_after=counts["completed"],
        populated_times=[round(s, 3) for s in populated_times],
        empty_times=[round(s, 3) for s in empty_times],
        small_batch_seconds=round(statistics.median(small_batch_times), 3),
        small_batch_times=[round(s, 3) for s in small_batch_times],
        populated_after_engine_seconds=round(statistics.median(after_engine_times), 3),
        populated_after_engine_times=[round(s, 3) for s in after_engine_times],
        engine_commits_with_checksum=sum(engine_checksums),
        history_build_seconds=round(build_seconds, 1),
        phases=phases,
        baseline="the same batch into an empty table (run_pipeline)",
        repeats=repeats,
    )


def main() -> None:
    common.bench_main(run, __doc__)

if __name__ == "__main__":
    main()
