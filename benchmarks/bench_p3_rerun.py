"""P3: a rerun that finds nothing new, over a table whose tracker holds ``--files`` completed files.

Measured:
- loader: ``run_pipeline`` in this process (imports done, nothing cached: a fresh instance and definitions),
  with ``--files`` files in the landing directory, every one completed in the tracker; it must start no Spark
  session. Also the wall time of the same rerun as a fresh ``loader-assets run`` process (imports included).
- baseline: a first load of ``--first-load`` small parquet files through ``run_pipeline`` into a new table
  (the Spark session is started before it and its start time is reported separately).
Target: no Spark session started, <= 3 s wall.

The fixture's files are empty (they are only listed) and its tracker rows are written with delta-rs in a few
commits, as the loader's own transitions would have left them.

    python -m benchmarks.bench_p3_rerun --files 10000
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks import _common as common
from loader_assets.api import run_pipeline
from loader_assets.core.states import FileStatus
from loader_assets.resources import spark as spark_resource
from loader_assets.resources.tracker import DeltaTrackerResource

TARGET_SECONDS = 3.0


def _jvm_running() -> bool:
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


def run(
    files: int = 10_000,
    first_load: int = 100,
    rows_per_file: int = 1_000,
    workdir: Path | None = None,
    cli: bool = True,
) -> dict[str, Any]:
    """Time a no-op rerun over ``files`` completed files against a first load of ``first_load`` files."""
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p3-"))
    moment = common.yesterday_noon()
    settings = common.write_config(root / "rerun", {"table_name": "events", "source_path": "landing/events"})
    paths = common.touch_files(root / "rerun" / "landing" / "events", files, 1_000, moment)
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    seqs = [1 + n // 1_000 for n in range(files)]
    common.write_tracker(
        tracker,
        [
            common.tracker_rows(
                paths,
                "events",
                FileStatus.COMPLETED,
                moment,
                batch_ids=[f"{s:08d}-fixture" for s in seqs],
                batch_seqs=seqs,
                row_count=0,
            )
        ],
    )
    jvm_before = _jvm_running()
    sessions_before = spark_resource.sessions_started()

    with dg.DagsterInstance.ephemeral() as instance:
        rerun_seconds, summary = common.timed(
            lambda: run_pipeline(settings, instance=instance, log_level="WARNING")
        )
        second_seconds, _ = common.timed(
            lambda: run_pipeline(settings, instance=instance, log_level="WARNING")
        )
    assert summary.success and summary.total_files_processed == 0, summary.to_json()
    started_spark = summary.spark_session_started or spark_resource.sessions_started() > sessions_before
    jvm_started = not jvm_before and _jvm_running()

    cli_seconds = None
    if cli:
        home = root / "dagster_home"
        home.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        command = [
            sys.executable,
            "-m",
            "loader_assets",
            "run",
            "--config",
            str(root / "rerun" / "config.yaml"),
            "--json",
        ]
        started = time.perf_counter()
        process = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        cli_seconds = time.perf_counter() - started
        assert process.returncode == 0, process.stderr[-2000:]
        assert json.loads(process.stdout)["spark_session_started"] is False

    # Baseline: a first load of small real files into a new table, the Spark session already up.
    base_settings = common.write_config(
        root / "first", {"table_name": "events", "source_path": "landing/events"}
    )
    common.write_data_files(root / "first" / "landing" / "events", first_load, rows_per_file, moment)
    spark_start_seconds, _ = common.timed(common.spark_session)
    with dg.DagsterInstance.ephemeral() as instance:
        baseline_seconds, first = common.timed(
            lambda: run_pipeline(base_settings, instance=instance, log_level="WARNING")
        )
    assert first.success and first.total_files_processed == first_load, first.to_json()

    met = not started_spark and rerun_seconds <= TARGET_SECONDS
    return common.result(
        "P3",
        f"rerun, nothing new, {files:,} completed files",
        rerun_seconds,
        baseline_seconds,
        None,
        "no Spark; <= 3 s",
        met,
        files=files,
        spark_session_started=started_spark,
        jvm_started_by_rerun=jvm_started,
        files_discovered=summary.total_files_discovered,
        second_rerun_seconds=round(second_seconds, 3),
        cli_process_seconds=round(cli_seconds, 3) if cli_seconds is not None else None,
        first_load_files=first_load,
        first_load_rows=first.total_rows_loaded,
        spark_start_seconds=round(spark_start_seconds, 3),
        baseline=f"first load of {first_load} files (Spark already started)",
    )


def main() -> None:
    common.bench_main(run, __doc__)

if __name__ == "__main__":
    main()
