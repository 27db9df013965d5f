"""P6: the file tracker at ``--rows`` rows against the same operations at ``--base-rows`` rows.

Measured for each size (the same code on two trackers that differ only in how many completed rows they hold):
- filtered status read:
  ``FileTracker.read(columns=[file_path, status, retry_count], statuses=[pending, failed])``
  (what a run's planning and the checks ask), median of ``--repeats``;
- a claim of ``--claim`` pending files: ``FileTracker.claim`` (one tracker commit), median of ``--repeats``
  claims, each of a different set of pending files.
Loader = the large tracker, baseline = the small one. Target: <= 2x, and < 200 ms (each operation).

Fixture rows are written with delta-rs (10 commits), then compacted and checkpointed as the tracker's own
maintenance does (8 MB target files, checkpoint). Also timed, to locate the cost: opening the table, a full read, and
a read with the status filter pushed into the scan (delta-rs QueryBuilder, DataFusion).

    python -m benchmarks.bench_p6_tracker --rows 1000000 --base-rows 10000
"""

import statistics
import tempfile
from pathlib import Path
from typing import Any

from deltalake import DeltaTable, QueryBuilder

from benchmarks import _common as common
from loader_assets.core.states import FileStatus
from loader_assets.resources.tracker import FileTracker

TARGET_RATIO = 2.0
TARGET_SECONDS = 0.2


def build(path: Path, rows: int, pending: int, moment: float, compact: bool = True) -> FileTracker:
    """A tracker of ``rows`` rows: ``pending`` pending, the others completed, in batches of 1,000 files.
    ``compact=False`` leaves the 11 files as written (a what-if layout: no compaction into one file)."""
    tracker = FileTracker(str(path), "events")
    completed = rows - pending
    parts = []
    step = max(1, -(-completed // 10))
    for start in range(0, completed, step):
        stop = min(completed, start + step)
        seqs = [1 + n // 1_000 for n in range(start, stop)]
        parts.append(
            common.tracker_rows(
                [f"/landing/events/d{n // 1_000:04d}/f{n:07d}.parquet" for n in range(start, stop)],
                "events",
                FileStatus.COMPLETED,
                moment,
                batch_ids=[f"{s:08d}-fixture" for s in seqs],
                batch_seqs=seqs,
                row_count=1_000,
                size=4_096,
            )
        )
    parts.append(
        common.tracker_rows(
            [f"/landing/events/new/p{n:07d}.parquet" for n in range(pending)],
            "events",
            FileStatus.PENDING,
            moment,
            size=4_096,
        )
    )
    common.write_tracker(tracker, parts, compact=compact)
    return tracker


def measure(tracker: FileTracker, claim: int, repeats: int) -> dict[str, Any]:
    """Times of the tracker operations on one tracker (it has ``claim * repeats`` pending rows)."""
    wanted = [FileStatus.PENDING, FileStatus.FAILED]
    in_list = ", ".join(f"'{s.value}'" for s in wanted)
    read_seconds = common.median_seconds(
        lambda: tracker.read(columns=["file_path", "status", "retry_count"], statuses=wanted), repeats
    )
    pending = tracker.read(columns=["file_path"], statuses=[FileStatus.PENDING])["file_path"].to_pylist()
    assert len(pending) >= claim * repeats, len(pending)
    claims = []
    max_seq = tracker.max_batch_seq()
    for n in range(repeats):
        paths = pending[n * claim : (n + 1) * claim]
        seconds, claimed = common.timed(
            lambda paths=paths, n=n: tracker.claim(paths, f"bench-{n}", max_seq + 1 + n, "bench-run")
        )
        assert claimed == claim, claimed
        claims.append(seconds)
    open_seconds = common.median_seconds(lambda: DeltaTable(tracker.path), repeats)
    full_read_seconds = common.median_seconds(lambda: DeltaTable(tracker.path).to_pyarrow_table(), repeats)
    pushed_seconds = common.median_seconds(
        lambda: (
            QueryBuilder()
            .register("t", DeltaTable(tracker.path))
            .execute(f"SELECT file_path, status, retry_count FROM t WHERE status IN ({in_list})")
            .read_all()
        ),
        repeats,
    )
    files = len(DeltaTable(tracker.path).file_uris())
    return {
        "rows": tracker.read(columns=["status"]).num_rows,
        "data_files": files,
        "filtered_read_seconds": round(read_seconds, 4),
        "claim_seconds": round(statistics.median(claims), 4),
        "claim_seconds_each": [round(s, 4) for s in claims],
        "open_table_seconds": round(open_seconds, 4),
        "full_read_seconds": round(full_read_seconds, 4),
        "read_with_pushed_down_filter_seconds": round(pushed_seconds, 4),
        "processing_after_claims": tracker.status_counts()[FileStatus.PROCESSING.value],
    }


def run(
    rows: int = 1_000_000,
    base_rows: int = 10_000,
    claim: int = 1_000,
    repeats: int = 3,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Tracker operations at ``rows`` rows against the same at ``base_rows`` rows."""
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p6-"))
    moment = common.yesterday_noon()
    pending = claim * repeats
    small = measure(build(root / "small", base_rows, pending, moment), claim, repeats)
    large = measure(build(root / "large", rows, pending, moment), claim, repeats)
    # What-if (not the figure): the same large tracker left as written, not compacted into one file.
    uncompacted = measure(
        build(root / "large-uncompacted", rows, pending, moment, compact=False), claim, repeats
    )
    for sizes in (small, large, uncompacted):
        assert sizes["processing_after_claims"] == pending, sizes
    loader_seconds = large["filtered_read_seconds"] + large["claim_seconds"]
    baseline_seconds = small["filtered_read_seconds"] + small["claim_seconds"]
    read_ratio = large["filtered_read_seconds"] / small["filtered_read_seconds"]
    claim_ratio = large["claim_seconds"] / small["claim_seconds"]
    met = (
        read_ratio <= TARGET_RATIO
        and claim_ratio <= TARGET_RATIO
        and large["filtered_read_seconds"] < TARGET_SECONDS
        and large["claim_seconds"] < TARGET_SECONDS
    )
    return common.result(
        "P6",
        f"tracker at {rows:,} rows: filtered read + {claim:,}-file claim",
        loader_seconds,
        baseline_seconds,
        TARGET_RATIO,
        "<= 2x; < 200 ms",
        met,
        read_ratio=round(read_ratio, 3),
        claim_ratio=round(claim_ratio, 3),
        large=large,
        small=small,
        what_if_large_not_compacted=uncompacted,
        baseline=f"the same operations at {base_rows:,} rows",
        repeats=repeats,
    )


def main() -> None:
    common.bench_main(run, __doc__)

if __name__ == "__main__":
    main()
