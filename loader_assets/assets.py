"""Table assets: one time-window partitioned asset per configured table (DESIGN.md section 3).

Materialising partitions P of table T loads every file of P that is not completed yet (pending, or failed with
retries left): the asset takes T's lock, recovers interrupted batches, plans and claims the batch, and reads it
with Spark; its IO manager commits it. Wide ranges run as one run (``BackfillPolicy.single_run()``) with one
Spark session, which starts only when the batch has files.
"""


from collections.abc import Sequence
from datetime import datetime

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from loader_assets.checks import run_ended_checker
from loader_assets.core import faults
from loader_assets.core.errors import TrackerError
from loader_assets.core.partitions import parse_start
from loader_assets.loading import (
    LoadBatch,
    Plan,
    data_schema_of_target,
    expected_files,
    new_batch_id,
    next_batch_sequence,
    plan_batch,
    missing_tracker_message,
    recover_interrupted,
    target_txn_version,
)
from loader_assets.core.states import FileStatus
from loader_assets.reading import ExpectedFile, content_hash, precheck_file, read_batch
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.spark import SparkSessionResource
from loader_assets.resources.tracker import DeltaTrackerResource, FileTracker
from loader_assets.settings import (
    DuplicateContent,
    LoaderSettings,
    LoadingStrategy,
    PartitionGranularity,
    SchemaEvolution,
    TableSettings,
)

TABLE_TAG = "loader_assets/table"
IO_MANAGER_KEYS = {LoadingStrategy.APPEND: "append_io_manager", LoadingStrategy.SCD2: "scd2_io_manager"}


def partitions_def_for(table: TableSettings) -> dg.TimeWindowPartitionsDefinition:
    """Daily or hourly UTC windows from the configured start up to the current window (``end_offset=1``)."""
    start = parse_start(table.partitioning.start)
    if table.partitioning.granularity is PartitionGranularity.HOUR:
        return dg.HourlyPartitionsDefinition(
            start_date=start.strftime("%Y-%m-%d-%H:%M"), end_offset=1, timezone="UTC"
        )
    return dg.DailyPartitionsDefinition(start_date=start.strftime("%Y-%m-%d"), end_offset=1, timezone="UTC")


WAITING_MESSAGE = (
    "the file changed since it was discovered, so it may still be being written; it was not loaded and is "
    "pending again with its new size and time, to load once it stops changing (min_file_age_seconds makes runs "
    "wait for files to settle)"
)


def skip_duplicates(
    context: dg.AssetExecutionContext, tracker: FileTracker, files: list[ExpectedFile], batch: LoadBatch
) -> list[ExpectedFile]:
    """duplicate_content=skip: hash the batch's files; skip those whose content a loaded file (or an earlier
    file of this batch) already has, naming that file. Returns the files left to load."""
    name = tracker.table_name
    hashes = {f.path: h for f in files if (h := content_hash(f.path)) is not None}
    loaded = tracker.read(columns=["file_path", "content_hash"], statuses=[FileStatus.COMPLETED])
    owners = {h: p for p, h in zip(loaded["file_path"].to_pylist(), loaded["content_hash"].to_pylist(),
                                  strict=True) if h}
    keep: list[ExpectedFile] = []
    for expected in files:
        digest = hashes.get(expected.path)
        owner = owners.get(digest) if digest else None
        if owner is not None and owner != expected.path:
            batch.skipped[expected.path] = (
                f"same content (sha256 {digest[:16]}...) as {owner!r}, which is loaded (or loads in this "
                "batch); skipped because duplicate_content=skip"
            )
            continue
        if digest:
            owners.setdefault(digest, expected.path)
        keep.append(expected)
    if batch.skipped:
        tracker.skip(batch.skipped, {p: hashes[p] for p in batch.skipped})
        tracker.events.record([
            {"file_path": p, "event": "skipped:duplicate_content", "detail": reason, "actor": "loader"}
            for p, reason in batch.skipped.items()
        ])
        for path, reason in batch.skipped.items():
            context.log.warning(f"table {name}: file {path!r} skipped: {reason}")
    batch.content_hashes = {f.path: hashes[f.path] for f in keep if f.path in hashes}
    return keep


def prepare_batch(
    context: dg.AssetExecutionContext,
    table: TableSettings,
    settings: LoaderSettings,
    partition_keys: Sequence[str] | None,
    tracker_resource: DeltaTrackerResource,
    lock_resource: DeltaLockResource,
    spark: SparkSessionResource,
) -> LoadBatch:
    """Lock, recover, plan, claim and read one batch of ``table``. The returned batch holds the lock."""
    name = table.table_name
    target_path = settings.table_path(name)
    tracker = tracker_resource.for_table(name)
    lease = lock_resource.for_table(name).acquire(
        context.run.run_id, wait_seconds=lock_resource.wait_seconds, run_ended=run_ended_checker(context.instance)
    )
    batch = LoadBatch(table=table, target_path=target_path, run_id=context.run.run_id, tracker=tracker, lease=lease,
                      discovered=0, backoff=settings.retry_delay)
    claimed: list[str] = []
    try:
        faults.crash_point(faults.AFTER_LOCK)
        if not tracker.exists() and target_txn_version(target_path, name) > 0:
            raise TrackerError(missing_tracker_message(name, tracker.path))
        batch.recovered = recover_interrupted(tracker, target_path, name, lambda: spark.session)
        if not batch.recovered.empty:
            context.log.warning(
                f"table {name}: recovered interrupted batches: {len(batch.recovered.completed)} files were "
                f"committed (now completed), {len(batch.recovered.failed)} were not (failed, to retry)"
            )
        plan: Plan = plan_batch(
            tracker, table, list(partition_keys) if partition_keys is not None else None,
            settings.retry_attempts, settings.max_files_per_run,
        )
        batch.discovered, batch.deferred = plan.discovered, plan.deferred
        if plan.registered:
            context.log.info(f"table {name}: registered {plan.registered} new files as pending")
        for change in plan.changes:
            context.log.warning(
                f"table {name}: file {change.file_path!r} changed in the source ({change.old_fingerprint} -> "
                f"{change.new_fingerprint}, size:mtime); on_file_change: {change.action}"
            )
        if plan.batch.num_rows == 0:
            context.log.info(f"table {name}: nothing to load in {len(partition_keys or [])} partition(s)")
            return batch
        files = expected_files(plan.batch)
        if table.duplicate_content is DuplicateContent.SKIP:
            files = skip_duplicates(context, tracker, files, batch)
            if not files:
                return batch
        sequence = next_batch_sequence(tracker, target_path, name)
        batch.batch_seq = sequence.next_seq
        batch.batch_id = new_batch_id(batch.batch_seq)
        # A file claimed before may already have rows in the target (interrupted or superseded batch, a changed
        # or reprocessed file): the batch replaces them.
        chosen = plan.batch.filter(pc.is_in(plan.batch["file_path"], pa.array([f.path for f in files], pa.string())))
        previously_claimed = chosen["batch_seq"].null_count < chosen.num_rows
        batch.replace_existing = previously_claimed or sequence.tracker_behind
        claimed = [f.path for f in files]
        batch.file_times = {f.path: f.modified_micros for f in files}
        tracker.claim(claimed, batch.batch_id, batch.batch_seq, context.run.run_id,
                      content_hashes=batch.content_hashes or None)
        faults.crash_point(faults.AFTER_CLAIM)
        context.log.info(f"table {name}: batch {batch.batch_id} claimed {len(files)} files")

        prechecked = []
        changing: dict[str, tuple[int, datetime]] = {}
        for expected in files:
            check = precheck_file(expected, table)
            if check.problem:
                batch.failed[expected.path] = check.problem
            elif check.still_changing:
                assert check.now_size is not None and check.now_mtime is not None
                changing[expected.path] = (check.now_size, check.now_mtime)
            elif check.empty:
                batch.completed_empty.append(expected.path)
            else:
                prechecked.append(expected)
        if changing:
            tracker.release(changing, WAITING_MESSAGE)
            batch.waiting = list(changing)
            for path in changing:
                context.log.warning(f"table {name}: file {path!r} changed since discovery; {WAITING_MESSAGE}")
        if batch.completed_empty:
            tracker.complete({p: 0 for p in batch.completed_empty}, batch.batch_id, None)
            context.log.info(f"table {name}: {len(batch.completed_empty)} empty files completed with 0 rows")
        if prechecked:
            session = spark.session
            reference = data_schema_of_target(session, target_path, table)
            read = read_batch(session, table, prechecked, reference)
            by_path = {f.path: f for f in prechecked}
            batch.reader = lambda paths: read_batch(session, table, [by_path[p] for p in paths], reference)
            batch.cached.extend(read.cached)
            batch.failed.update(read.errors)
            batch.dataframe, batch.loaded_paths = read.dataframe, read.loaded_paths
            batch.quarantine, batch.quarantined = read.quarantine, read.quarantined
            batch.footer_rows = read.footer_rows
            batch.evolve_schema = read.evolves_schema or table.schema_evolution is not SchemaEvolution.FAIL
        if batch.failed:
            tracker.fail(batch.failed, backoff=settings.retry_delay)
            for path, error in batch.failed.items():
                context.log.error(f"table {name}: file {path!r} failed: {error}")
        return batch
    except BaseException as error:
        done = set(batch.failed) | set(batch.waiting) | set(batch.completed_empty)
        unresolved = [p for p in claimed if p not in done]
        if unresolved:
            message = f"run {context.run.run_id} failed while preparing batch {batch.batch_id}: {error}"
            try:
                tracker.fail({p: message for p in unresolved}, backoff=settings.retry_delay)
            except Exception:
                context.log.exception(f"table {name}: could not mark the batch failed; recovery will resolve it")
        batch.release()
        raise


def build_table_asset(table: TableSettings, settings: LoaderSettings) -> dg.AssetsDefinition:
    """The software-defined asset of one target table."""
    name = table.table_name

    @dg.asset(
        name=name,
        partitions_def=partitions_def_for(table),
        backfill_policy=dg.BackfillPolicy.single_run(),
        io_manager_key=IO_MANAGER_KEYS[table.loading_strategy],
        group_name="tables",
        kinds={"delta", "spark"},
        tags={TABLE_TAG: name},
        metadata={
            "table_uri": settings.table_path(name),
            "source_path": table.source_path,
            "file_format": table.file_format.value,
            "loading_strategy": table.loading_strategy.value,
        },
        description=(
            f"Delta table `{name}`: {table.file_format.value} files from `{table.source_path}` loaded exactly once "
            f"({table.loading_strategy.value}). A partition is a window of file arrival times; materialising it "
            "loads every file of the window that is not completed yet."
        ),
    )
    def _table_asset(
        context: dg.AssetExecutionContext,
        tracker: DeltaTrackerResource,
        lock: DeltaLockResource,
        spark: SparkSessionResource,
    ) -> LoadBatch:
        keys = list(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else None
        return prepare_batch(context, table, settings, keys, tracker, lock, spark)

    return _table_asset
