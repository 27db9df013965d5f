"""The one-run-per-table limit under a real run queue: runs launched as the UI launches them (the
webserver's GraphQL ``launchRun`` of the asset job, without the loader's table tag), dequeued by a real
``dagster-daemon`` over the project's ``dagster.yaml``. Each table asset has its own pool with one slot
claimed per run, so a run of a table launched while another is running waits in the queue, however it was
launched (docs/ARCHITECTURE.md, "Partitions and runs", which also says what the queue does not cover).

Each run of events loads one small file, so it lasts as long as a Spark start; orders has no files."""

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType

from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets_tests.integration.test_webserver import _free_port, _graphql, _wait_until_up

PROJECT = Path(__file__).resolve().parents[2]
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
JOBS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } jobs { name } } } } }
"""


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=PROJECT)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _span(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    records = instance.get_records_for_run(run_id).records
    times = {r.event_log_entry.dagster_event.event_type_value: r.event_log_entry.timestamp for r in records
             if r.event_log_entry.dagster_event is not None}
    return times[DagsterEventType.RUN_START.value], times[DagsterEventType.RUN_SUCCESS.value]


def test_ui_launched_runs_of_one_table_wait_for_each_other_in_the_queue(lake, tmp_path):
    table = {"file_format": "parquet", "partitioning": {"granularity": "day", "start": "2024-01-01"}}
    settings = lake.config(tables=[{"table_name": "events", "source_path": "landing/events", **table},
                                   {"table_name": "orders", "source_path": "landing/orders", **table}])
    days = []  # one file in each of two day partitions of events: each run loads one (Spark: 20 s or more)
    for number, days_ago in enumerate((2.0, 1.0)):
        path = lake.write_parquet("events", f"e{number}.parquet", [number * 10, number * 10 + 1], days_ago)
        days.append(datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")  # the project's queue and pool limits
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOADER_ASSETS_CONFIG": str(lake.config_path)}
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    webserver = _start([str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                        "-m", "loader_assets.definitions"], env, tmp_path / "webserver.log")
    daemon = None
    try:
        _wait_until_up(port, webserver, tmp_path / "webserver.log")
        (repo,) = _graphql(port, JOBS, {})["repositoriesOrError"]["nodes"]
        (asset_job,) = [j["name"] for j in repo["jobs"] if j["name"].startswith("__ASSET_JOB")]

        def launch(asset: str, day: str) -> str:
            params = {"selector": {"repositoryLocationName": repo["location"]["name"],
                                   "repositoryName": repo["name"], "jobName": asset_job,
                                   "assetSelection": [{"path": [asset]}]},
                      "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]}}
            launched = _graphql(port, LAUNCH, {"params": params})["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            return launched["run"]["runId"]

        # a click on a partition of events and one of orders; once the events run has started, a click on
        # another partition of events: that run must wait in the queue until the first has ended
        runs = {"events 1": launch("events", days[0]), "orders": launch("orders", days[0])}
        daemon = _start([str(bin_dir / "dagster-daemon"), "run", "-m", "loader_assets.definitions"], env,
                        tmp_path / "daemon.log")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 300
            while instance.get_run_by_id(runs["events 1"]).status == dg.DagsterRunStatus.QUEUED:
                assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(0.5)
            runs["events 2"] = launch("events", days[1])
            untagged = {instance.get_run_by_id(r).tags.get("loader_assets/table") for r in runs.values()}
            assert untagged == {None}  # launched as the UI does: the table tag's run limit does not apply
            deadline = time.monotonic() + 600
            while not all(instance.get_run_by_id(r).is_finished for r in runs.values()):
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(1)
            statuses = {name: instance.get_run_by_id(r).status for name, r in runs.items()}
            assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}, statuses
            spans = {name: _span(instance, r) for name, r in runs.items()}
    finally:
        if daemon is not None:
            _stop(daemon)
        _stop(webserver)
    # the two runs of events ran one after the other (without the pool limit the second starts within
    # seconds, while the first is still loading: the test fails with the limit removed). Runs queued before
    # the daemon's dequeue all start in that one pass, pools or not (Dagster 1.13); the lease orders them.
    (_, first_end), (second_start, _) = sorted([spans["events 1"], spans["events 2"]])
    assert second_start >= first_end, spans
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    assert sorted((r["status"], r["row_count"]) for r in tracker.read().to_pylist()) == [("completed", 2)] * 2


def test_the_daemon_ticks_a_table_sensor_every_interval(lake, tmp_path):
    """``sensor_interval_seconds: 5`` under a real ``dagster-daemon``: every gap between the table sensor's
    ticks is one 5-s loop of the daemon, none two (sensors.dagster_minimum_interval). With Dagster's minimum set
    to the interval itself, about every other gap was 10 s (the test fails that way)."""
    from dagster._core.scheduler.instigation import InstigatorType

    lake.config(sensor_interval_seconds=5)
    (lake.landing / "events").mkdir(parents=True, exist_ok=True)  # nothing to load: every tick is a skip
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOADER_ASSETS_CONFIG": str(lake.config_path)}
    daemon = _start([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "loader_assets.definitions"],
                    env, tmp_path / "daemon.log")
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            def tick_times() -> list[float]:
                states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                return sorted(t.timestamp for s in states if s.instigator_name == "events_files_sensor"
                              for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=100))

            deadline = time.monotonic() + 240
            while len(ticks := tick_times()) < 8:  # seven gaps
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (ticks, (tmp_path / "daemon.log").read_text()[-3000:])
                time.sleep(1)
    finally:
        _stop(daemon)
    gaps = [round(later - earlier, 2) for earlier, later in zip(ticks, ticks[1:])]
    assert all(3.0 < gap < 7.5 for gap in gaps), gaps
