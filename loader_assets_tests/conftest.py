"""Shared fixtures: one local Spark session with Delta for the whole test session, a fresh lake per test."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from loader_assets.settings import LoaderSettings, load_settings

DAY = 86400

# the public testing kit's fixtures (loader_spark, loader_instance, loader_lake), and pytester for the README test
pytest_plugins = ["loader_assets.testing.fixtures", "pytester"]


@pytest.fixture(autouse=True)
def _preserve_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# Test tables are tiny, so Spark's per-job overheads dominate: one partition for Delta's log replay saves a second
# per Delta operation or so; adaptive query execution off was about 10% faster on three CDC tests (no measurable
# change on model seeds). Whole-stage code generation off was tried (2026-12-01): warm 10-row SCD2 batches in one
# session took 15% less, but a clean CI run showed no gain per file (model 1264 s against 1304 s, scd2_load 245 s
# against 221 s), so it stays on. Production keeps Spark's defaults; the CLIs the fault tests start read this too.
# The CLIs that tests start as processes of their own (to kill them, to race them) live for seconds: their JVM
# compiles with C1 only (-XX:TieredStopAtLevel=1), which starts and runs a short job faster; the test session's
# own long-lived session (the spark fixture) keeps the JVM's default. Both use the class archive
# (resources/jvm_archive.py), built once per machine by pytest_configure below.
TEST_SPARK_CONF = {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false",
                   "spark.databricks.delta.snapshotPartitions": "1", "spark.sql.adaptive.enabled": "false",
                   "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}


def pytest_configure(config: pytest.Config) -> None:
    """Build the machine's Spark class archive once, before any test (or xdist worker) starts a JVM: every
    Spark start in the tiers, in this process and in the CLIs they start, then takes about half the time.
    A failure to build it only costs that time."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller built it before starting workers
        return
    from loader_assets.resources import jvm_archive

    try:
        jvm_archive.build()
    except Exception as error:  # noqa: BLE001 - start without it, saying why
        print(f"(Spark class archive not built, Spark starts without it: {str(error)[:500]})")


@pytest.fixture(scope="session")
def spark() -> Any:
    from loader_assets.resources.spark import get_or_create_spark

    session = get_or_create_spark(
        "local[2]", "loader-assets-tests",
        {**TEST_SPARK_CONF, "spark.driver.memory": "2g", "spark.driver.extraJavaOptions": ""},
    )
    yield session
    session.stop()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


class Lake:
    """A temp project: landing dirs, a config file, and helpers to drop files into it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.landing = root / "landing"
        root.mkdir(parents=True, exist_ok=True)  # a lake below the test's tmp_path (the CDC soak: one per trial)

    def config(self, tables: list[dict[str, Any]] | None = None, **overrides: Any) -> LoaderSettings:
        raw: dict[str, Any] = {
            "target_root": "lake",
            "checkpoint_path": "checkpoints",
            "retry_attempts": 3,
            "retry_backoff_seconds": 0,
            "lock_wait_seconds": 120,
            "spark": {"master": "local[2]", "conf": dict(TEST_SPARK_CONF)},
            "tables": tables
            or [{"table_name": "events", "source_path": "landing/events", "file_format": "parquet",
                 "partitioning": {"granularity": "day", "start": "2024-01-01"}}],
        }
        raw.update(overrides)
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_settings(path)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def write_parquet(self, table: str, name: str, ids: list[int], days_ago: float = 1.0) -> Path:
        path = self.landing / table / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "name": [f"n{i}" for i in ids]}), path)
        set_mtime(path, days_ago)
        return path

    def write_bytes(self, table: str, name: str, data: bytes, days_ago: float = 1.0) -> Path:
        path = self.landing / table / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        set_mtime(path, days_ago)
        return path


def set_mtime(path: Path, days_ago: float) -> None:
    moment = time.time() - days_ago * DAY
    os.utime(path, (moment, moment))


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path)


def target_rows(spark: Any, settings: LoaderSettings, table: str) -> list[tuple[Any, ...]]:
    """The data columns and _source_file of every row, sorted (test data is small)."""
    frame = spark.read.format("delta").load(settings.table_path(table))
    data_columns = [c for c in frame.columns if c not in ("_load_timestamp", "_batch_id")]
    return sorted(tuple(row) for row in frame.select(*data_columns).collect())


def new_tracker(checkpoint_path: Any, table: str = "t", baseline_txn: int = 0) -> Any:
    """A created, empty tracker (runs create theirs with the target's txn version as baseline)."""
    from loader_assets.resources.tracker import DeltaTrackerResource

    tracker = DeltaTrackerResource(checkpoint_path=str(checkpoint_path)).for_table(table)
    tracker.create(baseline_txn=baseline_txn)
    return tracker


# ./dev test hands whole files to three workers (--dist loadfile --no-loadscope-reorder) in collection order. The
# longest files go first, so the run does not end with one worker on a long file while the others idle
# (longest-first stays within 4/3 of the best split). Seconds per file in a clean three-worker run (2026-12-02,
# 2095 s of pytest, 6249 worker-seconds): model 1466, crash windows 1168, cdc 492, connect 484, benchmark smoke
# 341, cdc_orders 317, reset and reload 277, scd2 load 250, testing kit 188, postgres 171, file policies 164,
# bad input 146, log row counts 108, run queue 91; every other file under 100 s keeps its place after these.
LONGEST_FILES_FIRST = (
    "model/test_model_based.py", "fault_injection/test_crash_windows.py", "integration/test_cdc.py",
    "connect/test_connect.py", "integration/test_benchmark_smoke.py", "integration/test_cdc_orders.py",
    "integration/test_reset_and_reload.py", "integration/test_scd2_load.py", "integration/test_testing_kit.py",
    "integration/test_postgres_instance.py", "integration/test_file_policies.py", "integration/test_bad_input.py",
    "integration/test_written_rows_check.py", "integration/test_log_row_counts.py", "integration/test_run_queue.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files in LONGEST_FILES_FIRST order, then the rest as collected; the tests of a file keep their order."""
    here = Path(__file__).parent
    rank = {name: n for n, name in enumerate(LONGEST_FILES_FIRST)}

    def file_rank(item: pytest.Item) -> int:
        path = Path(str(item.fspath))
        return rank.get(path.relative_to(here).as_posix(), len(rank)) if path.is_relative_to(here) else len(rank)

    items.sort(key=file_rank)  # stable


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seed", type=int, default=None,
                     help="model-based test: replay only this seed (loader_assets_tests/model)")
    parser.addoption("--steps", type=int, default=None, help="model-based test: operations per sequence")
