"""Real processes: the CLI killed with SIGKILL at named protocol points, and two CLIs racing on one table."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loader_assets.core import faults
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets_tests.conftest import target_rows

pytestmark = [pytest.mark.fault, pytest.mark.spark]


def cli(lake, *args, kill_at=None, hit=1, wait=True):
    env = {**os.environ, "DAGSTER_HOME": str(lake.root / "dagster_home")}
    Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
    env.pop(faults.KILL_AT_ENV, None)
    if kill_at:
        env[faults.KILL_AT_ENV] = kill_at
        env[faults.KILL_AT_HIT_ENV] = str(hit)
    command = [sys.executable, "-m", "loader_assets", *args, "--config", str(lake.config_path)]
    process = subprocess.Popen(command, env=env, cwd=lake.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def cli_here(lake, *args):
    """A CLI command through ``main()`` in this process, on the test session's warm Spark: only the process that
    is killed, or that races, needs a process (and a JVM) of its own. Returns the exit code, stdout and stderr."""
    from loader_assets.cli import main

    os.environ["DAGSTER_HOME"] = str(lake.root / "dagster_home")
    Path(os.environ["DAGSTER_HOME"]).mkdir(exist_ok=True)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--config", str(lake.config_path)])
    return code, out.getvalue(), err.getvalue()


def seed_files(lake, n=4):
    return [lake.write_parquet("events", f"part {i}, 'x'.parquet", list(range(i * 100, i * 100 + 7)),
                               days_ago=2 - i * 0.3) for i in range(n)]


def expected_rows(paths):
    return sorted((i * 100 + j, f"n{i * 100 + j}", str(p)) for i, p in enumerate(paths) for j in range(7))


def tracker_statuses(settings):
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    return {r["file_path"]: (r["status"], r["row_count"]) for r in tracker.read().to_pylist()}


POINTS = [faults.AFTER_LOCK, faults.AFTER_CLAIM, faults.DURING_TARGET_WRITE, faults.AFTER_TARGET_COMMIT,
          faults.DURING_TRACKER_COMMIT, faults.AFTER_COMPLETE]
COMMITTED_BEFORE_KILL = {faults.AFTER_TARGET_COMMIT, faults.AFTER_COMPLETE}


def validate_here(lake):
    """`validate-consistency` through the CLI's main() in this process, reusing the test session's Spark."""
    code, out, _ = cli_here(lake, "validate-consistency")
    assert code == 0, out
    return code


def assert_lock_free(settings, table):
    assert not DeltaLockResource(checkpoint_path=settings.checkpoint_path).for_table(table).read().held


def rerun(lake):
    """The run after the kill, in this process: recovery is what is under test, not a second JVM start. Its
    checks are skipped: every test then runs validate-consistency, which runs them over the whole table."""
    code, out, err = cli_here(lake, "run", "--json", "--skip-checks")
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["total_files_failed"] == 0
    return summary


# after_lock (nothing claimed yet) and after_complete (everything recorded) are the two trivial windows: their
# runs are in the soak tier, to keep CI within its budget.
APPEND_POINTS = [p if p not in (faults.AFTER_LOCK, faults.AFTER_COMPLETE) else pytest.param(p, marks=pytest.mark.soak)
                 for p in POINTS]


@pytest.mark.parametrize("point", APPEND_POINTS)
def test_append_sigkill_at_each_protocol_point_then_rerun_leaves_everything_exact(spark, lake, point):
    paths = seed_files(lake)
    settings = lake.config()
    code, _, err = cli(lake, "run", kill_at=point)
    assert code == -signal.SIGKILL, err[-2000:]
    summary = rerun(lake)
    if point in COMMITTED_BEFORE_KILL:
        assert summary["total_files_processed"] == 0  # recovered as committed, never loaded again
    elif point in (faults.AFTER_LOCK, faults.AFTER_CLAIM):
        assert summary["total_files_processed"] == 4
    assert target_rows(spark, settings, "events") == expected_rows(paths)
    assert set(tracker_statuses(settings).values()) == {("completed", 7)}
    assert_lock_free(settings, "events")
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('events')}`").collect()
    assert len(history) == 1  # one batch, one commit, whatever the kill interrupted
    assert validate_here(lake) == 0


SMALL_BATCH_POINTS = [faults.AFTER_CLAIM, faults.BEFORE_TARGET_COMMIT, faults.DURING_TARGET_WRITE,
                      faults.AFTER_TARGET_COMMIT, faults.DURING_TRACKER_COMMIT]


@pytest.mark.parametrize("point", SMALL_BATCH_POINTS)
def test_small_batch_engine_killed_at_each_protocol_point_then_rerun_leaves_everything_exact(spark, lake, point):
    """The second batch goes through the small-batch engine (small_batch.py: a delta-rs commit, no JVM in the
    killed process); during_target_write is the instant its data files are written and its commit is not."""
    from deltalake import DeltaTable

    paths = seed_files(lake, n=2)
    settings = lake.config()
    assert rerun(lake)["total_files_processed"] == 2  # the first load (Spark creates the table), not under test
    paths += [lake.write_parquet("events", f"part {i}, 'x'.parquet", list(range(i * 100, i * 100 + 7)),
                                 days_ago=1 - i * 0.1) for i in (2, 3)]
    code, _, err = cli(lake, "run", kill_at=point)
    assert code == -signal.SIGKILL, err[-2000:]
    table_dir = Path(settings.table_path("events"))
    if point == faults.DURING_TARGET_WRITE:  # killed between its data files and its commit
        written = {p.name for p in table_dir.glob("*.parquet")}
        referenced = {Path(uri).name for uri in DeltaTable(str(table_dir)).file_uris()}
        assert written - referenced, "no data file was written before the kill"
    summary = rerun(lake)
    committed = point in COMMITTED_BEFORE_KILL or point == faults.DURING_TRACKER_COMMIT
    assert summary["total_files_processed"] == (0 if committed else 2)
    assert target_rows(spark, settings, "events") == expected_rows(paths)
    assert set(tracker_statuses(settings).values()) == {("completed", 7)}
    assert_lock_free(settings, "events")
    history = DeltaTable(str(table_dir)).history()
    assert len(history) == 2  # the first load and one commit of the second batch, whatever the kill interrupted
    # a batch committed before the kill was the engine's; one that was not is reloaded by the rerun, which
    # replaces rows its files may have, and that is Spark's path (replaceWhere)
    assert ("delta-rs" in str(history[0].get("engineInfo"))) == committed
    assert validate_here(lake) == 0


def sigterm_at_claim(lake, settings, hit=None):
    """A ``loader-assets run`` process held right after its claim (the ``hit``-th, default the first), then
    SIGTERMed; returns the table's tracker rows by path once it has exited (not 0)."""
    from loader_assets_tests.deployments import cli as cli_process
    from loader_assets_tests.deployments import wait_for

    pause = {faults.PAUSE_AT_ENV: faults.AFTER_CLAIM, faults.PAUSE_FILE_ENV: str(lake.root / "never")}
    process = cli_process(lake, "run", wait=False, env=pause | ({faults.PAUSE_AT_HIT_ENV: str(hit)} if hit else {}))
    wait_for(lake.root / "never.reached", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0, err[-3000:]
    return {r["file_path"]: r for r in DeltaTrackerResource(checkpoint_path=settings.checkpoint_path)
            .for_table("events").read().to_pylist()}


def assert_interrupted(row):
    """A file failed by a run stopped by a signal: said so, and no retry used."""
    assert row["status"] == "failed", row
    assert row["error_message"].startswith("interrupted: run "), row["error_message"]
    assert "stopped by a signal" in row["error_message"], row["error_message"]
    assert (row["retry_count"] or 0) == 0  # retry_attempts is 1: a counted retry would strand the file


def test_a_run_stopped_by_sigterm_records_its_files_as_interrupted_without_using_a_retry(spark, lake):
    """SIGTERM (what a scheduler, `docker stop` or a timeout sends) reaches the loader as Dagster's interruption:
    the run resolves its claimed batch before it exits, and says so. The files are failed as "interrupted",
    with no retry used (as recovery does after a kill), not with whatever error the interruption surfaced as,
    and the next run loads them. The second batch goes through the small-batch engine, so the stopped process
    starts no JVM."""
    paths = seed_files(lake, n=2)
    settings = lake.config(retry_attempts=1)
    assert rerun(lake)["total_files_processed"] == 2  # the first load (Spark creates the table)
    paths += [lake.write_parquet("events", f"part {i}, 'x'.parquet", list(range(i * 100, i * 100 + 7)),
                                 days_ago=1 - i * 0.1) for i in (2, 3)]
    rows = sigterm_at_claim(lake, settings)
    for path in paths[2:]:
        assert_interrupted(rows[str(path)])
    assert_lock_free(settings, "events")
    assert rerun(lake)["total_files_processed"] == 2
    assert target_rows(spark, settings, "events") == expected_rows(paths)
    assert set(tracker_statuses(settings).values()) == {("completed", 7)}
    assert validate_here(lake) == 0


def test_a_run_stopped_by_sigterm_in_its_second_batch_keeps_the_first_and_interrupts_only_the_second(spark, lake):
    """With ``max_files_per_run: 1`` one invocation loads three files as three batches; SIGTERM arrives while
    the second is claimed. The first batch stays completed, only the second's file is "interrupted" (no retry
    used), the third was never claimed and stays pending; the next run loads the last two exactly once. Small
    batches: the stopped process starts no JVM."""
    paths = seed_files(lake, n=2)
    settings = lake.config(retry_attempts=1, max_files_per_run=1)
    assert rerun(lake)["total_files_processed"] == 2  # two batches; Spark creates the table
    paths += [lake.write_parquet("events", f"late {i}.parquet", list(range(i * 100, i * 100 + 7)),
                                 days_ago=1 - i * 0.1) for i in (2, 3, 4)]
    rows = sigterm_at_claim(lake, settings, hit=2)
    first, stopped, untouched = (rows[str(p)] for p in paths[2:])
    assert (first["status"], first["row_count"], first["retry_count"] or 0) == ("completed", 7, 0)
    assert_interrupted(stopped)
    assert (untouched["status"], untouched["batch_id"]) == ("pending", None)
    assert_lock_free(settings, "events")
    assert rerun(lake)["total_files_processed"] == 2
    assert target_rows(spark, settings, "events") == expected_rows(paths)
    assert set(tracker_statuses(settings).values()) == {("completed", 7)}
    assert validate_here(lake) == 0


# after_lock, after_claim, during_tracker_commit and after_complete hold no SCD2-specific state (nothing claimed
# yet, nothing written yet, or the table's commit done); the append matrix covers them in CI and the scd2 runs of
# them are in the soak tier, to keep CI within its budget. The CDC cases below kill scd2 batches at more points.
# after_target_commit runs in CI as the full-extract CDC case below.
SCD2_SOAK_ONLY = (faults.AFTER_LOCK, faults.AFTER_CLAIM, faults.DURING_TRACKER_COMMIT, faults.AFTER_COMPLETE,
                  faults.AFTER_TARGET_COMMIT)
# The killed batch goes through the small-batch engine (delta-rs, small_keyed.py) with its default settings; the
# two points of the Spark path's keyed writer that differ from the engine's run with the engine off as well.
SCD2_POINTS = [*[(p, "delta-rs") if p not in SCD2_SOAK_ONLY else pytest.param(p, "delta-rs", marks=pytest.mark.soak)
                 for p in POINTS if p != faults.AFTER_CHANGE_RECORD],
               (faults.AFTER_CHANGE_RECORD, "delta-rs"), (faults.DURING_TARGET_WRITE, "spark"),
               (faults.AFTER_CHANGE_RECORD, "spark")]


@pytest.mark.parametrize(("point", "engine"), SCD2_POINTS)
def test_scd2_sigkill_at_each_protocol_point_then_rerun_leaves_history_exact(spark, lake, instance, point, engine):
    from loader_assets.api import run_pipeline
    from loader_assets.scd2 import scd2_violations
    from loader_assets_tests.integration.test_scd2_load import (
        customers_table,
        drop,
        ordered,
        t,
        table_state,
        version,
    )

    settings = lake.config(tables=[customers_table()], small_batch_max_bytes=(32 << 20) if engine == "delta-rs" else 0)
    drop(lake, "01.parquet", [(1, "ann", "a@x", "gold", t(1)), (2, "bob", "b@x", "free", t(1))], days_ago=3)
    # the first load is not under test: in this process (no JVM start), so the killed run hits the MERGE path
    assert run_pipeline(settings, instance=instance, run_checks=False).total_files_processed == 1
    drop(lake, "02.parquet", [(1, "anne", "a@x", "gold", t(2)), (3, "cy", "c@x", "free", t(2))], days_ago=2)
    code, _, err = cli(lake, "run", kill_at=point)
    assert code == -signal.SIGKILL, err[-2000:]
    summary = rerun(lake)
    if point in COMMITTED_BEFORE_KILL:
        assert summary["total_files_processed"] == 0  # recovered as committed, not merged again
    assert table_state(spark, settings) == ordered([
        version(1, "ann", "a@x", "gold", t(1), t(2)), version(1, "anne", "a@x", "gold", t(2), None),
        version(2, "bob", "b@x", "free", t(1), None), version(3, "cy", "c@x", "free", t(2), None)])
    assert scd2_violations(spark, settings.table_path("customers"), settings.tables[0]).ok
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("customers")
    assert {(os.path.basename(r["file_path"]), r["status"], r["row_count"]) for r in tracker.read().to_pylist()} == {
        ("01.parquet", "completed", 2), ("02.parquet", "completed", 2)}
    assert_lock_free(settings, "customers")
    assert validate_here(lake) == 0
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('customers')}`").orderBy("version").collect()
    assert ("delta-rs" in str(history[-1]["engineInfo"])) == (engine == "delta-rs")  # the batch took that engine


@pytest.mark.parametrize("round_no", [1, pytest.param(2, marks=pytest.mark.soak)])  # a second round: soak tier
def test_four_processes_racing_on_one_table_one_writer_at_a_time(spark, lake, round_no):
    paths = seed_files(lake, n=8)
    # several batches, so the racers interleave; waiting racers must outlast the others' loads on a busy machine
    settings = lake.config(max_files_per_run=3, lock_wait_seconds=1800)
    racers = [cli(lake, "run", "--json", wait=False) for _ in range(4)]
    results = [(p.wait(timeout=900), *p.communicate()) for p in racers]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert sum(json.loads(out)["total_files_processed"] for _, out, _ in results) == 8
    assert target_rows(spark, settings, "events") == expected_rows(paths)
    assert set(tracker_statuses(settings).values()) == {("completed", 7)}
    # every commit is one batch, and batch numbers grow with commit versions: one writer at a time
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table_path('events')}`").orderBy("version").collect()
    seqs = [json.loads(h["userMetadata"])["batch_seq"] for h in history]
    assert len(history) == 3 and seqs == sorted(seqs) and len(set(seqs)) == 3


@pytest.mark.parametrize(("max_files", "point", "hit"), [
    (2, faults.AFTER_TARGET_COMMIT, 2),  # the second reload batch committed, its run killed before completing
    (1, faults.DURING_TARGET_WRITE, 3),  # the third reload batch killed in the middle of its write
])
def test_append_reload_after_reset_killed_mid_way_keeps_each_row_once(spark, lake, instance, max_files, point, hit):
    from loader_assets.api import run_pipeline

    paths = [lake.write_parquet("events", f"f{i}.parquet", list(range(i * 10, i * 10 + 10)), days_ago=3 - i * 0.1)
             for i in range(6)]
    settings = lake.config(max_files_per_run=max_files)
    expected = sorted((i * 10 + j, f"n{i * 10 + j}", str(p)) for i, p in enumerate(paths) for j in range(10))
    assert run_pipeline(settings, instance=instance, run_checks=False).total_rows_loaded == 60  # no JVM start
    code, _, err = cli_here(lake, "reset-state", "--yes")
    assert code == 0, err[-2000:]
    code, _, err = cli(lake, "run", kill_at=point, hit=hit)
    assert code == -signal.SIGKILL, err[-2000:]
    summary = rerun(lake)
    assert summary["total_files_failed"] == 0
    rows = target_rows(spark, settings, "events")
    assert len(rows) == 60 and rows == expected
    assert set(tracker_statuses(settings).values()) == {("completed", 10)}
    assert validate_here(lake) == 0


def test_scd2_reload_after_reset_killed_between_change_record_and_table(spark, lake, instance):
    """The scd2 crash window of the redesign: the change record took a batch, the table did not. The record's
    rows of that batch do not count, are deleted by the next run, and the reload still recognises every row."""
    from loader_assets.api import run_pipeline
    from loader_assets_tests.integration.test_reset_and_reload import (
        HISTORY,
        csv_customers,
        history,
        write_extracts,
    )

    write_extracts(lake)
    settings = lake.config(tables=[csv_customers()], max_files_per_run=2)
    assert run_pipeline(settings, instance=instance, run_checks=False).total_files_processed == 5
    # a new extract, so the killed run has a change row to record that is not in the record yet
    lake.write_bytes("customers", "extract_6.csv",
                     b"customer_id,name,email,updated_at\n4,dora,d@x,2025-01-06T00:00:00\n", days_ago=0.5)
    code, _, err = cli_here(lake, "reset-state", "--yes")
    assert code == 0, err[-2000:]
    code, _, err = cli(lake, "run", kill_at=faults.AFTER_CHANGE_RECORD, hit=3)  # the third batch: extract 5 and 6
    assert code == -signal.SIGKILL, err[-2000:]
    summary = rerun(lake)
    assert summary["total_files_failed"] == 0
    expected = sorted([*[h for h in HISTORY if h[0] != 4], (4, "dee", "d@x", 3, 6, False),
                       (4, "dora", "d@x", 6, None, True)], key=str)
    assert history(spark, settings) == expected
    assert validate_here(lake) == 0


CDC_CASES = {  # scenario -> (table overrides, first files, the killed run's file, expected versions)
    "rethread": ({}, [[(1, "A", "x", 1, "U")], [(1, "A", "y", 3, "U")]], [(1, "B", "z", 2, "U")],
                 [(1, "A", "x", 1, 2, False), (1, "B", "z", 2, 3, False), (1, "A", "y", 3, None, True)]),
    "delete": ({}, [[(1, "A", "x", 1, "U"), (2, "C", "x", 1, "U")]], [(1, "A", "x", 2, "D"), (2, "D", "x", 3, "U")],
               [(1, "A", "x", 1, 2, False), (2, "C", "x", 1, 3, False), (2, "D", "x", 3, None, True)]),
    "full_extract": ({"extract_mode": "full", "hard_deletes": "invalidate", "delete_condition": None},
                     [[(1, "A", "x", 1, "U"), (2, "B", "x", 1, "U")], [(1, "A", "x", 3, "U"), (2, "B", "x", 3, "U")]],
                     [(1, "A2", "x", 2, "U")],  # a late extract without key 2: deleted on day 2, back on day 3
                     [(1, "A", "x", 1, 2, False), (1, "A2", "x", 2, 3, False), (1, "A", "x", 3, None, True),
                      (2, "B", "x", 1, 2, False), (2, "B", "x", 3, None, True)]),
}
# CI kills two cases at two points (the scd2 matrix above covers during_target_write); the rest is soak.
CDC_CI = {("rethread", faults.AFTER_CHANGE_RECORD), ("full_extract", faults.AFTER_TARGET_COMMIT)}
CDC_POINTS = [*sorted(CDC_CI),
              *[pytest.param(case, point, marks=pytest.mark.soak) for case in CDC_CASES
                for point in (faults.AFTER_CHANGE_RECORD, faults.DURING_TARGET_WRITE, faults.AFTER_TARGET_COMMIT)
                if (case, point) not in CDC_CI]]


@pytest.mark.parametrize(("case", "point"), CDC_POINTS)
def test_cdc_batch_killed_at_a_protocol_point_then_rerun_leaves_the_history_exact(spark, lake, instance, case,
                                                                                   point):
    """The re-thread, delete and full-extract paths killed at a point of their batch: the rerun recovers (the
    change rows of an uncommitted batch do not count and are deleted) and the history is exactly the one the
    change rows define."""
    from loader_assets_tests.integration.test_cdc import Feed

    overrides, first, killed, expected = CDC_CASES[case]
    feed = Feed(lake, spark, instance, **overrides)
    for rows in first:
        feed.load(*rows)
    feed.count += 1
    feed.write(*killed, name=f"f{feed.count:02d}.parquet")
    code, _, err = cli(lake, "run", kill_at=point)
    assert code == -signal.SIGKILL, err[-2000:]
    summary = rerun(lake)
    assert summary["total_files_failed"] == 0
    assert feed.versions() == sorted(expected, key=repr)
    assert validate_here(lake) == 0


def test_expectation_counts_survive_a_kill_between_the_target_commit_and_the_tracker(spark, lake, instance):
    """The counts ride in the batch's commit: recovery completes the files with them, nothing counted twice."""
    from loader_assets.api import run_pipeline

    table = {"table_name": "sales", "source_path": "landing/sales", "file_format": "csv",
             "read_options": {"inferSchema": True},
             "expectations": [{"name": "not_negative", "condition": "amount >= 0", "action": "drop"},
                              {"name": "not_huge", "condition": "amount < 1000", "action": "quarantine"}]}
    lake.write_bytes("sales", "a.csv", b"id,amount\n1,5\n2,-1\n3,2000\n", days_ago=1)
    settings = lake.config(tables=[table])
    code, _, err = cli(lake, "run", "--skip-checks", kill_at=faults.AFTER_TARGET_COMMIT)
    assert code == -signal.SIGKILL, err[-2000:]

    summary = run_pipeline(settings, instance=instance, run_checks=False)  # recovery, in this process

    assert summary.total_files_processed == 0  # recovered as committed, not loaded again
    (row,) = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("sales").read().to_pylist()
    assert (row["status"], row["row_count"], row["quarantined_rows"]) == ("completed", 1, 1)
    assert json.loads(row["expectation_results"]) == {"rows": 3, "failed": {
        "not_negative": {"rows": 1, "sample": '{"id":2,"amount":-1}'},
        "not_huge": {"rows": 1, "sample": '{"id":3,"amount":2000}'}}}
    quarantine = spark.read.format("delta").load(settings.quarantine_path("sales"))
    assert [(r["expectation"], r["raw_record"]) for r in quarantine.collect()] == [
        ("not_huge", '{"id":3,"amount":2000}')]
    assert [tuple(r) for r in spark.read.format("delta").load(settings.table_path("sales"))
            .select("id", "amount").collect()] == [(1, 5)]


def test_the_run_after_a_kill_loads_the_killed_batch_even_behind_a_failing_file(spark, lake):
    """Model soak seed 1084: with ``max_files_per_run: 1``, the run after a kill spent its first batch on a
    corrupt file, and the killed batch's file (failed for retry by recovery in that same run) waited for the
    next invocation. Every file no run of an invocation has tried is its work."""
    lake.config(max_files_per_run=1, retry_backoff_seconds=3600, tables=[
        {"table_name": "events", "source_path": "landing/events", "file_format": "parquet"}])
    bad = lake.write_bytes("events", "a.parquet", b"garbage", days_ago=2.0)
    good = lake.write_parquet("events", "b.parquet", [1, 2], days_ago=1.9)
    code, _, err = cli(lake, "run", kill_at=faults.DURING_TARGET_WRITE)  # a fails; b's write is killed
    assert code == -signal.SIGKILL, err[-2000:]
    assert cli_here(lake, "retry", "--table", "events", "--file", str(bad))[0] == 0
    code, out, err = cli_here(lake, "run", "--json", "--skip-checks")
    assert code == 1, err[-3000:]  # a fails again
    summary = json.loads(out)
    assert (summary["total_files_processed"], summary["total_files_failed"]) == (1, 1), summary
    settings = lake.config(max_files_per_run=1, retry_backoff_seconds=3600, tables=[
        {"table_name": "events", "source_path": "landing/events", "file_format": "parquet"}])
    assert target_rows(spark, settings, "events") == [(1, "n1", str(good)), (2, "n2", str(good))]
    statuses = tracker_statuses(settings)
    assert statuses[str(good)] == ("completed", 2) and statuses[str(bad)][0] == "failed"
