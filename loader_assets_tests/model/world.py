"""The system under test for the model-based test: a lake with an append and an scd2 table, driven for real.

Files are written to the landing zones with pyarrow; commands go through the real CLI: in this process (``main``,
sharing the test session's warm Spark session) when nothing needs to die, and as separate processes when one
must be SIGKILLed or two must race. Observations read the real Delta tables, trackers and validate's JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from loader_assets.core import faults
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.settings import LoaderSettings, load_settings
from loader_assets.target import open_target, target_txn_version
from loader_assets_tests.conftest import TEST_SPARK_CONF
from loader_assets_tests.model.model import APPEND, SCD2, TABLES, Content

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)  # sequence n of the scd2 table is EPOCH + n seconds
APPEND_SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])
SCD2_SCHEMA = pa.schema([("customer_id", pa.int64()), ("name", pa.string()), ("tier", pa.string()),
                         ("updated_at", pa.timestamp("us", tz="UTC"))])


@dataclass
class ProcessOutcome:
    code: int | None
    killed: bool
    stdout: str
    stderr: str


class World:
    """One lake: landing zones, config, DAGSTER_HOME; commands and observations."""

    def __init__(self, root: Path, max_files_per_run: int, retry_attempts: int, small_batches: bool = True) -> None:
        self.root = root
        self.landing = {APPEND: root / "landing" / APPEND, SCD2: root / "landing" / SCD2}
        for path in self.landing.values():
            path.mkdir(parents=True, exist_ok=True)
        self.home = root / "dagster_home"
        self.home.mkdir(exist_ok=True)
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        config = {
            "target_root": "lake", "checkpoint_path": "checkpoints", "retry_attempts": retry_attempts,
            "retry_backoff_seconds": 0, "lock_wait_seconds": 900, "max_files_per_run": max_files_per_run,
            # the small-batch engines (delta-rs) take both tables' small batches, or Spark takes every batch
            "small_batch_max_bytes": (32 << 20) if small_batches else 0,
            "spark": {"master": "local[2]", "conf": dict(TEST_SPARK_CONF)},
            "tables": [
                {"table_name": APPEND, "source_path": f"landing/{APPEND}", "file_format": "parquet"},
                {"table_name": SCD2, "source_path": f"landing/{SCD2}", "file_format": "parquet",
                 "loading_strategy": "scd2", "primary_keys": ["customer_id"], "tracking_columns": ["name"],
                 "scd2_sequence_column": "updated_at"},
            ],
        }
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.settings: LoaderSettings = load_settings(self.config_path)
        self.first_mtime = time.time() - 3 * 86400

    # ------------------------------------------------------------------------------------------- files
    def path(self, table: str, name: str) -> str:
        return str(self.landing[table] / name)

    def write(self, table: str, path: str, content: Content, mtime: int) -> None:
        """Write ``content`` at ``path`` (atomically: a temp file renamed into place) with modification time
        ``mtime`` (seconds after the world's first file)."""
        target = Path(path)
        temp = target.with_name(f".{target.name}.tmp")
        if content.rows is None:
            temp.write_bytes(b"PAR1 this is not a parquet file " + target.name.encode())
        elif table == APPEND:
            pq.write_table(pa.Table.from_pylist([{"id": i, "name": n} for i, n in content.rows],
                                                schema=APPEND_SCHEMA), temp)
        else:
            pq.write_table(pa.Table.from_pylist(
                [{"customer_id": c, "name": n, "tier": t, "updated_at": EPOCH + timedelta(seconds=s)}
                 for c, n, t, s in content.rows], schema=SCD2_SCHEMA), temp)
        moment = self.first_mtime + mtime
        os.utime(temp, (moment, moment))
        os.replace(temp, target)

    def remove(self, path: str) -> None:
        Path(path).unlink()

    # ------------------------------------------------------------------------------------------- commands
    def cli(self, *args: str) -> tuple[int, str]:
        """The CLI in this process (warm Spark): (exit code, stdout)."""
        from loader_assets.cli import main

        os.environ["DAGSTER_HOME"] = str(self.home)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main([*args, "--config", str(self.config_path)])
        return code, out.getvalue()

    def start(self, *args: str, kill_at: str | None = None, hit: int = 1) -> subprocess.Popen:
        """The CLI as a process of its own (optionally killing itself at a named point)."""
        env = {**os.environ, "DAGSTER_HOME": str(self.home)}
        for name in (faults.KILL_AT_ENV, faults.KILL_AT_HIT_ENV):
            env.pop(name, None)
        if kill_at:
            env[faults.KILL_AT_ENV] = kill_at
            env[faults.KILL_AT_HIT_ENV] = str(hit)
        return subprocess.Popen([sys.executable, "-m", "loader_assets", *args, "--config", str(self.config_path)],
                                env=env, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def finish(process: subprocess.Popen, kill_after: float | None = None, timeout: float = 900) -> ProcessOutcome:
        """Wait for ``process``; with ``kill_after``, SIGKILL it that many seconds after it started if still
        running."""
        killed = False
        if kill_after is not None:
            try:
                process.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                killed = True
        out, err = process.communicate(timeout=timeout)
        killed = killed or process.returncode == -signal.SIGKILL
        return ProcessOutcome(process.returncode, killed, out, err)

    # ------------------------------------------------------------------------------------------- observations
    def append_rows(self, spark: Any) -> list[tuple[int, str, str]]:  # noqa: ANN401
        path = self.settings.table_path(APPEND)
        if open_target(path) is None:  # never committed (a run killed in its first write leaves an empty log)
            return []
        rows = spark.read.format("delta").load(path).select("id", "name", "_source_file").collect()
        return sorted(tuple(r) for r in rows)

    def history(self, spark: Any) -> list[tuple[int, str, str, int, int | None, bool]]:  # noqa: ANN401
        path = self.settings.table_path(SCD2)
        if open_target(path) is None:
            return []
        rows = spark.read.format("delta").load(path).select(
            "customer_id", "name", "tier", "effective_date", "end_date", "is_current").collect()

        def seq(moment: datetime | None) -> int | None:
            return None if moment is None else int((moment.astimezone(UTC) - EPOCH).total_seconds())

        return sorted(((r[0], r[1], r[2], seq(r[3]), seq(r[4]), r[5]) for r in rows), key=repr)

    def delta_rs_commits(self, table: str = APPEND) -> int:
        """Commits of a table made by a small-batch engine (delta-rs names itself in engineInfo)."""
        target = open_target(self.settings.table_path(table))
        return 0 if target is None else sum("delta-rs" in str(e.get("engineInfo")) for e in target.history())

    def batch_seqs(self) -> dict[str, int]:
        """Per table, the highest batch number its tracker has given (0 before any)."""
        return {t: max((r["batch_seq"] or 0 for r in self.tracker_rows(t).values()), default=0) for t in TABLES}

    def committed_since(self, before: dict[str, int]) -> list[str]:
        """The files of the batches numbered above ``before`` (``batch_seqs`` taken earlier) that their tables
        committed (batch_seq <= the target's txn version: what recovery would complete), by batch, then in a
        run's (modification time, path) order; a file that failed in such a batch is not among them."""
        found = []
        for table in TABLES:
            committed = target_txn_version(self.settings.table_path(table), table)
            for path, row in self.tracker_rows(table).items():
                seq = row["batch_seq"] or 0
                if before[table] < seq <= committed and row["status"] in ("completed", "processing"):
                    found.append((table, seq, row["file_modified_time"], path))
        return [path for *_, path in sorted(found)]

    def tracker_rows(self, table: str) -> dict[str, dict[str, Any]]:
        tracker = DeltaTrackerResource.from_settings(self.settings).for_table(table)
        return {r["file_path"]: r for r in tracker.read().to_pylist()}

    def validate(self) -> tuple[int, dict[str, Any]]:
        code, out = self.cli("validate-consistency", "--json")
        return code, json.loads(out)
