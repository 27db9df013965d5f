"""Runs on a Spark standalone cluster: the CLI is the driver (``spark.master: spark://...``), two workers' executors
read the landing files and write the target's data files, the driver commits. Append and SCD2 tables load exactly as
expected with the Delta jars shipped to the executors from the driver; a worker lost during a target write and a
driver killed during one both leave every file's rows in the target exactly once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from loader_assets.core import faults
from loader_assets.settings import load_settings
from loader_assets.target import open_target, target_txn_version
from loader_assets_tests.cluster.conftest import Cluster, executor_processes, processes
from loader_assets_tests.conftest import TEST_SPARK_CONF
from loader_assets_tests.deployments import cli, free_port, two_tables, write_small_files

pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.extended]  # ten minutes: not in CI

BIG_FILES, BIG_ROWS = 6, 200_000


def cluster_spark(cluster: Cluster, **conf: str) -> dict:
    """The config's spark section for a run on ``cluster``: the driver binds to 127.0.0.1 (its default, the
    machine's hostname, need not be reachable by executors), one executor of 512 MiB per worker."""
    return {"master": cluster.url, "conf": {
        **TEST_SPARK_CONF, "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
        "spark.executor.memory": "512m", "spark.cores.max": "2", "spark.driver.memory": "1g",
        "spark.ui.showConsoleProgress": "false", **conf}}


def validate(lake) -> None:
    """``loader-assets validate-consistency`` through the CLI's main() in this process, on the test session's local
    Spark: it reads the same tables, and on the cluster the same command took two minutes (a new application,
    its executors and a dozen small jobs) on the 2-core test machine."""
    from loader_assets.cli import main

    os.environ["DAGSTER_HOME"] = str(lake.root / "dagster_home")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate-consistency", "--config", str(lake.config_path)])
    assert code == 0, out.getvalue() + err.getvalue()[-2000:]


def run_until_quiescent(lake, attempts: int = 3) -> list[tuple[int, str, str]]:
    """``run`` until one exits 0 with no failed file (a batch a lost executor failed is retried by the next)."""
    runs = []
    for _attempt in range(attempts):
        runs.append(cli(lake, "run"))
        code, out, _ = runs[-1]
        if code == 0 and "Files failed:     0" in out:
            return runs
    code, out, err = runs[-1]
    pytest.fail(f"no quiescent run in {attempts} (last exit {code}):\n{out}\n{err[-3000:]}")


def app_ids(cluster: Cluster) -> set[str]:
    state = cluster.state()
    return {app["id"] for app in state["activeapps"] + state["completedapps"]}


def rows(target_path: str, columns: list[str]) -> list[tuple]:
    table = open_target(target_path)
    assert table is not None, f"no table at {target_path}"
    return sorted(zip(*(table.to_pyarrow_table(columns=columns)[c].to_pylist() for c in columns), strict=True))


def write_big_files(lake) -> list[Path]:
    """Six event files of 200,000 rows: a write of several seconds on two one-core executors."""
    return [lake.write_parquet("events", f"big {i}.parquet", list(range(i * 1_000_000, i * 1_000_000 + BIG_ROWS)),
                               days_ago=3 - i * 0.3) for i in range(BIG_FILES)]


def assert_big_files_once(target_path: str, files: list[Path]) -> None:
    """Every row of every file once: the id column is unique per row across the files, each file's rows name it."""
    table = open_target(target_path)
    assert table is not None
    data = table.to_pyarrow_table(columns=["id", "_source_file"])
    assert data.num_rows == BIG_FILES * BIG_ROWS
    ids = data["id"].to_pylist()
    assert sorted(ids) == sorted(i * 1_000_000 + j for i in range(BIG_FILES) for j in range(BIG_ROWS))
    per_file: dict[str, int] = {}
    for source in data["_source_file"].to_pylist():
        per_file[source] = per_file.get(source, 0) + 1
    assert per_file == {str(f): BIG_ROWS for f in files}


def test_append_and_scd2_load_through_the_cluster(spark, ready_cluster, lake):
    """Both strategies on the cluster, rows exactly as expected; the work ran on the executors of both workers,
    each of which fetched delta-spark's jar from the driver (without it, Delta's writer classes are missing there)."""
    lake.config(two_tables(), spark=cluster_spark(ready_cluster))
    write_small_files(lake)
    before = app_ids(ready_cluster)
    code, out, err = cli(lake, "run", "--json")
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert {name: (t["files_processed"], t["files_failed"]) for name, t in summary["tables"].items()} == {
        "events": (4, 0), "customers": (3, 0)}
    validate(lake)

    settings = load_settings(lake.config_path)
    events = lake.landing / "events"
    assert rows(settings.table_path("events"), ["id", "name", "_source_file"]) == sorted(
        (i * 1000 + j, f"n{i * 1000 + j}", str(events / f"part {i}.parquet")) for i in range(4) for j in range(500))
    assert rows(settings.table_path("customers"), ["customer_id", "name", "email", "updated_at", "is_current"]) == [
        (1, "ann", "a1@x", 20, False), (1, "ann", "a2@x", 30, True), (1, "ann", "a@x", 10, False),
        (2, "bob", "b@x", 10, True),  # the repeat at 30 changed no tracked column: no new version
        (3, "cy", "c2@x", 40, True), (3, "cy", "c@x", 30, False)]

    run_apps = sorted(app_ids(ready_cluster) - before)
    assert run_apps, "no application registered with the master: the run did not use the cluster"
    (app,) = run_apps
    executor_dirs = ready_cluster.executor_dirs(app)
    assert {d.parents[1].name for d in executor_dirs} == {"worker-0", "worker-1"}, executor_dirs
    for directory in executor_dirs:
        assert list(directory.glob("io.delta_delta-spark_*.jar")), f"no delta-spark jar in {directory}"
        assert "Finished task" in (directory / "stderr").read_text(), f"executor {directory} ran no task"


def driver_ui(port: int, path: str) -> list | dict:
    base = f"http://127.0.0.1:{port}/api/v1/applications"
    app = json.loads(urllib.request.urlopen(base, timeout=10).read())[0]["id"]
    return json.loads(urllib.request.urlopen(f"{base}/{app}/{path}", timeout=10).read())


def events(log_dir: Path, app: str) -> list[dict]:
    """The Spark event log of application ``app`` (written by its driver; ``.inprogress`` if the driver died)."""
    (path,) = [p for p in log_dir.iterdir() if p.name.startswith(app)]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def observed_config(lake, cluster: Cluster) -> tuple[int, Path]:
    """One events table on ``cluster``, its driver's UI on (for its REST API) and its event log kept."""
    ui_port, log_dir = free_port(), lake.root / "eventlog"
    log_dir.mkdir()
    lake.config([{"table_name": "events", "source_path": "landing/events", "file_format": "parquet"}],
                spark=cluster_spark(cluster, **{
                    "spark.ui.enabled": "true", "spark.ui.port": str(ui_port), "spark.eventLog.enabled": "true",
                    "spark.eventLog.dir": str(log_dir), "spark.eventLog.compress": "false",
                    "spark.eventLog.rolling.enabled": "false"}))
    return ui_port, log_dir


def start_write(lake, cluster: Cluster, ui_port: int) -> tuple[subprocess.Popen, str, list[str]]:
    """A ``run`` held before its target write until both executors are up, then released, and followed until
    the job that writes the target's data files runs tasks. (The write's SQL execution first broadcasts a small
    frame, a job of its own; the data files are written by the job named "save at ...", two tasks here.) Returns
    once both tasks have created their data files, with the process, the application id and the executors that
    run a task of that job."""
    before = app_ids(cluster)
    held = lake.root / "held"
    run = cli(lake, "run", wait=False, env={faults.PAUSE_AT_ENV: faults.BEFORE_TARGET_COMMIT,
                                           faults.PAUSE_FILE_ENV: str(held)})
    deadline = time.monotonic() + 300
    while not Path(f"{held}.reached").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.1)
    (app,) = app_ids(cluster) - before
    executors = [e for e in driver_ui(ui_port, "executors") if e["id"] != "driver"]
    assert len(executors) == 2, executors  # one per worker
    held.touch()
    target = Path(load_settings(lake.config_path).table_path("events"))
    busy: list[str] = []
    while not busy:
        assert run.poll() is None and time.monotonic() < deadline, "no executor ran a task of the write"
        writing = any(j["name"].startswith("save at") and j["numActiveTasks"]
                      for j in driver_ui(ui_port, "jobs?status=running"))
        # both tasks have opened their data files in the table's directory: the executors are writing them
        if writing and len(list(target.glob("part-*.parquet"))) >= 2:
            busy = [e["id"] for e in driver_ui(ui_port, "executors") if e["id"] != "driver" and e["activeTasks"]]
        time.sleep(0.05)
    return run, app, busy


def write_stages(log: list[dict]) -> set[int]:
    return {s["Stage ID"] for e in log if e["Event"] == "SparkListenerJobStart"
            for s in e["Stage Infos"] if s["Stage Name"].startswith("save at")}


def orphan_files(target_path: str) -> list[Path]:
    """Data files in the table's directory that its log does not reference (a lost task's, a dead write's)."""
    committed = {Path(uri) for uri in open_target(target_path).file_uris()}
    return [p for p in Path(target_path).glob("*.parquet") if p not in committed]


@pytest.mark.fault
def test_a_worker_lost_during_the_target_write_leaves_the_batch_once(spark, ready_cluster, lake):
    """SIGKILL of a worker and its executor while that executor writes a data file of the target. Spark gives the
    lost task to the other worker's executor (or, if the job fails, the batch fails and the next run retries it);
    either way the files' rows are in the target once."""
    ui_port, log_dir = observed_config(lake, ready_cluster)
    files = write_big_files(lake)
    run, killed_worker = None, None
    try:
        run, app, busy = start_write(lake, ready_cluster, ui_port)
        (process,) = [p for p in executor_processes(app) if f"--executor-id {busy[0]} " in p["cmdline"]]
        killed_worker = next(i for i, w in enumerate(ready_cluster.workers)
                             if w is not None and w.pid == process["ppid"])
        assert ready_cluster.kill_worker(killed_worker) == [process["pid"]]
        out, err = run.communicate(timeout=600)
        first = (run.returncode, out, err)
        later = [] if run.returncode == 0 and "Files failed:     0" in out else run_until_quiescent(lake)
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
        if killed_worker is not None:
            ready_cluster.start_worker(killed_worker)

    log = events(log_dir, app)
    removed = [e["Executor ID"] for e in log if e["Event"] == "SparkListenerExecutorRemoved"]
    assert removed == [busy[0]], removed
    lost = [(e["Stage ID"], e["Task Info"]["Index"]) for e in log if e["Event"] == "SparkListenerTaskEnd"
            and e["Task End Reason"]["Reason"] == "ExecutorLostFailure" and e["Task Info"]["Executor ID"] == busy[0]]
    assert lost and {stage for stage, _ in lost} <= write_stages(log), f"the kill lost no task of the write: {lost}"
    done_elsewhere = {(e["Stage ID"], e["Task Info"]["Index"]) for e in log if e["Event"] == "SparkListenerTaskEnd"
                      and e["Task End Reason"]["Reason"] == "Success" and e["Task Info"]["Executor ID"] != busy[0]}
    code, out, _ = first
    if code == 0 and "Files failed:     0" in out:  # the write survived the lost node: Spark reran its tasks
        assert set(lost) <= done_elsewhere, f"lost tasks {lost} were not rerun on the other executor"
        assert not later
    else:  # the write failed: its files failed, and a later run loaded them
        assert later and "Files failed:     0" in later[-1][1]
    target_path = load_settings(lake.config_path).table_path("events")
    # the lost task's data file stays in the directory, referenced by no commit (VACUUM removes it)
    assert len(orphan_files(target_path)) == len(lost)
    print(f"worker {killed_worker} killed (executor {busy[0]}) during the write; first run exit {code}, "
          f"{len(later)} later runs; write tasks lost {lost}, "
          f"rerun elsewhere: {sorted(set(lost) & done_elsewhere)}")
    assert_big_files_once(target_path, files)
    validate(lake)


@pytest.mark.fault
def test_a_driver_killed_during_the_target_write_recovers_on_the_next_run(spark, ready_cluster, lake):
    """SIGKILL of the CLI (the driver) while the executors write the target's data files: its JVM exits, the
    master removes the application and the workers end its executors, so nothing of the dead run can commit
    later (only a driver commits to a Delta table). The next run recovers the claimed batch and loads it once."""
    ui_port, log_dir = observed_config(lake, ready_cluster)
    files = write_big_files(lake)
    run = None
    try:
        run, app, busy = start_write(lake, ready_cluster, ui_port)
        driver_jvms = [p["pid"] for p in processes() if p["ppid"] == run.pid and "java" in p["cmdline"]]
        run.kill()  # SIGKILL, as LOADER_ASSETS_KILL_AT does, at a known moment
        run.communicate()
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == -9 and len(driver_jvms) == 1, (run.returncode, driver_jvms)
    target_path = load_settings(lake.config_path).table_path("events")
    assert target_txn_version(target_path, "events") == 0, "the write committed before the kill: window missed"
    deadline = time.monotonic() + 60
    while (app in {a["id"] for a in ready_cluster.state()["activeapps"]} or executor_processes(app)
           or any(p["pid"] == driver_jvms[0] for p in processes())):
        assert time.monotonic() < deadline, "the dead driver's JVM, application or executors outlived it"
        time.sleep(0.5)
    assert busy and write_stages(events(log_dir, app)), "the driver was not killed during the write"

    runs = run_until_quiescent(lake)
    print(f"driver killed during the write (executors {busy} writing); {len(runs)} runs to recover")
    assert len(orphan_files(target_path)) == 2  # the dead write's two files, in no commit; the reload wrote its own
    assert_big_files_once(target_path, files)
    validate(lake)
