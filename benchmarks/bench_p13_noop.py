"""P13: clicking Materialize on a partition that is already loaded: the no-op run with its checks.

The table is loaded first (``loader-assets run``, checks included, in a child process; its checks verify the
files it loaded). Then the partition is materialised again as the UI's launch does it, a Dagster run of the asset
and its checks in a new process: ``dagster asset materialize -m loader_assets.definitions --select <table>
--partition <key>``. The load's checks carried the whole-table verification forward (loader_assets/verification.py),
so every click, the first after the load included, reuses it: each gets ``JAVA_HOME`` pointing nowhere, so a run
that tried to start Spark would fail, and its success is the proof that no JVM was started. The first click is
also reported on its own (``first_click_*``).

Measured, median of ``repeats`` runs:
- loader: the run's own time (RUN_START to RUN_SUCCESS in the event log), the asset step and every check;
- baseline: the same run's load phase alone (the asset step's STEP_START to STEP_SUCCESS);
- also: the process wall time, imports and definitions included (what the UI's run worker pays on top).
Target: no JVM; the run under 5 s.

    python -m benchmarks.bench_p13_noop --files 100 --partitions 4
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType

from benchmarks import _common as common

TARGET_SECONDS = 5.0
ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path, config: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(home), "LOADER_ASSETS_CONFIG": str(config),
            "PYTHONPATH": str(ROOT), **extra}


def _step_seconds(records: list[Any], step_key: str) -> float:
    times = {r.event_log_entry.dagster_event.event_type_value: r.event_log_entry.timestamp for r in records
             if r.event_log_entry.dagster_event and r.event_log_entry.step_key == step_key
             and r.event_log_entry.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")}
    return times["STEP_SUCCESS"] - times["STEP_START"]


def _run_figures(instance: dg.DagsterInstance, run_id: str, table: str) -> dict[str, Any]:
    records = list(instance.get_records_for_run(run_id).records)
    by_type: dict[str, float] = {}
    checks: dict[str, tuple[bool, str]] = {}
    steps: set[str] = set()
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        by_type.setdefault(event.event_type_value, record.event_log_entry.timestamp)
        if record.event_log_entry.step_key:
            steps.add(record.event_log_entry.step_key)
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            checks[data.check_name] = (data.passed, str(data.metadata.get("scope", dg.MetadataValue.text("")).value))
    start, success = DagsterEventType.RUN_START.value, DagsterEventType.RUN_SUCCESS.value
    assert success in by_type, f"run {run_id} did not succeed"
    return {
        "run_seconds": by_type[success] - by_type[start],
        "load_seconds": _step_seconds(records, table),
        "check_seconds": {s: round(_step_seconds(records, s), 3) for s in sorted(steps) if s != table},
        "checks": checks,
    }


def run(files: int = 100, partitions: int = 4, repeats: int = 3, workdir: Path | None = None) -> dict[str, Any]:
    """Load ``files`` files over ``partitions`` day partitions, then re-materialise one partition ``repeats``
    times as the UI does, in a new process without Java."""
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p13-"))
    table = "events"
    common.write_config(root / "lake", {"table_name": table, "source_path": "landing/events"},
                                   spark={"master": "local[2]", "conf": {"spark.ui.enabled": "false"}})
    config = root / "lake" / "config.yaml"
    noon = common.yesterday_noon()
    per_day = max(1, files // partitions)
    for day in range(partitions):
        common.write_data_files(root / "lake" / "landing" / table, per_day, 1_000, noon - day * 86400,
                                prefix=f"day{day}", first_offset=day * per_day * 1_000)
    home = root / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    started = time.perf_counter()
    first = subprocess.run([sys.executable, "-m", "loader_assets", "run", "--config", str(config), "--json"],
                           env=_env(home, config), capture_output=True, text=True, check=False, cwd=ROOT)
    first_load_seconds = time.perf_counter() - started
    assert first.returncode == 0, first.stderr[-3000:]
    loaded = json.loads(first.stdout)
    assert loaded["total_files_processed"] == per_day * partitions, loaded

    key = time.strftime("%Y-%m-%d", time.gmtime(noon))  # yesterday: a loaded partition
    dagster = str(Path(sys.executable).parent / "dagster")

    def click(**env: str) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        process = subprocess.run(
            [dagster, "asset", "materialize", "-m", "loader_assets.definitions", "--select", table,
             "--partition", key], env=_env(home, config, **env), capture_output=True, text=True, check=False,
            cwd=ROOT)
        wall = time.perf_counter() - started
        assert process.returncode == 0, (process.stdout[-2000:], process.stderr[-3000:])
        with dg.DagsterInstance.from_config(str(home)) as instance:
            run_id = instance.get_run_records(limit=1)[0].dagster_run.run_id
            return wall, _run_figures(instance, run_id, table)

    # the load's checks verified the files it loaded and carried the whole-table verification forward: the
    # first click after the load, like every later one, re-reports it without Spark
    walls, figures = [], []
    for _ in range(repeats):
        wall, figure = click(JAVA_HOME="/nonexistent/no-java-here")
        walls.append(wall)
        figures.append(figure)
    first_wall, first_click = walls[0], figures[0]

    last = figures[-1]
    assert last["checks"] and all(passed for passed, _ in last["checks"].values()), last["checks"]
    run_seconds = statistics.median(f["run_seconds"] for f in figures)
    load_seconds = statistics.median(f["load_seconds"] for f in figures)
    met = run_seconds <= TARGET_SECONDS
    return common.result(
        "P13",
        f"no-op materialisation of a loaded partition with its checks ({per_day * partitions:,} files loaded)",
        run_seconds,
        load_seconds,
        None,
        "no JVM; run <= 5 s",
        met,
        jvm_started=False,  # the runs had no Java to start (JAVA_HOME pointed nowhere) and succeeded
        process_wall_seconds=round(statistics.median(walls), 3),
        check_step_seconds=last["check_seconds"],
        checks={name: {"passed": passed, "scope": scope} for name, (passed, scope) in last["checks"].items()},
        first_load_seconds=round(first_load_seconds, 3),
        first_click_run_seconds=round(first_click["run_seconds"], 3),
        first_click_process_wall_seconds=round(first_wall, 3),
        repeats=repeats,
        baseline="the same run's load phase (the asset step) alone",
    )


def main() -> None:
    common.bench_main(run, __doc__)


if __name__ == "__main__":
    main()
