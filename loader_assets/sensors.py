"""File-discovery sensors: one per table, a trigger for ranged runs over the partitions that have files to load.

A tick lists the landing directory once, diffs it against the tracker (``planning.pending_work``, the same
definition of work a run's planner uses) and
requests one run per contiguous group of partitions with work, at most ``sensor_max_runs_per_tick`` of them
(each run loads at most ``max_files_per_run`` files, so a tick's work is bounded; what is left is requested by
later ticks). It writes nothing: the run registers and claims
files under the table's lock. Run keys are deterministic (table, range, digest of the pending files' paths,
fingerprints and retry counts), so a tick repeated after a crash requests nothing twice, while a file that failed
and has retries left changes the digest and is requested again. While a run of the table is queued or in
progress the sensor waits, so a slow run is not stacked with duplicates.
"""


import json

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from loader_assets.assets import TABLE_TAG, retry_tags
from loader_assets.planning import pending_work
from loader_assets.resources.lock import DeltaLockResource, holder_is_live, run_ended_checker
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.settings import LoaderSettings, TableSettings

# Dagster's sensor daemon evaluates sensors in a loop that starts every 5 s (``MIN_INTERVAL_LOOP_TIME`` in
# dagster/_daemon/sensor.py) and skips a sensor whose last tick started less than its minimum interval ago
# (unit/test_definitions_and_sensor.py pins the value against Dagster's).
DAEMON_SENSOR_LOOP_SECONDS = 5
# how much sooner than a whole number of loops after the last tick a tick may start and still be taken
TICK_JITTER_SECONDS = 2

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def range_tags(start: str, end: str) -> dict[str, str]:
    """Run tags that make a run materialise the partition range [start, end] in one go."""
    return {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}


def dagster_minimum_interval(interval_seconds: int) -> int:
    """The ``minimum_interval_seconds`` that makes the daemon tick a sensor every ``interval_seconds`` rounded up
    to its 5-s loop (so 5 and 30 exactly; 12 becomes 15).

    Dagster's own minimum, set to the interval itself, ticks late every other time or so: a tick's start
    moves within its loop by tens of milliseconds, and when it lands a little earlier than the one before,
    ``elapsed < minimum`` by that much and the sensor waits a whole loop more. Measured under
    ``dagster-daemon`` (Dagster 1.13, minimum 5): gaps of 5.0, 10.0, 10.0, 5.0, 5.0, 5.0, 10.0, 10.4 s, so a
    landed file waited 3.8 s for a tick on average instead of 2.5 s (benchmark P9); with the minimum below the
    loop's multiple every gap was 5.0 s. The minimum given here is that multiple less ``TICK_JITTER_SECONDS``:
    a tick up to 2 s early still counts, and a loop earlier is still too soon."""
    loops = max(1, -(-interval_seconds // DAEMON_SENSOR_LOOP_SECONDS))  # ceil, at least one loop
    return max(1, loops * DAEMON_SENSOR_LOOP_SECONDS - TICK_JITTER_SECONDS)


def build_table_sensor(table: TableSettings, settings: LoaderSettings, job_name: str) -> dg.SensorDefinition:
    name = table.table_name

    @dg.sensor(
        name=f"{name}_files_sensor",
        job_name=job_name,
        minimum_interval_seconds=dagster_minimum_interval(settings.sensor_interval_seconds),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests runs of `{name}` for the partitions that have files to load in {table.source_path}.",
    )
    def _files_sensor(
        context: dg.SensorEvaluationContext, tracker: DeltaTrackerResource, lock: DeltaLockResource
    ) -> dg.SensorResult | dg.SkipReason:
        in_flight = context.instance.get_runs(
            filters=dg.RunsFilter(tags={TABLE_TAG: name}, statuses=IN_FLIGHT), limit=1
        )
        if in_flight:
            return dg.SkipReason(f"run {in_flight[0].run_id} of {name} is still queued or in progress")
        live = holder_is_live(lock.for_table(name).read(), run_ended_checker(context.instance))
        work = pending_work(table, tracker.for_table(name), settings.retry_attempts, holder_live=live)
        if not work.has_work:
            return dg.SkipReason(work.idle)
        requests = []
        ranges = work.ranges[: settings.sensor_max_runs_per_tick]  # each run loads <= max_files_per_run files
        for start, end in ranges:
            tags = {TABLE_TAG: name, **retry_tags(settings.retry_attempts), **range_tags(start, end)}
            requests.append(dg.RunRequest(run_key=f"{name}:{start}...{end}:{work.digest}", tags=tags))
        cursor = json.dumps({"discovered": work.discovered, **work.counts,
                             "ranges_deferred": len(work.ranges) - len(ranges), "digest": work.digest})
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return _files_sensor
