"""Discovery at scale: 100,000 files in the landing directory, 99,000 of them already loaded, 1,000 new.

Measures (printed, and reported in the issue's note; timings are never asserted) the real sensor's tick on a real
Dagster instance and the run's planning step (listing, change detection, registering the 1,000 new files, choosing
the batch). Asserts what they decide: the tick requests runs covering exactly the new files' partitions, and the
plan registers the 1,000 new files and picks them (and nothing else) for the batch.
"""

import os
import time

import dagster as dg
import pytest

from loader_assets.core.discovery import list_source_files
from loader_assets.core.partitions import group_into_ranges, partition_keys_for
from loader_assets.definitions import build_definitions
from loader_assets.planning import plan_batch
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.tracker import DeltaTrackerResource

pytestmark = pytest.mark.scale

TOTAL, NEW = 100_000, 1_000


def _make_landing(root, total, days):
    """``total`` tiny files spread over ``days`` day directories, with modification times in those days."""
    now = time.time()
    for i in range(total):
        day = i % days
        directory = root / f"day={day:03d}"
        if i < days:
            directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{i:06d}.parquet"
        with open(path, "wb") as handle:
            handle.write(b"x")
        moment = now - (days - day) * 86400 + (i % 1000)
        os.utime(path, (moment, moment))


def test_sensor_tick_and_planning_over_100k_files_with_1k_new(lake, instance):
    landing = lake.landing / "events"
    started = time.perf_counter()
    _make_landing(landing, TOTAL, days=100)
    made = time.perf_counter() - started
    settings = lake.config(max_files_per_run=TOTAL, sensor_max_runs_per_tick=100)
    table = settings.tables[0]
    trackers = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path)
    tracker = trackers.for_table("events")
    tracker.create(baseline_txn=0)

    # The tracker knows 99,000 of the files as completed (written directly: loading them is not the point here).
    listing = list_source_files(str(landing))
    assert listing.num_rows == TOTAL
    order = listing.sort_by([("file_modified_time", "descending")])
    new = order.slice(0, NEW)
    known = order.slice(NEW)
    keys = partition_keys_for(known["file_modified_time"], "day", "2024-01-01")
    tracker.register(known, keys)
    paths = known["file_path"].to_pylist()
    tracker.claim(paths, "seed", 1, "seed-run")
    tracker.complete({p: 1 for p in paths}, "seed", 0)
    new_paths = set(new["file_path"].to_pylist())
    new_keys = set(partition_keys_for(new["file_modified_time"], "day", "2024-01-01").to_pylist())

    definitions = build_definitions(settings)
    sensor = definitions.get_sensor_def("events_files_sensor")
    resources = {"tracker": trackers, "lock": DeltaLockResource(checkpoint_path=settings.checkpoint_path)}
    timings = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))
        timings.append(time.perf_counter() - t0)
    requested = [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
                 for r in result.run_requests]
    # exactly the new files' partitions, grouped into ranges as the sensor groups them (a gap of more than 7
    # empty days splits a range), capped at sensor_max_runs_per_tick
    expected = group_into_ranges(sorted(new_keys), "day")
    assert requested == expected[: settings.sensor_max_runs_per_tick]
    assert {start for start, _ in expected} | {end for _, end in expected} <= new_keys

    t0 = time.perf_counter()
    plan = plan_batch(tracker, table, None, settings.retry_attempts, settings.max_files_per_run)
    planning = time.perf_counter() - t0
    assert plan.discovered == TOTAL and plan.registered == NEW and plan.changes == []
    assert set(plan.batch["file_path"].to_pylist()) == new_paths

    t0 = time.perf_counter()
    again = plan_batch(tracker, table, None, settings.retry_attempts, settings.max_files_per_run)
    replanning = time.perf_counter() - t0
    assert again.registered == 0 and again.batch.num_rows == NEW
    report = (f"scale: {TOTAL:,} files ({NEW:,} new) created in {made:.1f} s; sensor tick "
              f"{', '.join(f'{t:.2f}' for t in timings)} s; planning (register {NEW:,}) {planning:.2f} s; "
              f"planning again (nothing to register) {replanning:.2f} s")
    print(report)
