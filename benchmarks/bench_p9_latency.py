"""P9: latency from landing to table, under a running Dagster daemon, with a local session and with Spark Connect.

A landing zone watched by the table's sensor (``sensor_interval_seconds: 5``) under ``dagster-daemon run`` over
the project's workspace and instance settings (``dagster.yaml``: the run queue, one run per table). Files are
dropped one at a time (written to a temporary name and renamed into place; the rename is the file's close), each
after the previous one's rows are committed plus a random pause within one sensor interval, so files land at
every phase of the sensor's schedule. Latency of a file: from its rename to the commit of the Delta version that
holds its rows (the commit's own timestamp in the table's log). Reported: p50 and p95 over ``--files`` files for
each side, and the median phases: noticed (the run is created by a sensor tick), launched (the run's process has
started), committed (the batch's commit). Each side first loads one file that is not counted (the table is
created, the code server and Spark warm up).

- local: each run is a process of its own (Dagster's default run launcher) that starts Spark (a JVM) itself;
- connect: ``spark.remote``, runs attach to one Spark Connect server with Delta started before the files.

Target: p50 under 10 s with Connect. The figure "loader" is Connect's p50, "baseline" the local session's.

    python -m benchmarks.bench_p9_latency --files 20
"""

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from deltalake import DeltaTable

from benchmarks import _common as common
from loader_assets.resources.tracker import DeltaTrackerResource

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = 5
TARGET_P50 = 10.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


class _Side:
    """One lake watched by one daemon (and for Connect, one server)."""

    def __init__(self, root: Path, remote_port: int | None) -> None:
        self.root = root
        spark: dict[str, Any] = {"master": "local[2]", "conf": common.CONNECT_CONF}
        if remote_port:
            spark["remote"] = f"sc://127.0.0.1:{remote_port}"
        self.settings = common.write_config(root, {"table_name": "events", "source_path": "landing/events"},
                                            spark=spark, sensor_interval_seconds=INTERVAL)
        self.landing = root / "landing" / "events"
        self.landing.mkdir(parents=True, exist_ok=True)
        self.home = root / "dagster_home"
        self.home.mkdir(exist_ok=True)
        shutil.copy(ROOT / "dagster.yaml", self.home / "dagster.yaml")
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "LOADER_ASSETS_CONFIG": str(root / "config.yaml"),
                    "PYTHONPATH": str(ROOT)}
        if remote_port:
            self.env["JAVA_HOME"] = "/nonexistent/no-java-here"  # a run that started its own JVM would fail
        self.tracker = DeltaTrackerResource.from_settings(self.settings).for_table("events")
        self.daemon: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "daemon.log", "w")  # noqa: SIM115 - the daemon's lifetime
        self.daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                        str(ROOT / "workspace.yaml")], env=self.env, cwd=ROOT, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.daemon is not None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)

    def drop(self, n: int, rows: int) -> tuple[str, float]:
        """Write file ``n`` and rename it into place: (its path, the moment of the rename)."""
        path = self.landing / f"file-{n:04d}.parquet"
        temp = self.landing.parent / f".file-{n:04d}.tmp"
        pq.write_table(common.data_table(rows, n * rows), temp)
        os.replace(temp, path)
        return str(path), time.time()

    def committed(self, path: str, timeout: float = 600) -> float:
        """The commit timestamp (epoch seconds) of the target version holding ``path``'s rows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = [r for r in self.tracker.read().to_pylist() if r["file_path"] == path]
            if rows and rows[0]["status"] == "completed":
                batch_id = rows[0]["batch_id"]
                for entry in DeltaTable(self.settings.table_path("events")).history(limit=20):
                    if batch_id in str(entry.get("userMetadata", "")):
                        return entry["timestamp"] / 1000
                raise AssertionError(f"{path} completed in batch {batch_id}, which no recent commit names")
            if rows and rows[0]["status"] == "failed":
                raise AssertionError(f"{path} failed: {rows[0]['error_message']}")
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"the daemon exited:\n{(self.root / 'daemon.log').read_text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{path} not committed after {timeout} s:\n"
                             f"{(self.root / 'daemon.log').read_text()[-3000:]}")

    def run_times(self, after: float) -> tuple[float, float] | None:
        """(created, started) epoch seconds of the first run of the table created after ``after``."""
        import dagster as dg

        from loader_assets.assets import TABLE_TAG

        saved = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(self.home)
        try:
            with dg.DagsterInstance.get() as instance:
                records = instance.get_run_records(filters=dg.RunsFilter(tags={TABLE_TAG: "events"}), limit=10)
        finally:
            if saved is None:
                os.environ.pop("DAGSTER_HOME", None)
            else:
                os.environ["DAGSTER_HOME"] = saved
        created = sorted((r.create_timestamp.timestamp(), r.start_time or 0.0) for r in records
                         if r.create_timestamp.timestamp() >= after - 1)
        return created[0] if created else None


def _measure(side: _Side, files: int, rows: int, rng: random.Random) -> dict[str, Any]:
    path, _ = side.drop(0, rows)  # warm-up: creates the table, starts the code server's and Spark's caches
    side.committed(path)
    latencies, noticed, launched, worked = [], [], [], []
    for n in range(1, files + 1):
        time.sleep(rng.uniform(0, INTERVAL))
        path, closed = side.drop(n, rows)
        commit = side.committed(path)
        latencies.append(commit - closed)
        times = side.run_times(closed)
        if times:
            created, started = times
            noticed.append(created - closed)
            if started:
                launched.append(started - created)
                worked.append(commit - started)
    rows_in_table = DeltaTable(side.settings.table_path("events")).to_pyarrow_dataset().count_rows()
    assert rows_in_table == (files + 1) * rows, rows_in_table
    med = statistics.median
    return {
        "p50": round(_percentile(latencies, 0.5), 3), "p95": round(_percentile(latencies, 0.95), 3),
        "latencies": [round(s, 2) for s in latencies],
        "median_phases": {"landing to run created (sensor tick)": round(med(noticed), 2) if noticed else None,
                          "run created to started (queue, run process)": round(med(launched), 2) if launched else None,
                          "run started to commit": round(med(worked), 2) if worked else None},
        "rows": rows_in_table,
    }


def run(files: int = 20, rows: int = 1_000, seed: int = 9, workdir: Path | None = None) -> dict[str, Any]:
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p9-"))
    rng = random.Random(seed)
    port = common.free_port()
    results = {}
    with common.connect_server(root, port):
        for name, remote in (("connect", port), ("local", None)):
            side = _Side(root / name, remote)
            side.start()
            try:
                results[name] = _measure(side, files, rows, rng)
            finally:
                side.stop()
    connect, local = results["connect"], results["local"]
    return common.result(
        "P9",
        f"latency from landing to table under a Dagster daemon (sensor every {INTERVAL} s), p50 of {files} files: "
        "Spark Connect vs a local session",
        connect["p50"],
        local["p50"],
        None,
        f"p50 < {TARGET_P50:.0f} s with Connect",
        connect["p50"] < TARGET_P50,
        connect=connect,
        local=local,
        files=files,
        rows_per_file=rows,
        sensor_interval_seconds=INTERVAL,
        baseline="the same under a local session (each run process starts its own JVM)",
    )


def main() -> None:
    common.bench_main(run, __doc__)


if __name__ == "__main__":
    main()
