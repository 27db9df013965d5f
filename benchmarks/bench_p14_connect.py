"""P14: a 1-file batch end to end through the CLI, attached to a Spark Connect server vs with a local session.

Two lakes receive the same file each round; ``loader-assets run`` loads it in a new process, once with
``spark.remote`` (attached to a Spark Connect server with Delta started by ``loader-assets spark-connect-server``
before the rounds, its start reported on its own) and once with a local session (``local[2]``, a JVM started by
the process). Measured from process start to exit, checks included, median of ``repeats`` rounds run
alternately; both tables must hold the same rows after every round (checked). The Connect runs get ``JAVA_HOME``
pointing nowhere: a run that started a JVM of its own would fail.

    python -m benchmarks.bench_p14_connect --rows 1000 --repeats 3
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

from deltalake import DeltaTable

from benchmarks import _common as common

ROOT = Path(__file__).resolve().parents[1]
CONF = common.CONNECT_CONF


def _run(root: Path, **env: str) -> float:
    home = root / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "loader_assets", "run", "--config", str(root / "config.yaml"),
                           "--json"], env={**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, check=False, cwd=ROOT)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["total_files_processed"] == 1, done.stdout
    return seconds


def run(rows: int = 1000, repeats: int = 3, workdir: Path | None = None) -> dict[str, Any]:
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p14-"))
    port = common.free_port()
    table = {"table_name": "events", "source_path": "landing/events"}
    # the small-batch engine off on both sides: it would commit these batches without Spark, and P14 measures
    # what attaching to a Spark Connect server saves a batch that needs Spark
    common.write_config(root / "connect", table, small_batch_max_bytes=0,
                        spark={"master": "local[2]", "remote": f"sc://127.0.0.1:{port}", "conf": CONF})
    common.write_config(root / "local", table, small_batch_max_bytes=0, spark={"master": "local[2]", "conf": CONF})

    with common.connect_server(root, port) as server_start:
        connect, local = [], []
        noon = common.yesterday_noon()
        for n in range(repeats + 1):  # round 0 creates both tables (and warms the server): not measured
            for side in ("connect", "local"):
                common.write_data_files(root / side / "landing" / "events", 1, rows, noon, prefix=f"round{n}",
                                        first_offset=n * rows)
            seconds_connect = _run(root / "connect", JAVA_HOME="/nonexistent/no-java-here")
            seconds_local = _run(root / "local")
            if n:
                connect.append(seconds_connect)
                local.append(seconds_local)
            counts = [DeltaTable(str(root / side / "lake" / "events")).to_pyarrow_dataset().count_rows()
                      for side in ("connect", "local")]
            assert counts == [(n + 1) * rows] * 2, counts
    connect_seconds, local_seconds = statistics.median(connect), statistics.median(local)
    return common.result(
        "P14",
        f"a 1-file batch ({rows:,} rows) through `loader-assets run`, attached to Spark Connect vs a local session",
        connect_seconds,
        local_seconds,
        None,
        "Connect below the local session (no JVM start in the run)",
        connect_seconds < local_seconds,
        connect_runs_seconds=[round(s, 3) for s in connect],
        local_runs_seconds=[round(s, 3) for s in local],
        server_start_seconds=round(server_start, 3),
        jvm_started_by_connect_runs=False,  # JAVA_HOME pointed nowhere and they succeeded
        repeats=repeats,
        baseline="the same batch through `loader-assets run` with a local session (process start to exit)",
    )


def main() -> None:
    common.bench_main(run, __doc__)


if __name__ == "__main__":
    main()
