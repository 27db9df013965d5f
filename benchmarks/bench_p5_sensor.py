"""P5: one sensor tick over a landing directory of ``--files`` files, ``--new-fraction`` of them not tracked yet.

Measured (median of ``--repeats`` ticks, the directory listing warm in the page cache for both sides):
- loader: the table's real sensor (``<table>_files_sensor`` from ``build_definitions``) evaluated with
  ``dagster.build_sensor_context`` on a real (sqlite) ``DagsterInstance``; its ``pending_work`` (list,
  read the tracker, diff, digest) is also timed alone;
- baseline: listing the directory alone, ``os.scandir`` recursively (names, sizes, mtimes).
Target: <= 3x the listing, and < 5 s.

The files are empty (only listed) in directories of 1,000; the tracker holds the others as completed, written
with delta-rs in one commit and compacted, as a long-lived tracker would be.

    python -m benchmarks.bench_p5_sensor --files 100000 --new-fraction 0.01
"""

import os
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks import _common as common
from loader_assets.core.discovery import list_source_files
from loader_assets.core.states import FileStatus
from loader_assets.definitions import build_definitions
from loader_assets.planning import pending_work
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.tracker import DeltaTrackerResource

TARGET_RATIO = 3.0
TARGET_SECONDS = 5.0


def scandir_listing(root: str) -> int:
    """Every file below ``root`` with its size and mtime (os.scandir, recursive); returns the count."""
    count = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    stat = entry.stat(follow_symlinks=False)
                    count += 1 if stat.st_size >= 0 and stat.st_mtime else 0
    return count


def run(
    files: int = 100_000, new_fraction: float = 0.01, repeats: int = 5, workdir: Path | None = None
) -> dict[str, Any]:
    """Time the sensor's tick against a plain recursive listing of the same directory."""
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p5-"))
    moment = common.yesterday_noon()
    settings = common.write_config(root, {"table_name": "events", "source_path": "landing/events"})
    source = root / "landing" / "events"
    paths = common.touch_files(source, files, 1_000, moment)
    new = max(1, int(files * new_fraction))
    known = sorted(paths)[: files - new]  # the tracker knows all but ``new`` files
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    common.write_tracker(
        tracker,
        [
            common.tracker_rows(
                known,
                "events",
                FileStatus.COMPLETED,
                moment,
                batch_ids=["00000001-fixture"] * len(known),
                batch_seqs=[1] * len(known),
                row_count=0,
            )
        ],
    )

    table = settings.table("events")
    listed = scandir_listing(str(source))
    assert listed == files
    baseline_seconds = common.median_seconds(lambda: scandir_listing(str(source)), repeats)
    pyarrow_listing_seconds = common.median_seconds(lambda: list_source_files(str(source)), repeats)
    tracker_read_seconds = common.median_seconds(
        lambda: tracker.read(
            columns=["file_path", "status", "retry_count", "partition_key", "fingerprint", "batch_id"]
        ),
        repeats,
    )
    work = pending_work(table, tracker, settings.retry_attempts)
    assert work.count("new") == new and work.discovered == files, work
    find_seconds = common.median_seconds(
        lambda: pending_work(table, tracker, settings.retry_attempts), repeats
    )

    sensor = build_definitions(settings).get_sensor_def("events_files_sensor")
    resources = {
        "tracker": DeltaTrackerResource(checkpoint_path=settings.checkpoint_path),
        "lock": DeltaLockResource(checkpoint_path=settings.checkpoint_path),
    }
    home = root / "dagster_home"
    home.mkdir(exist_ok=True)
    with dg.DagsterInstance.local_temp(str(home)) as instance:

        def tick() -> Any:  # noqa: ANN401
            return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))

        first = tick()
        sensor_seconds = common.median_seconds(tick, repeats)
    run_keys = [request.run_key for request in first.run_requests]
    assert len(run_keys) == 1 and run_keys[0].startswith("events:"), run_keys

    ratio = sensor_seconds / baseline_seconds
    return common.result(
        "P5",
        f"sensor tick, {files:,} files, {new:,} new",
        sensor_seconds,
        baseline_seconds,
        TARGET_RATIO,
        "<= 3x; < 5 s",
        ratio <= TARGET_RATIO and sensor_seconds < TARGET_SECONDS,
        files=files,
        new_files=work.count("new"),
        run_requests=len(run_keys),
        find_pending_work_seconds=round(find_seconds, 3),
        phases={
            "pyarrow listing (list_source_files)": round(pyarrow_listing_seconds, 3),
            "tracker read (6 columns)": round(tracker_read_seconds, 3),
            "pending_work (listing + tracker + diff + digest)": round(find_seconds, 3),
            "sensor tick (pending_work + run query + requests)": round(sensor_seconds, 3),
        },
        baseline="os.scandir recursive listing (size + mtime)",
        repeats=repeats,
    )


def main() -> None:
    common.bench_main(run, __doc__)

if __name__ == "__main__":
    main()
