"""Shared pieces of the benchmarks: the Spark session, fixtures built without the loader, timers, memory.

Every benchmark compares the loader with a baseline measured in the same process, on the same data, in the
same run, and reports the ratio: the machine is small and noisy, so absolute seconds are only context.
"""

import os
import resource
import signal
import socket
import subprocess
import sys
import statistics
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from deltalake import DeltaTable, write_deltalake

from loader_assets.core.discovery import TIMESTAMP, fingerprint
from loader_assets.core.partitions import partition_keys_for
from loader_assets.core.states import FileStatus
from loader_assets.resources.spark import get_or_create_spark
from loader_assets.resources.tracker import TRACKER_SCHEMA, FileTracker
from loader_assets.settings import LoaderSettings, load_settings

# The session every benchmark uses (bench_scd2's: the driver is the whole engine in local mode). If a session
# is already active (a test's, or run_all's child process), it is reused as it is.
REPO_ROOT = Path(__file__).resolve().parents[1]
SPARK_MASTER = "local[*]"
SPARK_CONF = {"spark.driver.memory": "8g", "spark.ui.enabled": "false"}


def spark_session() -> Any:  # noqa: ANN401 - pyspark is imported lazily
    """The process's Spark session with Delta (created with the benchmarks' settings if none is active)."""
    return get_or_create_spark(SPARK_MASTER, "loader-assets-bench", SPARK_CONF)


def write_config(root: Path, table: dict[str, Any], **overrides: Any) -> LoaderSettings:  # noqa: ANN401
    """A loader config under ``root`` (lake/, checkpoints/, landing/) with one table, loaded and validated."""
    raw: dict[str, Any] = {
        "target_root": "lake",
        "checkpoint_path": "checkpoints",
        "spark": {"master": SPARK_MASTER, "conf": SPARK_CONF},
        "tables": [{"file_format": "parquet", "partitioning": {"start": "2024-01-01"}, **table}],
    }
    raw.update(overrides)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_settings(path)


def set_mtime(path: Path, moment: float) -> None:
    os.utime(path, (moment, moment))


def yesterday_noon() -> float:
    """A modification time in yesterday's day partition (so a whole fixture is one partition, one run)."""
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, 12, tzinfo=UTC).timestamp() - 86400


def data_table(rows: int, offset: int) -> pa.Table:
    """``rows`` rows of a small fact table (id, customer, amount, event_time), ids from ``offset``."""
    ids = pa.array(range(offset, offset + rows), pa.int64())
    return pa.table(
        {
            "id": ids,
            "customer": pc.binary_join_element_wise(
                "customer-", pc.cast(pc.bit_wise_and(ids, 1023), pa.string()), ""
            ),
            "amount": pc.divide(pc.cast(pc.bit_wise_and(ids, 65535), pa.float64()), 100.0),
            "event_time": pa.array([1_735_689_600_000_000] * rows, pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )


def write_data_files(
    directory: Path, files: int, rows: int, moment: float, prefix: str = "part", first_offset: int = 0
) -> list[Path]:
    """``files`` parquet files of ``rows`` rows each, all with modification time ``moment``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(files):
        path = directory / f"{prefix}-{n:05d}.parquet"
        pq.write_table(data_table(rows, first_offset + n * rows), path)
        set_mtime(path, moment)
        paths.append(path)
    return paths


def touch_files(directory: Path, count: int, per_dir: int, moment: float, prefix: str = "f") -> list[str]:
    """``count`` empty files in subdirectories of ``per_dir`` files (listing fixtures: never read)."""
    paths = []
    for n in range(count):
        sub = directory / f"d{n // per_dir:04d}"
        if n % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{prefix}{n:07d}.parquet"
        path.touch()
        os.utime(path, (moment, moment))
        paths.append(str(path))
    return paths


def tracker_rows(
    paths: list[str],
    table_name: str,
    status: FileStatus,
    modified: float,
    batch_ids: list[str] | None = None,
    batch_seqs: list[int] | None = None,
    row_count: int | None = None,
    size: int = 0,
) -> pa.Table:
    """Tracker rows for ``paths`` in one status, as the loader's transitions would have left them."""
    n = len(paths)
    now = datetime.now(UTC)
    mtime = pa.array([int(modified * 1_000_000)] * n, pa.int64()).cast(TIMESTAMP)
    sizes = pa.array([size] * n, pa.int64())
    done = status is FileStatus.COMPLETED
    return pa.table(
        {
            "file_path": pa.array(paths, pa.string()),
            "file_size": sizes,
            "file_modified_time": mtime,
            "table_name": pa.array([table_name] * n, pa.string()),
            "status": pa.array([status.value] * n, pa.string()),
            "processing_start_time": pa.array([now if done else None] * n, TIMESTAMP),
            "processing_end_time": pa.array([now if done else None] * n, TIMESTAMP),
            "error_message": pa.nulls(n, pa.string()),
            "retry_count": pa.array([0] * n, pa.int32()),
            "created_at": pa.array([now] * n, TIMESTAMP),
            "updated_at": pa.array([now] * n, TIMESTAMP),
            "batch_id": pa.array(batch_ids, pa.string()) if batch_ids else pa.nulls(n, pa.string()),
            "batch_seq": pa.array(batch_seqs, pa.int64()) if batch_seqs else pa.nulls(n, pa.int64()),
            "run_id": pa.array(["bench-fixture" if done else None] * n, pa.string()),
            "partition_key": partition_keys_for(mtime, "day", "2024-01-01"),
            "row_count": pa.array([row_count if done else None] * n, pa.int64()),
            "target_version": pa.array([0 if done else None] * n, pa.int64()),
            "fingerprint": fingerprint(sizes, mtime),
            "source_fingerprint": fingerprint(sizes, mtime),
            "file_version": pa.array([1] * n, pa.int32()),
            "content_hash": pa.nulls(n, pa.string()),
            "next_attempt_at": pa.nulls(n, TIMESTAMP),
            "retryable": pa.nulls(n, pa.bool_()),
            "quarantined_rows": pa.nulls(n, pa.int64()),
            "expectation_results": pa.nulls(n, pa.string()),
        },
        schema=TRACKER_SCHEMA,
    )


def write_tracker(tracker: FileTracker, parts: list[pa.Table], compact: bool = True) -> None:
    """Write fixture rows into a tracker directly with delta-rs, one commit per part (not through the
    transitions: building a million rows one batch at a time would be the benchmark itself). ``compact``
    then runs the compaction and checkpoint that the tracker's maintenance runs (a long-lived tracker's)."""
    from loader_assets.resources.tracker import COMPACT_TARGET_BYTES

    tracker.create(baseline_txn=0)
    for part in parts:
        write_deltalake(tracker.path, part, mode="append")
    if compact:
        table = DeltaTable(tracker.path)
        table.optimize.compact(target_size=COMPACT_TARGET_BYTES)
        DeltaTable(tracker.path).create_checkpoint()


CONNECT_READY = "Spark Connect server with Delta listening"  # what `loader-assets spark-connect-server` prints
CONNECT_CONF = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def connect_server(root: Path, port: int, timeout: float = 300) -> Iterator[float]:
    """A Spark Connect server with Delta (``loader-assets spark-connect-server``, its own process group, output
    in ``root/server.log``) listening on ``port`` for the ``with`` block; yields the seconds it took to start.
    Stopped with SIGTERM to its group on the way out, whatever happened."""
    server_root = root / "server"
    write_config(server_root, {"table_name": "unused", "source_path": "landing"},
                 spark={"master": "local[2]", "conf": CONNECT_CONF})
    log = root / "server.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "loader_assets", "spark-connect-server", "--config",
                                   str(server_root / "config.yaml"), "--port", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT)
    try:
        while CONNECT_READY not in log.read_text():
            assert server.poll() is None and time.perf_counter() - started < timeout, log.read_text()[-3000:]
            time.sleep(0.2)
        yield time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def median_seconds(function: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    return statistics.median(timed(function)[0] for _ in range(repeats))


def alternating_rounds(
    repeats: int,
    prepare: Callable[[int], Any],
    loader: Callable[[Any], Any],
    baseline: Callable[[Any], Any],
    phases: "Phases | None" = None,
) -> list[dict[str, Any]]:
    """``repeats`` rounds of one comparison, each on its own copy of the fixture (``prepare(round)``, untimed),
    the two sides taking turns going first (the baseline in round 0): on this noisy machine one round decides
    nothing, and whichever side runs second in a process runs warmer. Per round: the fixture, both sides'
    seconds, the loader's result, and the Dagster runs the loader's call started (``runs``, numbered as
    ``phases`` counts them, to report that round's phases)."""
    rounds = []
    for number in range(repeats):
        fixture = prepare(number)
        timings: dict[str, Any] = {}
        sides = ("baseline", "loader") if number % 2 == 0 else ("loader", "baseline")
        for side in sides:
            if side == "baseline":
                timings["baseline_seconds"], _ = timed(lambda: baseline(fixture))
            else:
                first_run = phases.runs + 1 if phases is not None else 0
                timings["loader_seconds"], timings["loader_result"] = timed(lambda: loader(fixture))
                timings["runs"] = range(first_run, phases.runs + 1) if phases is not None else range(0)
        rounds.append({"fixture": fixture, "first": sides[0], **timings})
    return rounds


def same_rows(spark: Any, ours: str, theirs: str, columns: list[str]) -> bool:  # noqa: ANN401
    """Whether two Delta tables hold the same multiset of rows over ``columns`` (compared in Spark, both ways)."""
    left = spark.read.format("delta").load(ours).select(*columns)
    right = spark.read.format("delta").load(theirs).select(*columns)
    return left.exceptAll(right).isEmpty() and right.exceptAll(left).isEmpty()


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose loader time is the median (the lower middle one for an even count): its phases are the
    ones reported."""
    ordered = sorted(rounds, key=lambda r: r["loader_seconds"])
    return ordered[(len(ordered) - 1) // 2]


def python_peak_rss_mb() -> int:
    """Peak resident memory of this Python process (the benchmark runs in its own process under run_all)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def jvm_peak_rss_mb(spark: Any) -> int | None:  # noqa: ANN401
    """Peak resident memory of the Spark driver JVM, from /proc (Linux); as bench_scd2 reports it."""
    from benchmarks.bench_scd2 import jvm_peak_rss_mb as peak

    return peak(spark)


class Phases:
    """Wall time per loader function, by wrapping functions where they are looked up (the loader is not
    changed). Nested phases overlap: each is the total time spent inside that function."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, float]] = []  # (Dagster run number, phase, seconds)
        self.runs = 0
        self._undo: list[Callable[[], None]] = []

    def wrap(
        self,
        owner: Any,  # noqa: ANN401
        attribute: str,
        label: str | None = None,
        starts_run: bool = False,
    ) -> None:
        """Time every call of ``owner.attribute``; ``starts_run`` marks the call that starts a Dagster run
        (the calls inside it, and after it, count towards that run in ``report(from_run=...)``)."""
        original = getattr(owner, attribute)
        name = label or attribute
        phases = self

        def timed_call(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            if starts_run:
                phases.runs += 1
            run = phases.runs
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases.records.append((run, name, time.perf_counter() - started))

        setattr(owner, attribute, timed_call)
        self._undo.append(lambda: setattr(owner, attribute, original))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def report(self, from_run: int = 0, runs: Collection[int] | None = None) -> dict[str, dict[str, float | int]]:
        """Seconds and calls per phase, longest first; ``from_run=N`` keeps the N-th Dagster run and later,
        ``runs`` only the runs it names (one timed round's)."""
        seconds: dict[str, float] = {}
        calls: dict[str, int] = {}
        for run, name, duration in self.records:
            if run >= from_run and (runs is None or run in runs):
                seconds[name] = seconds.get(name, 0.0) + duration
                calls[name] = calls.get(name, 0) + 1
        return {
            name: {"seconds": round(total, 3), "calls": calls[name]}
            for name, total in sorted(seconds.items(), key=lambda item: -item[1])
        }


@contextmanager
def loader_phases() -> Iterator[Phases]:
    """Time the steps of one load (see docs/ARCHITECTURE.md, "A batch")."""
    import dagster as dg

    from loader_assets import api, checks, load, operations
    from loader_assets.resources.lock import TableLock
    from loader_assets.writers import append, base, keyed

    phases = Phases()
    phases.wrap(dg.JobDefinition, "execute_in_process", "dagster run (whole)", starts_run=True)
    phases.wrap(api, "pending_work", "find pending work (api)")
    phases.wrap(api, "_outcome", "summary from tracker (api)")
    phases.wrap(TableLock, "acquire", "lock acquire")
    phases.wrap(TableLock, "release", "lock release")
    phases.wrap(load, "recover_interrupted", "recover interrupted")
    phases.wrap(load, "plan_batch", "plan: list + register + read tracker")
    phases.wrap(FileTracker, "register", "tracker register")
    phases.wrap(FileTracker, "claim", "tracker claim")
    phases.wrap(FileTracker, "complete", "tracker complete")
    phases.wrap(load, "next_batch_sequence", "next batch sequence")
    phases.wrap(load, "precheck_file", "precheck files (no Spark)")
    phases.wrap(load, "data_schema_of_target", "target schema (Spark)")
    phases.wrap(load, "read_batch", "read batch (Spark)")
    phases.wrap(append.AppendWriter, "write", "target commit (append)")
    phases.wrap(load, "plan_small_batch", "small-batch engine: read files (pyarrow)")
    phases.wrap(load, "commit_small_batch", "small-batch engine: data files + commit (delta-rs)")
    phases.wrap(load, "plan_small_keyed", "keyed small-batch engine: read, validate, thread (pyarrow)")
    phases.wrap(load, "commit_small_keyed", "keyed small-batch engine: change record + MERGE (delta-rs)")
    phases.wrap(checks, "scoped_report", "check: keys of the run against the change record (delta-rs)")
    phases.wrap(keyed.KeyedWriter, "prepare", "scd2/scd1 validate")
    phases.wrap(keyed.KeyedWriter, "write", "target commit (scd2/scd1: change record + merge)")
    phases.wrap(load, "batch_commit", "find batch commit (history)")
    phases.wrap(base, "batch_row_counts", "row counts per file (Spark)")
    phases.wrap(keyed.KeyedWriter, "row_counts", "row counts per file (change record)")
    phases.wrap(checks, "compare_target_with_tracker", "check: target matches tracker (log or Spark)")
    phases.wrap(checks, "compare_record_with_tracker", "check: change record matches tracker (delta-rs or Spark)")
    phases.wrap(checks, "keyed_report", "check: scd2/scd1 table matches its change record (Spark)")
    phases.wrap(operations, "compare_target_with_tracker", "validate: target vs tracker (Spark)")
    try:
        yield phases
    finally:
        phases.restore()


def result(
    bench_id: str,
    what: str,
    loader_seconds: float,
    baseline_seconds: float,
    target_ratio: float | None,
    target: str,
    met: bool,
    **details: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """The common shape of a benchmark's result (run_all renders it)."""
    return {
        "id": bench_id,
        "what": what,
        "loader_seconds": round(loader_seconds, 3),
        "baseline_seconds": round(baseline_seconds, 3),
        "ratio": round(loader_seconds / baseline_seconds, 3) if baseline_seconds else None,
        "target_ratio": target_ratio,
        "target": target,
        "met": met,
        **details,
    }


def bench_main(run: Callable[..., dict[str, Any]], doc: str) -> None:
    """The command line of one benchmark module: a flag per parameter of ``run`` (``--rows-per-file`` for
    ``rows_per_file``, typed by its default), plus ``--workdir`` and ``--out``; prints the JSON outcome and
    writes it to ``--out`` when given."""
    import argparse
    import inspect
    import json

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    names = []
    for name, parameter in inspect.signature(run).parameters.items():
        if name == "workdir" or parameter.default is inspect.Parameter.empty:
            continue
        names.append(name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(parameter.default), default=parameter.default)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    outcome = run(**{name: getattr(args, name) for name in names}, workdir=args.workdir)
    text = json.dumps(outcome, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
