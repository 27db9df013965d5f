"""What the deployment tiers share (connect/, cluster/): two small tables and their files, and the CLI in a
process of its own (each of those tiers' runs must be: a Connect client, or a cluster's driver)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from loader_assets_tests.conftest import set_mtime

CUSTOMERS = pa.schema([("customer_id", pa.int64()), ("name", pa.string()), ("email", pa.string()),
                       ("updated_at", pa.int64())])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_tables() -> list[dict[str, Any]]:
    """An append table ``events`` and an scd2 table ``customers`` (sequence column ``updated_at``)."""
    return [
        {"table_name": "events", "source_path": "landing/events", "file_format": "parquet"},
        {"table_name": "customers", "source_path": "landing/customers", "file_format": "parquet",
         "loading_strategy": "scd2", "primary_keys": ["customer_id"], "tracking_columns": ["name", "email"],
         "scd2_sequence_column": "updated_at"},
    ]


def write_small_files(lake: Any) -> None:
    """Four event files of 500 rows; three customer extracts whose later rows change, repeat and arrive out of
    order (a late row for key 1 re-threads its closed version)."""
    for i in range(4):
        lake.write_parquet("events", f"part {i}.parquet", list(range(i * 1000, i * 1000 + 500)), days_ago=3 - i * 0.5)
    extracts = [
        [(1, "ann", "a@x", 10), (2, "bob", "b@x", 10)],
        [(1, "ann", "a2@x", 30), (2, "bob", "b@x", 30), (3, "cy", "c@x", 30)],
        [(1, "ann", "a1@x", 20), (3, "cy", "c2@x", 40)],  # late for key 1 (20 < 30)
    ]
    for n, extract in enumerate(extracts):
        path = lake.landing / "customers" / f"extract-{n}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([dict(zip(CUSTOMERS.names, r, strict=True)) for r in extract],
                                            schema=CUSTOMERS), path)
        set_mtime(path, 2 - n * 0.5)


def cli(lake: Any, *args: str, env: dict | None = None, wait: bool = True) -> Any:
    """``loader-assets <args> --config <lake's>`` in a new process: (exit code, stdout, stderr), or the running
    process with ``wait=False``. Executors' Python workers use this interpreter (``PYSPARK_PYTHON``)."""
    environ = {**os.environ, "DAGSTER_HOME": str(lake.root / "dagster_home"), "PYSPARK_PYTHON": sys.executable,
               **(env or {})}
    Path(environ["DAGSTER_HOME"]).mkdir(exist_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "loader_assets", *args, "--config", str(lake.config_path)],
                               env=environ, cwd=lake.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def wait_for(marker: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until ``marker`` exists (a paused process's ``<pause file>.reached``), failing with the process's
    stderr if it exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.1)
