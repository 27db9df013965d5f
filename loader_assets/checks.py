"""Consistency checks per table, shown on the asset's Checks tab (docs/CONTRACT.md, "Consistency").

The checks read the tracker and the Delta table themselves instead of taking the asset as an input (which
would load every partition). They run after each materialisation of the table and alone, through the table's
``<table>_checks_job``.

- ``no_failed_files``: files that failed. WARN while retries remain, ERROR once any file exhausted them.
  Its ``files_not_completed`` table lists every file that is not completed (failed, processing, pending,
  skipped) with the reason and the exact command that resolves it: the per-file state on the asset's page.
- ``target_matches_tracker``: every completed file's row count equals its rows in the target, no rows
  come from a file that is not completed, and no file's rows carry two batch ids (a duplicate load). For an
  scd2 table the count is the file's change rows in the change record, and no change row may come from a file
  the tracker does not count as loaded. Its ``counted_by`` metadata says how the rows were counted: from the
  Delta log's statistics, from the data files the batches' commits added (``loader_assets.written_rows``),
  or by reading them in Spark.
- ``expectation_<name>`` (one per configured expectation): rows checked, passed and failed over the table's
  current files, from the counts the loads stored in the tracker, with sample failing rows. No Spark.
- ``freshness`` (tables with ``freshness``): the newest loaded file is at most ``max_lag_minutes`` old
  (WARN, ERROR past twice that) and no file waited longer than ``max_pending_minutes`` (ERROR). No Spark.
- ``scd2_invariants`` (scd2 tables): one current row per key, flag agrees with end date, intervals of a
  key neither overlap nor leave gaps.
- ``history_matches_changes`` (scd2 tables): the versions are exactly those the change record defines.
- After a load, the table checks look at what that run wrote (its files; the keys of its batches), so their
  cost follows the batch, not the table; run alone (the checks job, a run that loaded nothing) and in
  ``validate-consistency`` they check the whole table.
- Only the table checks (``target_matches_tracker``, the history checks) need Spark. A whole-table check
  records the Delta versions it verified (``verified_state``: tracker, target, change record); when it runs
  again and none of them moved since a passing whole-table evaluation, the result is that one's, reported
  without starting Spark (a materialisation that loaded nothing costs no JVM). A load's scoped pass carries
  the verified state forward when every change since it is the run's own (``loader_assets.verification``),
  so the first such materialisation after a load needs no JVM either.
"""


import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from loader_assets.cdc import absence_events, as_events, extracts_of, is_full
from loader_assets.changes import ChangeRecord, changes_location
from loader_assets.core.states import FileStatus
from loader_assets.fingerprint import fingerprint_columns, same, tracker_fingerprints
from loader_assets.planning import needs_operator
from loader_assets.reading import AUDIT_COLUMNS, BATCH_ID_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.resources.lock import (
    DeltaLockResource,
    holder_is_live,
    lock_stale_reason,
    run_ended_checker,
)
from loader_assets.resources.spark import SparkSessionResource
from loader_assets.scoped_history import record_rows_per_file, scoped_report, touched_keys
from loader_assets.resources.tracker import DeltaTrackerResource, FileTracker
from loader_assets.scd1 import compare_rows
from loader_assets.scd2 import (
    SCOPED_CHECK_MAX_KEYS,
    HistoryDifference,
    Scd2Violations,
    history_report,
    scd2_violations,
    version_columns,
)
from loader_assets.settings import Expectation, ExpectationAction, LoaderSettings, TableSettings
from loader_assets.target import rows_per_source_file, target_exists
from loader_assets.verification import (
    CHECKED_TRACKER_COLUMNS,
    VerifiedState,
    carried_metadata,
    carry_forward,
    current_state,
    unchanged_since,
)
from loader_assets.written_rows import verified_by_commits

SAMPLE = 20
SAMPLE_TABLE = 50  # rows of a files table in a check's metadata; a longer list says how many it left out


COUNTED_BY_SPARK = "spark (the rows read back)"
COUNTED_BY_LOG = "delta log statistics (one source file per data file)"
COUNTED_BY_COMMITS = "the data files the batches' commits added (their source-file column) and the delta log"


@dataclass
class TargetConsistency:
    """Result of comparing the tracker with the target table."""

    completed_files: int = 0
    target_files: int = 0
    count_mismatches: list[dict[str, Any]] = field(default_factory=list)
    untracked_files: list[str] = field(default_factory=list)
    duplicate_loads: list[dict[str, Any]] = field(default_factory=list)
    counted_by: str = COUNTED_BY_SPARK  # how the target's rows were counted (a check's ``counted_by`` metadata)

    @property
    def consistent(self) -> bool:
        return not (self.count_mismatches or self.untracked_files or self.duplicate_loads)


def compare_target_with_tracker(
    spark: Any,
    tracker: FileTracker,
    target_path: str,
    files: Sequence[str] | None = None,
) -> TargetConsistency:
    """Per-file row counts and batch ids of the target against the tracker. ``spark`` is a session, or a
    function returning one, called only when the Delta log cannot answer (so a check after a small batch starts
    no JVM).

    With ``files``, when the Delta log's statistics count them (one source file per data file), or the data
    files their batches' commits added prove them (``written_rows.verified_by_commits``, a packed append), no
    row is read with Spark: what a large append's check costs.

    With ``files``, only those files are compared, each with one aggregation per file (a load checks what it
    wrote: their counts, and that none of them is in the table twice); rows of other files are not looked at.

    Without ``files`` (the whole table) the comparison first goes per batch: for each ``_batch_id`` the
    target's rows are summarised as (rows, and the sums of two 32-bit hashes of ``_source_file``), and so are
    the completed files the tracker puts in that batch, each weighted by its row count
    (``_batch_fingerprints``). Equal summaries for every batch mean the target holds exactly the tracker's rows
    per (batch, file), so every count matches, no file has two batch ids and no rows are untracked. A
    different pair of multisets with equal summaries needs both hash sums to collide at once (about 1 in 2^64
    for unrelated hashes; a sum that would overflow is NULL, which counts as different). Batches that differ,
    and files waiting for a reload (their rows carry the batch that loaded them before, not the one the tracker
    names now), are then compared file by file, so what is reported is the same as a per-file comparison of the
    whole table.
    """
    from pyspark.sql import functions as F

    result = TargetConsistency()
    expected = files_with_rows(tracker)
    every_file = True  # the files named are every file the table should hold
    if files is not None:
        chosen = pc.is_in(expected["file_path"], pa.array(list(files), pa.string()))
        # ... unless the table held batches before this tracker began (reset-state, a lost tracker): then rows
        # of files the tracker has not reloaded yet are still there, rightly, and a reload run checks its own
        every_file = pc.all(chosen).as_py() is not False and not tracker.baseline_txn()
        expected = expected.filter(chosen)
    result.completed_files = expected.num_rows
    if not target_exists(target_path):
        result.counted_by = "no target table"
        result.count_mismatches = [
            {"file": row["file_path"], "tracker_rows": row["row_count"], "target_rows": 0}
            for row in expected.to_pylist()
            if (row["row_count"] or 0) > 0
        ][:SAMPLE]
        return result
    if files is not None:
        # The Delta log's statistics answer without reading a row when each data file that may hold the files'
        # rows holds rows of one file and one batch (target.rows_per_source_file): after a small batch.
        # A first load names every file: the whole table is compared file by file (which also finds rows of any
        # other file).
        logged = rows_per_source_file(target_path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN,
                                      None if every_file else files)
        result.counted_by = COUNTED_BY_LOG
        if logged is None:
            logged = verified_by_commits(target_path, expected, every_file)
            result.counted_by = COUNTED_BY_COMMITS
        if logged is not None:
            _compare_counts(result, logged, expected)
            return result
        result.counted_by = COUNTED_BY_SPARK
        spark = spark() if callable(spark) else spark
        frame = spark.read.format("delta").load(target_path)
        scoped = frame if every_file else frame.where(F.col(SOURCE_FILE_COLUMN).isin(list(files)))
        _compare_per_file(result, scoped, expected)
        return result
    spark = spark() if callable(spark) else spark
    frame = spark.read.format("delta").load(target_path)
    is_settled = pc.equal(expected["status"], FileStatus.COMPLETED.value)
    settled = expected.filter(is_settled)
    waiting = expected.filter(pc.invert(is_settled))["file_path"]
    with_rows = settled.filter(pc.greater(pc.fill_null(settled["row_count"], 0), 0))
    differing = _batch_fingerprints(frame, with_rows, waiting.to_pylist())
    if not differing and len(waiting) == 0:
        result.target_files = with_rows.num_rows
        return result
    # Drill down: every file with rows in a batch that differs, or named there by the tracker, or waiting.
    named_batches = [b for b in differing if b is not None]
    in_differing = F.col(BATCH_ID_COLUMN).isin(named_batches) if named_batches else F.lit(False)
    if None in differing:
        in_differing = in_differing | F.col(BATCH_ID_COLUMN).isNull()
    found = frame.where(in_differing).select(SOURCE_FILE_COLUMN).distinct().toArrow()[SOURCE_FILE_COLUMN]
    named = settled.filter(pc.is_in(settled["batch_id"], pa.array(named_batches, pa.string())))["file_path"]
    scope = sorted({*found.to_pylist(), *named.to_pylist(), *waiting.to_pylist()} - {None})
    has_null_file = found.null_count > 0
    scoped = F.col(SOURCE_FILE_COLUMN).isin(scope) | (F.col(SOURCE_FILE_COLUMN).isNull() if has_null_file
                                                     else F.lit(False))
    _compare_per_file(result, frame.where(scoped), expected.filter(pc.is_in(expected["file_path"],
                                                                           pa.array(scope, pa.string()))))
    outside = with_rows.filter(pc.invert(pc.is_in(with_rows["file_path"], pa.array(scope, pa.string()))))
    result.target_files += outside.num_rows
    return result


def files_with_rows(tracker: FileTracker) -> pa.Table:
    """Tracker rows of the files whose rows the table should hold: completed ones, and those loaded before and
    now waiting for a reload (changed in the source, reprocess, skip of a new version): until the reload
    commits, the old rows stay, with the row count recorded when they loaded."""
    rows = tracker.read(columns=CHECKED_TRACKER_COLUMNS)
    return rows.filter(pc.or_(pc.equal(rows["status"], FileStatus.COMPLETED.value),
                              pc.is_valid(rows["target_version"])))


def compare_record_with_tracker(
    spark: Any, tracker: FileTracker, record: ChangeRecord, files: Sequence[str] | None = None,
) -> TargetConsistency:
    """For an scd2 table: each file's row count in the tracker against the change rows the record holds of it
    (across all its batches: a file's rows are recorded once, however often it is replayed), and no change rows
    from a file the tracker does not count as loaded. With ``files``, only those files, read with delta-rs
    (``scoped_history.record_rows_per_file``). ``spark`` is a session, or a function returning one, called only
    for a Spark count (the whole record)."""
    from pyspark.sql import functions as F

    result = TargetConsistency(counted_by="spark (the change record's rows)")
    expected = files_with_rows(tracker)
    if files is not None:
        expected = expected.filter(pc.is_in(expected["file_path"], pa.array(list(files), pa.string())))
    result.completed_files = expected.num_rows
    counts = pa.table({"file_path": pa.array([], pa.string()), "rows": pa.array([], pa.int64())})
    read = record_rows_per_file(record, files) if files is not None else None
    if read is not None:  # a run's files: their change rows read with delta-rs
        result.counted_by = "delta-rs (the change record's rows of the run's files)"
        counts = pa.table({"file_path": pa.array(list(read), pa.string()),
                           "rows": pa.array(list(read.values()), pa.int64())})
    elif record.exists():
        spark = spark() if callable(spark) else spark
        frame = ChangeRecord.change_rows(record.committed(spark))
        if files is not None:
            frame = frame.where(F.col(SOURCE_FILE_COLUMN).isin(list(files)))
        counts = (frame.groupBy(F.col(SOURCE_FILE_COLUMN).alias("file_path"))
                  .agg(F.count(F.lit(1)).cast("long").alias("rows")).toArrow())
        counts = counts.cast(pa.schema([("file_path", pa.string()), ("rows", pa.int64())]))
    result.target_files = counts.num_rows
    result.untracked_files = counts.filter(pc.invert(pc.is_in(counts["file_path"], expected["file_path"])))[
        "file_path"].to_pylist()[:SAMPLE]
    joined = expected.select(["file_path", "row_count"]).join(counts, "file_path", join_type="left outer")
    mismatched = joined.filter(pc.not_equal(pc.fill_null(joined["row_count"], 0), pc.fill_null(joined["rows"], 0)))
    result.count_mismatches = [
        {"file": r["file_path"], "tracker_rows": r["row_count"], "target_rows": r["rows"] or 0}
        for r in mismatched.slice(0, SAMPLE).to_pylist()
    ]
    return result


def keyed_report(
    spark: Any, table: TableSettings, settings: LoaderSettings, batch_ids: Sequence[str] | None = None,  # noqa: ANN401
    touched_at_most: int | None = None, touched_exactly: int | None = None,
) -> tuple[Scd2Violations | None, HistoryDifference]:
    """An scd2 or scd1 table against what its change record defines (scd2: its versions, plus the history's own
    invariants; scd1: its rows), sharing one scope. With ``batch_ids``, only the keys those batches recorded
    change rows of, unless they are more than ``SCOPED_CHECK_MAX_KEYS`` (then the whole table, cheaper than the
    join at that size); full extracts are always checked whole (an extract deletes keys it does not name).
    ``touched_at_most``, a bound on those keys the caller already knows (the batches' change rows), saves
    counting them when it is below the threshold, and ``touched_exactly``, their number (``scoped_history.
    touched_keys``), saves counting them at all (a Spark job of about 0.4 s on benchmark P12's run); the
    threshold only weighs cost, so the scope is right either way."""
    from pyspark.sql import functions as F

    name = table.table_name
    record = ChangeRecord(changes_location(settings.target_root, name), settings.table_path(name), name)
    target = spark.read.format("delta").load(settings.table_path(name))
    if not record.exists():  # no record: every row of the table is unexpected
        violations = scd2_violations(spark, settings.table_path(name), table) if table.is_scd2 else None
        return violations, HistoryDifference(unexpected=int(target.count()),
                                             samples={"unexpected": ["(no change record)"]})
    changes = record.committed(spark)
    cached: list[Any] = []
    try:
        if batch_ids and not is_full(table):
            touched = (ChangeRecord.change_rows(changes).where(F.col(BATCH_ID_COLUMN).isin(list(batch_ids)))
                       .select(*table.primary_keys).distinct().cache())
            cached.append(touched)
            if touched_exactly is not None:
                narrow = touched_exactly <= SCOPED_CHECK_MAX_KEYS
            else:
                narrow = ((touched_at_most is not None and touched_at_most <= SCOPED_CHECK_MAX_KEYS)
                          or touched.count() <= SCOPED_CHECK_MAX_KEYS)
            if narrow:
                keys = F.broadcast(touched)
                target = target.join(keys, list(table.primary_keys), "left_semi").cache()
                changes = changes.join(keys, list(table.primary_keys), "left_semi")
                cached.append(target)
        exclude = (*AUDIT_COLUMNS, *(version_columns(table) if table.is_scd2 else ()))
        fields = [target.schema[c] for c in target.columns if c not in exclude]
        events = as_events(changes, table, fields)
        if is_full(table):
            events = events.unionByName(absence_events(events, extracts_of(record.committed(spark)), table))
        if table.is_scd2:
            return history_report(target, events, table)
        return None, compare_rows(target, events, table)
    finally:
        for frame in cached:
            frame.unpersist()


def batch_fingerprint_frame(frame: Any) -> Any:
    """The target side of the per-batch fingerprint (``loader_assets.fingerprint``): one row per ``_batch_id``
    (as ``batch``) with its ``rows``, ``h1`` and ``h2``."""
    from pyspark.sql import functions as F

    return frame.groupBy(F.col(BATCH_ID_COLUMN).alias("batch")).agg(*fingerprint_columns())


def _batch_fingerprints(frame: Any, tracked: pa.Table, excluded: list[str]) -> list[str | None]:
    """Batch ids whose target rows differ from ``tracked`` (the tracker's completed files that have rows) in
    that batch, compared by their fingerprints (``loader_assets.fingerprint``). The target side is one Spark
    aggregation (``batch_fingerprint_frame``) that returns a row per batch; the tracker side is computed on the
    driver. Rows of ``excluded`` files (waiting for a reload) are left out of the target side."""
    from pyspark.sql import functions as F

    target = frame.where(~F.col(SOURCE_FILE_COLUMN).isin(excluded)) if excluded else frame
    with ThreadPoolExecutor(max_workers=1) as pool:  # the driver hashes the tracker while Spark scans
        spark_side = pool.submit(batch_fingerprint_frame(target).toArrow)
        expected = tracker_fingerprints(tracked)
        sums = spark_side.result()
    found = {row["batch"]: (row["rows"], row["h1"], row["h2"]) for row in sums.to_pylist()}
    # a batch on one side only, or a sum that overflowed (NULL), differs
    return sorted((b for b in {*found, *expected} if not same(found.get(b), expected.get(b))),
                  key=lambda b: (b is None, b or ""))


def _compare_per_file(result: TargetConsistency, frame: Any, expected: pa.Table) -> None:
    """Per-file row counts and batch ids of ``frame`` (aggregated in Spark) against ``expected`` rows."""
    from pyspark.sql import functions as F

    # Batch ids are compared as 64-bit hashes: min != max says "more than one batch" exactly (up to a hash
    # collision) and keeps the aggregation on fixed-width values, which Spark hash-aggregates; min/max of the
    # strings themselves fall back to a sort-based aggregation, 3-4x slower (benchmark P1). The names of the
    # batches are looked up afterwards for the few files that have two.
    batch_hash = F.xxhash64(F.col(BATCH_ID_COLUMN))
    target = (
        frame.groupBy(SOURCE_FILE_COLUMN)
        .agg(F.count(F.lit(1)).cast("long").alias("rows"), F.min(batch_hash).alias("first_batch"),
             F.max(batch_hash).alias("last_batch"))
        .withColumnRenamed(SOURCE_FILE_COLUMN, "file_path")
        .toArrow()  # one Arrow batch per file, not a Python object per row
    )
    target = target.cast(pa.schema([("file_path", pa.string()), ("rows", pa.int64()),
                                    ("first_batch", pa.int64()), ("last_batch", pa.int64())]))
    twice = target.filter(pc.not_equal(target["first_batch"], target["last_batch"]))["file_path"]
    if len(twice):
        sample = twice.slice(0, SAMPLE).to_pylist()
        named = (frame.where(F.col(SOURCE_FILE_COLUMN).isin(sample)).groupBy(SOURCE_FILE_COLUMN)
                 .agg(F.min(BATCH_ID_COLUMN).alias("first_batch"), F.max(BATCH_ID_COLUMN).alias("last_batch"))
                 .orderBy(SOURCE_FILE_COLUMN).collect())
        result.duplicate_loads = [{"file_path": r[SOURCE_FILE_COLUMN], "first_batch": r["first_batch"],
                                   "last_batch": r["last_batch"]} for r in named]
    _compare_counts(result, target.select(["file_path", "rows"]), expected)


def _compare_counts(result: TargetConsistency, target: pa.Table, expected: pa.Table) -> None:
    """Rows per file of the target (``file_path``, ``rows``: files with rows) against the tracker's ``expected``
    rows: files the tracker does not have, and count mismatches."""
    result.target_files = target.num_rows
    completed = expected.select(["file_path", "row_count"])
    result.untracked_files = (
        target.filter(pc.invert(pc.is_in(target["file_path"], completed["file_path"])))["file_path"]
        .to_pylist()[:SAMPLE]
    )
    joined = completed.join(target, "file_path", join_type="left outer")
    mismatched = joined.filter(
        pc.not_equal(pc.fill_null(joined["row_count"], 0), pc.fill_null(joined["rows"], 0))
    )
    result.count_mismatches = [
        {"file": r["file_path"], "tracker_rows": r["row_count"], "target_rows": r["rows"] or 0}
        for r in mismatched.slice(0, SAMPLE).to_pylist()
    ]


def exhausted_failures(failed: pa.Table, retry_attempts: int) -> pa.Table:
    """Failed rows no run will retry: retries used up, or marked not retryable (they need an operator)."""
    return failed.filter(needs_operator(failed, retry_attempts))


CONFIG_PLACEHOLDER = "$LOADER_ASSETS_CONFIG"  # the config the Dagster deployment loads (definitions.CONFIG_ENV)
NOT_COMPLETED = [FileStatus.PENDING, FileStatus.PROCESSING, FileStatus.FAILED, FileStatus.SKIPPED]
NOT_COMPLETED_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("file", "string"), dg.TableColumn("status", "string"), dg.TableColumn("partition", "string"),
    dg.TableColumn("reason", "string"), dg.TableColumn("resolve_with", "string"),
])


def not_completed_rows(rows: pa.Table, table_name: str, retry_attempts: int) -> list[dict[str, Any]]:
    """Each file that is not completed: its state, why, and the exact command that resolves it; failed files
    first (those waiting for an operator first of all), then processing, pending, skipped."""
    cli = f"loader-assets {{}} --config {CONFIG_PLACEHOLDER} --table {table_name}"
    out = []
    ranks = []
    waits = needs_operator(rows, retry_attempts).to_pylist() if rows.num_rows else []
    for row, exhausted in zip(rows.to_pylist(), waits, strict=True):
        path, status = row["file_path"], row["status"]
        one = f"{cli} --file '{path}'"
        ranks.append(({FileStatus.FAILED.value: 0, FileStatus.PROCESSING.value: 1,
                       FileStatus.PENDING.value: 2}.get(status, 3), not exhausted, path))
        if status == FileStatus.FAILED.value:
            reason = row["error_message"] or "failed"
            resolve = (f"{one.format('retry')}   (or {one.format('skip')} --reason '...')" if exhausted
                       else f"retried by the next run after its backoff; now: {one.format('retry')}")
            reason = reason if exhausted else f"{reason} (attempt {row['retry_count'] or 0} of {retry_attempts})"
        elif status == FileStatus.PENDING.value:
            reason, resolve = "waiting for the next run", cli.format("run")
        elif status == FileStatus.PROCESSING.value:
            reason = f"claimed by batch {row['batch_id']}"
            resolve = (f"finishes with its run; if that run is gone: {cli.format('run')} (recovers it) or "
                       f"loader-assets fix-inconsistencies --config {CONFIG_PLACEHOLDER}")
        else:
            reason, resolve = row["error_message"] or "skipped", f"{one.format('reprocess')} (to load it after all)"
        out.append({"file": path, "status": status, "partition": row["partition_key"], "reason": reason,
                    "resolve_with": resolve})
    return [entry for _, entry in sorted(zip(ranks, out, strict=True), key=lambda pair: pair[0])]


def failed_files_result(tracker: FileTracker, retry_attempts: int) -> dg.AssetCheckResult:
    rows = tracker.read(columns=["file_path", "status", "partition_key", "error_message", "retry_count",
                                 "retryable", "batch_id"], statuses=NOT_COMPLETED)
    failed = rows.filter(pc.equal(rows["status"], FileStatus.FAILED.value))
    exhausted = exhausted_failures(failed, retry_attempts)
    sample = [
        {"file": r["file_path"], "error": r["error_message"], "retry_count": r["retry_count"]}
        for r in failed.slice(0, SAMPLE).to_pylist()
    ]
    listed = not_completed_rows(rows, tracker.table_name, retry_attempts)
    severity = dg.AssetCheckSeverity.ERROR if exhausted.num_rows else dg.AssetCheckSeverity.WARN
    metadata: dict[str, Any] = {
        "failed_files": failed.num_rows,
        "retries_exhausted": exhausted.num_rows,
        "sample": dg.MetadataValue.json(sample),
        "files_not_completed": dg.MetadataValue.table(
            records=[dg.TableRecord(r) for r in listed[:SAMPLE_TABLE]], schema=NOT_COMPLETED_SCHEMA),
    }
    if len(listed) > SAMPLE_TABLE:
        metadata["files_not_completed_shown"] = f"{SAMPLE_TABLE} of {len(listed)}"
    return dg.AssetCheckResult(
        passed=failed.num_rows == 0,
        severity=severity,
        description=(
            "no failed files" if failed.num_rows == 0
            else f"{failed.num_rows} failed files, {exhausted.num_rows} waiting for an operator (no retries left "
            "or not retryable: `loader-assets retry`, `reprocess` or `skip`)"
        ),
        metadata=metadata,
    )


def failed_files_evaluation(tracker: FileTracker, retry_attempts: int,
                            instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
    """``no_failed_files`` as an evaluation reported by a run whose files failed: that run fails its asset step,
    so its own check step is skipped, and this is the result the check would have given (``io_managers``). It
    names the asset's latest materialization as its target, as a check step's evaluation does, so the UI shows
    it as the check's result for that materialization."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    asset_key = dg.AssetKey(tracker.table_name)
    result = failed_files_result(tracker, retry_attempts)
    latest = instance.fetch_materializations(asset_key, limit=1).records
    target = (AssetCheckEvaluationTargetMaterializationData(
        storage_id=latest[0].storage_id, run_id=latest[0].run_id, timestamp=latest[0].timestamp) if latest else None)
    return dg.AssetCheckEvaluation(
        asset_key=asset_key, check_name="no_failed_files", passed=bool(result.passed), severity=result.severity,
        description=result.description, metadata=result.metadata or {}, target_materialization_data=target)


def freshness_result(table: TableSettings, tracker: FileTracker, retry_attempts: int,
                     now: datetime | None = None) -> dg.AssetCheckResult:
    """How old the newest loaded file is (against ``max_lag_minutes``), and how long the oldest file that is
    still work has waited (against ``max_pending_minutes``). From the listing and the tracker; no Spark."""
    from loader_assets.core.discovery import list_source_files
    from loader_assets.planning import WORK_COLUMNS, work_files

    assert table.freshness is not None
    now = now or datetime.now(UTC)
    limits = table.freshness
    completed = tracker.read(columns=["file_modified_time"], statuses=[FileStatus.COMPLETED])
    newest = pc.max(completed["file_modified_time"]).as_py() if completed.num_rows else None
    work = work_files(list_source_files(table.source_path), tracker.read(columns=WORK_COLUMNS), table,
                      retry_attempts, now)
    oldest = pc.min(work["file_modified_time"]).as_py() if work.num_rows else None
    lag = (now - newest).total_seconds() / 60 if newest else None
    waited = (now - oldest).total_seconds() / 60 if oldest else 0.0
    problems, severity = [], dg.AssetCheckSeverity.WARN
    if limits.max_pending_minutes is not None and waited > limits.max_pending_minutes:
        problems.append(f"a file has waited {waited:.0f} min to be loaded (limit {limits.max_pending_minutes:g})")
        severity = dg.AssetCheckSeverity.ERROR
    if limits.max_lag_minutes is not None and (lag is None or lag > limits.max_lag_minutes):
        problems.append("no file loaded yet" if lag is None else
                        f"the newest loaded file is {lag:.0f} min old (limit {limits.max_lag_minutes:g})")
        if lag is not None and lag > 2 * limits.max_lag_minutes:
            severity = dg.AssetCheckSeverity.ERROR
    metadata: dict[str, Any] = {"files_waiting": work.num_rows, "oldest_waiting_minutes": round(waited, 1)}
    if lag is not None:
        metadata["newest_loaded_minutes"] = round(lag, 1)
        metadata["newest_loaded_file_time"] = newest.isoformat()
    return dg.AssetCheckResult(
        passed=not problems, severity=severity, metadata=metadata,
        description="; ".join(problems) or (
            f"newest loaded file {lag:.0f} min old, " if lag is not None else "") + (
            f"{work.num_rows} files waiting, the oldest {waited:.0f} min" if work.num_rows else "no file waiting"),
    )


def expectation_result(tracker: FileTracker, rule: Expectation) -> dg.AssetCheckResult:
    """One expectation over the table's current files (completed, and failed ones it may have failed): rows
    checked, passed and failed, the files with failures and sample failing rows. From the tracker; no Spark."""
    rows = tracker.read(columns=["file_path", "status", "expectation_results"],
                        statuses=[FileStatus.COMPLETED, FileStatus.FAILED])
    checked = failed = files = 0
    samples: list[dict[str, Any]] = []
    for row in rows.to_pylist():
        if not row["expectation_results"]:
            continue
        results = json.loads(row["expectation_results"])
        checked += int(results.get("rows") or 0)
        found = (results.get("failed") or {}).get(rule.name)
        if not found:
            continue
        failed += int(found["rows"])
        files += 1
        if len(samples) < SAMPLE:
            samples.append({"file": row["file_path"], "status": row["status"], "failed_rows": found["rows"],
                            "sample": found.get("sample")})
    what = {ExpectationAction.WARN: "loaded anyway", ExpectationAction.DROP: "left out",
            ExpectationAction.QUARANTINE: "in the quarantine table",
            ExpectationAction.FAIL_FILE: "their files failed"}[rule.action]
    return dg.AssetCheckResult(
        passed=failed == 0,
        severity=dg.AssetCheckSeverity.ERROR if rule.action is ExpectationAction.FAIL_FILE
        else dg.AssetCheckSeverity.WARN,
        description=(f"{failed} of {checked} rows fail `{rule.condition}` ({what}), in {files} files"
                     if failed else f"all {checked} rows meet `{rule.condition}`"),
        metadata={"rows_checked": checked, "rows_passed": checked - failed, "rows_failed": failed,
                  "files_with_failures": files, "action": rule.action.value, "condition": rule.condition,
                  "samples": dg.MetadataValue.json(samples)},
    )


def history_result(difference: HistoryDifference, scope: str, check_name: str,
                   extra: dict[str, Any] | None = None) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=difference.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("every version is the one the change record defines" if difference.ok else
                     f"{difference.missing} versions the change record defines are missing, "
                     f"{difference.unexpected} versions are not defined by it"),
        metadata={"scope": scope, "missing_versions": difference.missing,
                  "unexpected_versions": difference.unexpected, "compared": difference.compared,
                  "sample_keys": dg.MetadataValue.json(difference.samples), **(extra or {})},
    )


def target_consistency_result(consistency: TargetConsistency, scope: str = "whole table",
                              extra: dict[str, Any] | None = None) -> dg.AssetCheckResult:
    problems = []
    if consistency.count_mismatches:
        problems.append(f"{len(consistency.count_mismatches)}+ files whose row counts differ from the tracker")
    if consistency.untracked_files:
        problems.append(f"{len(consistency.untracked_files)}+ files with rows but not completed in the tracker")
    if consistency.duplicate_loads:
        problems.append(f"{len(consistency.duplicate_loads)}+ files loaded more than once")
    return dg.AssetCheckResult(
        passed=consistency.consistent,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "every completed file's rows are in the table exactly once",
        metadata={
            "scope": scope,
            "completed_files": consistency.completed_files,
            "files_in_target": consistency.target_files,
            "count_mismatches": dg.MetadataValue.json(consistency.count_mismatches),
            "untracked_files": dg.MetadataValue.json(consistency.untracked_files),
            "duplicate_loads": dg.MetadataValue.json(consistency.duplicate_loads),
            "counted_by": consistency.counted_by,
            **(extra or {}),
        },
    )


def files_of_run(tracker: FileTracker, run_id: str) -> list[str]:
    """Files a run claimed (its load's files). Empty for a run that loaded nothing, such as the checks job."""
    rows = tracker.read(columns=["file_path", "run_id"])
    return rows.filter(pc.equal(rows["run_id"], run_id))["file_path"].to_pylist()


def batches_of_run(tracker: FileTracker, run_id: str) -> list[str]:
    """Batch ids of the files a run completed."""
    return completed_by_run(tracker, run_id)[0]


def completed_by_run(tracker: FileTracker, run_id: str) -> tuple[list[str], int]:
    """Batch ids of the files a run completed, and those files' row counts summed (for an scd2 or scd1 table,
    change rows: at least as many as the keys the run's batches touched)."""
    rows = tracker.read(columns=["batch_id", "run_id", "status", "row_count"], statuses=[FileStatus.COMPLETED])
    mine = rows.filter(pc.equal(rows["run_id"], run_id))
    return (sorted({b for b in mine["batch_id"].to_pylist() if b}),
            int(pc.sum(pc.fill_null(mine["row_count"], 0)).as_py() or 0))


def state_metadata(context: dg.AssetCheckExecutionContext, asset: str, check_name: str, before: VerifiedState,
                   passed: bool, tracker: FileTracker, target_path: str, record: ChangeRecord | None,
                   batches: Sequence[str] | None, files: Sequence[str] | None = None) -> dict[str, Any]:
    """What an evaluation records about the whole table (``verification``): a whole-table one (``batches`` None)
    its ``verified_state``; a scoped pass the state it carries the last verified one forward to, or why not.
    Nothing when the versions moved while the check read them (another run committed meanwhile)."""
    after = current_state(tracker, target_path, record)
    if after != before:
        return {"whole_table": f"not recorded: the tables moved from {before} to {after} during the check"}
    if batches is None:
        return {"verified_state": str(before)}
    if not passed:
        return {}
    base_run, reason = carry_forward(context.instance, asset, check_name, before, tracker, target_path, record,
                                     set(batches), set(files) if files is not None else None)
    return carried_metadata(before, base_run) if base_run is not None else {
        "whole_table": f"not carried forward: {reason}"}


def unchanged_result(check_name: str, state: str, run_id: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=check_name, passed=True, severity=dg.AssetCheckSeverity.ERROR,
        description=f"unchanged since the whole-table check of run {run_id[:8]} passed ({state}); not re-read",
        metadata={"scope": "whole table (unchanged)", "verified_state": state, "verified_by_run": run_id})


def scope_label(files: list[str]) -> str:
    return f"the {len(files)} files this run loaded" if files else "whole table"


def build_table_checks(table: TableSettings, settings: LoaderSettings) -> list[dg.AssetChecksDefinition]:
    name = table.table_name
    target_path = settings.table_path(name)
    record = (ChangeRecord(changes_location(settings.target_root, name), target_path, name) if table.keeps_changes
              else None)

    @dg.asset_check(
        asset=name,
        name="no_failed_files",
        description="Files of this table that failed to load (WARN while retries remain, ERROR after).",
    )
    def _no_failed_files(tracker: DeltaTrackerResource) -> dg.AssetCheckResult:
        return failed_files_result(tracker.for_table(name), settings.retry_attempts)

    @dg.asset_check(
        asset=name,
        name="target_matches_tracker",
        description=(
            "Every completed file's row count equals its rows in the table (for scd2: its change rows in the change "
            "record); no rows from files that are not completed; no file loaded twice."
        ),
    )
    def _target_matches_tracker(
        context: dg.AssetCheckExecutionContext, tracker: DeltaTrackerResource, spark: SparkSessionResource
    ) -> dg.AssetCheckResult:
        table_tracker = tracker.for_table(name)
        if not target_exists(target_path) and table_tracker.status_counts()[FileStatus.COMPLETED.value] == 0:
            return dg.AssetCheckResult(passed=True, description="nothing loaded yet", metadata={"completed_files": 0})
        scope = files_of_run(table_tracker, context.run.run_id)
        state = current_state(table_tracker, target_path, record)
        check_name = "target_matches_tracker"
        if not scope and (run_id := unchanged_since(context.instance, name, check_name, state)):
            return unchanged_result(check_name, str(state), run_id)
        if record is not None:
            consistency = compare_record_with_tracker(lambda: spark.session, table_tracker, record, scope or None)
        else:
            consistency = compare_target_with_tracker(lambda: spark.session, table_tracker, target_path,
                                                      scope or None)
        recorded = state_metadata(context, name, check_name, state, consistency.consistent, table_tracker,
                                  target_path, record, batches_of_run(table_tracker, context.run.run_id) if scope
                                  else None, scope)
        return target_consistency_result(consistency, scope_label(scope), recorded)

    @dg.asset_check(
        asset=name,
        name="no_orphaned_processing",
        description="Files left 'processing' by a run that is gone (resolved by the next run or fix-inconsistencies).",
    )
    def _no_orphaned_processing(
        context: dg.AssetCheckExecutionContext, tracker: DeltaTrackerResource, lock: DeltaLockResource
    ) -> dg.AssetCheckResult:
        live = holder_is_live(lock.for_table(name).read(), run_ended_checker(context.instance))
        processing = tracker.for_table(name).read(columns=["file_path", "batch_id"],
                                                  statuses=[FileStatus.PROCESSING])
        orphans = processing if not live else processing.slice(0, 0)
        return dg.AssetCheckResult(
            passed=orphans.num_rows == 0,
            severity=dg.AssetCheckSeverity.WARN,
            description=(f"{orphans.num_rows} orphaned processing records; run `loader-assets fix-inconsistencies`"
                         if orphans.num_rows else
                         ("no orphaned processing records" if not live else
                          f"{processing.num_rows} files are being loaded by a live run")),
            metadata={"orphaned": orphans.num_rows,
                      "sample": dg.MetadataValue.json(orphans.slice(0, SAMPLE).to_pylist())},
        )

    @dg.asset_check(
        asset=name,
        name="lock_not_stale",
        description="The table's lock is free or held by a live holder (not expired, process alive, run not ended).",
    )
    def _lock_not_stale(context: dg.AssetCheckExecutionContext, lock: DeltaLockResource) -> dg.AssetCheckResult:
        state = lock.for_table(name).read()
        reason = lock_stale_reason(state, run_ended_checker(context.instance))
        held = state is not None and state.held
        return dg.AssetCheckResult(
            passed=reason is None,
            severity=dg.AssetCheckSeverity.WARN,
            description=(f"stale lock: {reason}; the next run takes it over, or `loader-assets force-unlock`"
                         if reason else ("lock held by a live holder" if held else "lock free")),
            metadata={"lock": dg.MetadataValue.json(state.to_json() if held and state else {})},
        )

    checks = [_no_failed_files, _target_matches_tracker, _no_orphaned_processing, _lock_not_stale]
    for rule in table.expectations:
        def expectation_check(rule: Expectation = rule) -> dg.AssetChecksDefinition:
            @dg.asset_check(asset=name, name=f"expectation_{rule.name}", description=(
                f"Rows meeting `{rule.condition}` (action {rule.action.value}): passed and failed counts over "
                "the table's current files, with sample failing rows."))
            def _expectation(tracker: DeltaTrackerResource) -> dg.AssetCheckResult:
                return expectation_result(tracker.for_table(name), rule)

            return _expectation

        checks.append(expectation_check())
    if table.freshness is not None:
        @dg.asset_check(
            asset=name,
            name="freshness",
            description=("The newest loaded file is at most max_lag_minutes old (WARN; ERROR past twice that) and no "
                         "file has waited longer than max_pending_minutes to be loaded (ERROR)."),
        )
        def _freshness(tracker: DeltaTrackerResource) -> dg.AssetCheckResult:
            return freshness_result(table, tracker.for_table(name), settings.retry_attempts)

        checks.append(_freshness)
    if table.keeps_changes:
        matches = "history_matches_changes" if table.is_scd2 else "rows_match_changes"
        specs = [dg.AssetCheckSpec(matches, asset=name, description=(
            "Every version is the one the change record defines: per key, the runs of equal tracked values over "
            "every change row applied, in sequence order, ended by deletes" if table.is_scd2 else
            "Every row is the one the change record defines: per key, its latest change, unless that is a delete"))]
        if table.is_scd2:
            specs.insert(0, dg.AssetCheckSpec("scd2_invariants", asset=name, description=(
                "At most one current row per key (exactly one unless keys can be deleted); the current flag is set "
                "exactly when the end date is NULL; a key's versions never overlap and leave no gaps but deletes.")))

        @dg.multi_asset_check(name=f"{name}_history_checks", specs=specs)
        def _history_checks(
            context: dg.AssetCheckExecutionContext, tracker: DeltaTrackerResource, spark: SparkSessionResource
        ) -> Iterator[dg.AssetCheckResult]:
            if not target_exists(target_path):
                for spec in specs:
                    yield dg.AssetCheckResult(check_name=spec.name, passed=True, description="nothing loaded yet")
                return
            table_tracker = tracker.for_table(name)
            batches, change_rows = completed_by_run(table_tracker, context.run.run_id)
            scope = "keys written by this run" if batches and not is_full(table) else "whole table"
            state = current_state(table_tracker, target_path, record)
            reused = {spec.name: unchanged_since(context.instance, name, spec.name, state) for spec in specs}
            if not batches and all(reused.values()):
                for spec in specs:
                    yield unchanged_result(spec.name, str(state), str(reused[spec.name]))
                return
            # a run's few keys are read with delta-rs (scoped_history.py); otherwise Spark checks, told how many
            # keys the run touched (read with delta-rs too) so that it need not count them
            touched = touched_keys(table, settings, batches) if batches and not is_full(table) else None
            scoped = scoped_report(table, settings, batches, touched) if batches else None
            violations, difference = scoped or keyed_report(
                spark.session, table, settings, batches or None, change_rows,
                touched_exactly=touched.keys.num_rows if touched is not None else None)

            def recorded(check_name: str, passed: bool) -> dict[str, Any]:
                return state_metadata(context, name, check_name, state, passed, table_tracker, target_path, record,
                                      batches if scope != "whole table" else None)

            if violations is not None:
                yield dg.AssetCheckResult(
                    check_name="scd2_invariants",
                    passed=violations.ok,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description="history is consistent" if violations.ok else "SCD2 invariants violated",
                    metadata={
                        "scope": scope,
                        "keys_without_one_current": violations.keys_without_one_current,
                        "flag_end_disagreements": violations.flag_end_disagreements,
                        "interval_breaks": violations.interval_breaks,
                        "sample_keys": dg.MetadataValue.json(violations.samples),
                        **recorded("scd2_invariants", violations.ok),
                    },
                )
            yield history_result(difference, scope, matches, recorded(matches, difference.ok))

        checks.append(_history_checks)
    return checks
