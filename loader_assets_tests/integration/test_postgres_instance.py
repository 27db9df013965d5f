"""The production instance (``deploy/dagster.yaml``) under a real PostgreSQL 15 server and a real
``dagster-daemon``: the table's sensor requests runs, the daemon's queue launches them (default run launcher:
run workers are subprocesses of the daemon's code server), and every file lands exactly once, with the runs
recorded in Postgres. Each case kills a run holding a batch committed to the target but not yet completed in
the tracker: first the run worker alone, then the daemon's whole process group (daemon, code server, run
worker and its Spark JVM: a lost host or container), the daemon started again. What resolves the dead run in
each case, and how the batch is recovered without loss or doubling: docs/ARCHITECTURE.md, "The production
instance".

The server runs from a temporary data directory on 127.0.0.1 and a free port, with ``--auth=trust`` (no
password checked; a test server that listens on loopback only). As root it runs as the ``postgres`` user,
since PostgreSQL refuses to run as root. Each Dagster run starts a Spark JVM, so each test takes two minutes
or so."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.storage.tags import PARENT_RUN_ID_TAG
from deltalake import DeltaTable

from loader_assets.core import faults
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.sensors import IN_FLIGHT
from loader_assets_tests.integration.test_webserver import _free_port

pytestmark = pytest.mark.postgres

PROJECT = Path(__file__).resolve().parents[2]
TABLE = "events"
SENSOR = f"{TABLE}_files_sensor"
PG_PASSWORD = "unused-with-trust-auth"


def _postgres_bin() -> Path | None:
    """The directory of initdb, pg_ctl and postgres: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    candidates = [Path(p).parent for p in [shutil.which("initdb")] if p]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if all((directory / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the postgres user (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run the PostgreSQL server as")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _check(command: list[str], **kwargs: Any) -> None:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


@dataclass
class Postgres:
    port: int

    def connect(self, database: str = "postgres") -> Any:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                      password=PG_PASSWORD, dbname=database)
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> dict[str, str]:
        """A new database; returns the environment deploy/dagster.yaml reads its connection from."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return {"DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": PG_PASSWORD,
                "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_DB": name, "DAGSTER_PG_PORT": str(self.port)}

    def run_statuses(self, database: str) -> dict[str, str]:
        """run_id -> status, read with SQL from the runs table Dagster keeps in ``database``."""
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT run_id, status FROM runs")
                return dict(cursor.fetchall())
        finally:
            connection.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for this module, stopped (``pg_ctl stop -m fast``) and deleted at the end."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin: install PostgreSQL 15 "
                    "(Debian: apt-get install postgresql-15; ./dev test does it as root)")
    run_as = _run_as()
    root = Path(tempfile.mkdtemp(prefix="loader-assets-pg-"))  # not under pytest's 0700 root-only tmp dir
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if run_as:
        for path in (root, sockets):
            os.chown(path, run_as["user"], run_as["group"])
    started = False
    try:
        _check([bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
               **run_as)
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off"
        _check([bin_dir / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", options, "-w", "-t", "60",
                "start"], **run_as)
        started = True
        yield Postgres(port=port)
    finally:
        if started:
            _check([bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop"], **run_as)
        shutil.rmtree(root, ignore_errors=True)


def _home(tmp_path: Path, run_monitoring: dict[str, int] | None = None) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml, the given run_monitoring keys shortened for the test."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((PROJECT / "deploy" / "dagster.yaml").read_text())
    config["run_monitoring"].update(run_monitoring or {})
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def _start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``dagster-daemon run`` over the project's workspace.yaml, in a process group of its own (its code
    server, the run workers and their Spark JVMs join it), so the test can kill all of it and nothing else."""
    with log.open("a") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run",
             "-w", str(PROJECT / "workspace.yaml")],
            env=env, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _group_alive(process: subprocess.Popen) -> bool:
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the daemon's process group and wait until none of its processes is left."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _group_alive(process) and time.monotonic() < deadline:
        time.sleep(0.2)  # the group's other members are reaped by init once their parent is gone


def _stop_daemon(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL whatever of its group is left after 10 s (the tests stop the daemon once no run
    is in flight; its graceful shutdown can take a minute, waiting on its code server)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(process)


def _wait_for(what: str, condition: Callable[[], Any], logs: list[Path], timeout: float = 420) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs if log.exists())
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tails}")
        time.sleep(1)


def _table_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={"loader_assets/table": TABLE})))


def _settled(instance: dg.DagsterInstance) -> bool:
    """Some run of the table succeeded and none is queued or in progress."""
    runs = _table_runs(instance)
    return (any(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            and not any(r.status in IN_FLIGHT for r in runs))


def _target_rows(settings: Any) -> list[tuple[int, str]]:
    """(id, source file name) of every row of the target, sorted: each file's rows once means exactly once."""
    rows = DeltaTable(settings.table_path(TABLE)).to_pyarrow_table(columns=["id", "_source_file"]).to_pylist()
    return sorted((r["id"], Path(r["_source_file"]).name) for r in rows)


def _tracker(settings: Any) -> dict[str, dict[str, Any]]:
    rows = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table(TABLE).read().to_pylist()
    return {Path(r["file_path"]).name: r for r in rows}


def test_sensor_runs_load_every_file_once_and_a_dead_run_worker_is_failed_and_retried(
        postgres, lake, tmp_path, monkeypatch):
    """The production instance end to end: files dropped in the landing zone are requested by the table's
    sensor (running by default) and launched from the queue by the daemon. The run worker SIGKILLs itself
    right after its target commit (``after_target_commit``, as an out-of-memory kill would), while the
    daemon and its code server live on: the code server marks the run FAILURE (no run monitoring needed),
    the daemon retries it (``dagster/max_retries`` = ``retry_attempts``), and the retry recovers the batch
    from the target's txn. Every file is completed once with the one commit the dead run made, the target
    holds each file's rows exactly once, and the runs are in Postgres (read with SQL from the runs table and
    through the instance)."""
    settings = lake.config()
    files = {"a.parquet": ([1, 2], 2.0), "b.parquet": ([3], 1.0), "c.parquet": ([4, 5, 6], 1.0)}
    for name, (ids, days_ago) in files.items():
        lake.write_parquet(TABLE, name, ids, days_ago=days_ago)
    database = "scenario_worker"
    for key, value in postgres.create_database(database).items():
        monkeypatch.setenv(key, value)  # the test's own instance reads deploy/dagster.yaml's env vars too
    home = _home(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOADER_ASSETS_CONFIG": str(lake.config_path),
           faults.KILL_AT_ENV: faults.AFTER_TARGET_COMMIT}  # each run worker, at its first target commit
    log = tmp_path / "daemon.log"
    daemon = _start_daemon(env, log)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"

            def retried() -> bool:
                runs = _table_runs(instance)
                return _settled(instance) and any(PARENT_RUN_ID_TAG in r.tags for r in runs)

            _wait_for("a retry of the killed run succeeded and no run is in flight", retried, [log])
            assert daemon.poll() is None, log.read_text()[-3000:]
            runs = {r.run_id: r for r in _table_runs(instance)}  # newest first
            first = [r for r in runs.values() if PARENT_RUN_ID_TAG not in r.tags][-1]
            messages = [e.message for e in instance.all_logs(first.run_id)]
    finally:
        _stop_daemon(daemon)
    assert first.tags.get("dagster/sensor_name") == SENSOR
    assert first.status == dg.DagsterRunStatus.FAILURE
    # the code server's finding ("[DagsterApiServer] Run execution process for <id> was terminated by ...")
    assert any(f"Run execution process for {first.run_id} was terminated by signal 9" in m
               for m in messages), "\n".join(messages[-6:])
    retries = {r.run_id: r.status for r in runs.values() if r.tags.get(PARENT_RUN_ID_TAG) == first.run_id}
    assert set(retries.values()) == {dg.DagsterRunStatus.SUCCESS}, retries
    # the sensor may also have requested a run for the interrupted files between the failure and the retry
    others = {r.run_id: r.status for r in runs.values()
              if r.run_id != first.run_id and r.run_id not in retries}
    assert set(others.values()) <= {dg.DagsterRunStatus.SUCCESS}, others
    assert postgres.run_statuses(database) == {r.run_id: r.status.value for r in runs.values()}

    tracker = _tracker(settings)
    assert {name: (r["status"], r["row_count"], r["target_version"]) for name, r in tracker.items()} == {
        name: ("completed", len(ids), 0) for name, (ids, _) in files.items()}
    assert DeltaTable(settings.table_path(TABLE)).version() == 0  # one commit: the killed run's
    assert _target_rows(settings) == sorted((i, name) for name, (ids, _) in files.items() for i in ids)


def test_a_run_killed_with_its_daemon_after_the_target_commit_is_failed_by_its_max_runtime_and_recovered(
        postgres, lake, tmp_path, monkeypatch):
    """The daemon's whole process group (daemon, code server, run worker, Spark JVM) is SIGKILLed while the
    sensor's run is held at ``after_target_commit``: the batch is in the target, its files still
    ``processing``. With the daemon started again, run monitoring leaves the dead run STARTED over two
    monitoring passes: the default run launcher has no run-worker health check (Dagster 1.13), so nothing
    notices the worker is gone. The max runtime (``max_runtime_seconds``, here its per-run form, the
    ``dagster/max_runtime`` tag set on the dead run) is what fails it. Then the sensor's next run recovers
    the batch from the target's txn: every file completed with the commit the dead run made, no second write
    to the target, each file's rows exactly once, and the dead run FAILURE in Postgres.

    ``retry_attempts: 0`` leaves the daemon's run retries out: a retry copies the dead run's tags, the
    one-second max runtime included, and run monitoring terminates it within seconds (seen while writing
    this test: three retries terminated in turn before the sensor's run, which has no such tag, loaded)."""
    settings = lake.config(retry_attempts=0)
    files = {"a.parquet": ([1, 2], 2.0), "b.parquet": ([3, 4], 1.0)}
    for name, (ids, days_ago) in files.items():
        lake.write_parquet(TABLE, name, ids, days_ago=days_ago)
    database = "scenario_kill"
    for key, value in postgres.create_database(database).items():
        monkeypatch.setenv(key, value)
    home = _home(tmp_path, run_monitoring={"poll_interval_seconds": 2})
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOADER_ASSETS_CONFIG": str(lake.config_path)}
    release = tmp_path / "release"  # never created: the run worker waits at the point until it is killed
    first_log, second_log = tmp_path / "daemon-1.log", tmp_path / "daemon-2.log"
    first = _start_daemon({**env, faults.PAUSE_AT_ENV: faults.AFTER_TARGET_COMMIT,
                           faults.PAUSE_FILE_ENV: str(release)}, first_log)
    second = None
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            reached = Path(f"{release}.reached")
            _wait_for("the run worker reached after_target_commit", reached.exists, [first_log], timeout=300)
            (dead,) = _table_runs(instance)
            assert dead.status == dg.DagsterRunStatus.STARTED
            committed = DeltaTable(settings.table_path(TABLE)).version()
            assert {r["status"] for r in _tracker(settings).values()} == {"processing"}  # recovery is needed
            holder = DeltaLockResource(checkpoint_path=settings.checkpoint_path).for_table(TABLE).read()
            assert holder.run_id == dead.run_id
            assert os.getpgid(holder.pid) == first.pid  # the run worker is in the daemon's process group
            _kill_group(first)
            assert not _group_alive(first)

            second = _start_daemon(env, second_log)
            checking = f"Checking run {dead.run_id}"
            _wait_for("two monitoring passes over the dead run",
                      lambda: second_log.read_text().count(checking) >= 2, [second_log], timeout=180)
            # nothing resolved it: the default launcher cannot tell that the worker is gone
            assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.STARTED
            assert postgres.run_statuses(database)[dead.run_id] == "STARTED"

            instance.add_run_tags(dead.run_id, {"dagster/max_runtime": "1"})
            _wait_for("run monitoring failed the dead run",
                      lambda: instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE,
                      [second_log], timeout=120)
            messages = [e.message for e in instance.all_logs(dead.run_id)]
            assert any("exceeding maximum runtime" in m for m in messages), messages
            # its code server is gone, so the termination request fails and the run is marked failed anyway
            assert any("forcibly marked as failed" in m for m in messages), messages

            _wait_for("a later run succeeded and none is in flight", lambda: _settled(instance), [second_log])
            assert second.poll() is None, second_log.read_text()[-3000:]
            runs = _table_runs(instance)
            later = {r.run_id: r.status for r in runs if r.run_id != dead.run_id}
            failures = instance.all_logs(dead.run_id, of_type=DagsterEventType.RUN_FAILURE)
    finally:
        _kill_group(first)
        if second is not None:
            _stop_daemon(second)
    assert len(failures) == 1
    assert later and set(later.values()) == {dg.DagsterRunStatus.SUCCESS}, later
    assert postgres.run_statuses(database)[dead.run_id] == "FAILURE"

    tracker = _tracker(settings)
    assert {name: (r["status"], r["row_count"], r["target_version"]) for name, r in tracker.items()} == {
        name: ("completed", len(ids), committed) for name, (ids, _) in files.items()}
    assert DeltaTable(settings.table_path(TABLE)).version() == committed  # recovered, not written again
    assert _target_rows(settings) == sorted((i, name) for name, (ids, _) in files.items() for i in ids)
