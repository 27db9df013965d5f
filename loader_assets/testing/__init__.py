"""Test your own tables with pytest and Dagster's ``materialize()``: a temporary lake, sample files, read-back.

The kit builds a lake in a temporary directory for a config (yours, or table specs written in the test), drops
sample files into its landing zones with the modification times you choose (they decide each file's partition),
materialises partitions of a table's asset with a real Spark session and a real (temporary) Dagster instance,
and reads back the table, the tracker and the check results. A materialisation goes through the same
exactly-once protocol as the CLI and the sensor: the table's lock, its tracker, the Delta txn.

Example (with the fixtures of ``loader_assets.testing.fixtures``)::

    def test_orders_load_once(loader_lake):
        lake = loader_lake(tables=[{"table_name": "orders", "file_format": "parquet"}])
        day = lake.drop_parquet("orders", "a.parquet", [{"id": 1}, {"id": 2}], modified="2025-03-01T10:00")
        result = lake.materialize("orders", day)
        assert result.success and lake.rows("orders", "id") == [(1,), (2,)]
        assert lake.files("orders") == {"a.parquet": ("completed", 2)}
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from loader_assets.assets import build_table_asset, partitions_def_for
from loader_assets.checks import build_table_checks
from loader_assets.core.partitions import partition_keys_for
from loader_assets.definitions import build_definitions, build_resources
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.settings import LoaderSettings, load_settings

__all__ = ["LoaderTestLake"]

Moment = datetime | str | float  # a datetime, an ISO string (UTC when naive), or seconds since the epoch


def _moment(value: Moment) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)


class LoaderTestLake:
    """A lake in ``root``: ``landing/<table>`` zones, ``lake/`` tables, ``checkpoints/`` state, a config file, and a
    Dagster instance to materialise in.

    ``tables`` are table specs as in a config file (``source_path`` defaults to ``landing/<table_name>``);
    ``config`` instead takes the tables of an existing config file, with their sources re-pointed into ``root``
    (so a test exercises exactly the production table specs). ``settings`` override top-level fields
    (``retry_attempts``, ``max_files_per_run``, ...).
    """

    def __init__(self, root: Path, instance: dg.DagsterInstance, tables: Sequence[dict[str, Any]] | None = None,
                 config: str | Path | None = None, **settings: Any) -> None:  # noqa: ANN401
        self.root = Path(root)
        self.instance = instance
        if config is not None:
            source = load_settings(config)
            specs = [t.model_dump(mode="json", exclude_defaults=True) for t in source.tables]
        else:
            specs = [dict(t) for t in tables or []]
        for spec in specs:
            spec["source_path"] = f"landing/{spec['table_name']}"
            (self.root / spec["source_path"]).mkdir(parents=True, exist_ok=True)
        raw = {"target_root": "lake", "checkpoint_path": "checkpoints", "retry_backoff_seconds": 0,
               "lock_wait_seconds": 60, "tables": specs, **settings}
        self.config_path = self.root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(json.loads(json.dumps(raw, default=str))))
        self.settings: LoaderSettings = load_settings(self.config_path)
        self.definitions = build_definitions(self.settings)

    # ------------------------------------------------------------------------------------------- files
    def landing(self, table: str) -> Path:
        return Path(self.settings.table(table).source_path)

    def _place(self, table: str, name: str, modified: Moment) -> tuple[Path, str]:
        path = self.landing(table) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, self.partition_of(table, modified)

    @staticmethod
    def _stamp(path: Path, modified: Moment) -> None:
        moment = _moment(modified).timestamp()
        os.utime(path, (moment, moment))

    def drop_parquet(self, table: str, name: str, rows: Sequence[dict[str, Any]] | pa.Table,
                     modified: Moment, schema: pa.Schema | None = None) -> str:
        """Write a parquet file of ``rows`` into the table's landing zone, modified at ``modified``. Returns the
        partition key the file will belong to."""
        path, key = self._place(table, name, modified)
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=schema)
        pq.write_table(data, path)
        self._stamp(path, modified)
        return key

    def drop_text(self, table: str, name: str, text: str, modified: Moment) -> str:
        """Write a text file (csv, json lines) into the table's landing zone. Returns its partition key."""
        return self.drop_bytes(table, name, text.encode(), modified)

    def drop_bytes(self, table: str, name: str, data: bytes, modified: Moment) -> str:
        """Write raw bytes (a corrupt file, say) into the table's landing zone. Returns its partition key."""
        path, key = self._place(table, name, modified)
        path.write_bytes(data)
        self._stamp(path, modified)
        return key

    def partition_of(self, table: str, modified: Moment) -> str:
        """The partition key of a file modified at ``modified`` (its arrival window)."""
        spec = self.settings.table(table)
        moments = pa.array([_moment(modified)], pa.timestamp("us", tz="UTC"))
        return partition_keys_for(moments, spec.partitioning.granularity.value, spec.partitioning.start)[0].as_py()

    # ------------------------------------------------------------------------------------------- runs
    def materialize(self, table: str, partitions: str | Sequence[str] | None = None,
                    raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        """Materialise ``table``'s asset and its checks for one partition key, or a range (from the first to the
        last of several keys; every window between them is in the run, as in a backfill). ``None``: from the
        first to the last partition holding a file of the landing zone."""
        if partitions is None:
            from loader_assets.core.discovery import list_source_files

            listing = list_source_files(str(self.landing(table)))
            partitions = sorted({self.partition_of(table, m) for m in listing["file_modified_time"].to_pylist()})
        keys = sorted([partitions] if isinstance(partitions, str) else partitions)
        tags = {} if len(keys) == 1 else {ASSET_PARTITION_RANGE_START_TAG: keys[0],
                                          ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
        spec = self.settings.table(table)  # the asset and checks unbound: materialize() binds the resources
        return dg.materialize(
            [build_table_asset(spec, self.settings), *build_table_checks(spec, self.settings)], instance=self.instance,
            resources=build_resources(self.settings), partition_key=keys[0] if len(keys) == 1 else None, tags=tags,
            raise_on_error=raise_on_error)

    # ------------------------------------------------------------------------------------------- read back
    def rows(self, table: str, *columns: str) -> list[tuple]:
        """The table's rows (the given columns, or its source columns), sorted, timestamps as UTC datetimes. For
        test-sized tables: every row comes to the driver."""
        from loader_assets.resources.spark import SparkSessionResource

        spark = SparkSessionResource.from_settings(self.settings).session
        frame = spark.read.format("delta").load(self.settings.table_path(table))
        wanted = list(columns) or [c for c in frame.columns if not c.startswith("_")]
        table = frame.select(*wanted).toArrow()  # timestamps come back as UTC datetimes, not local naive ones
        return sorted(zip(*(table[c].to_pylist() for c in wanted), strict=True), key=repr)

    def files(self, table: str) -> dict[str, tuple[str, int | None]]:
        """The tracker: each file's name (relative to the landing zone) -> (status, row count)."""
        tracker = DeltaTrackerResource.from_settings(self.settings).for_table(table)
        prefix = str(self.landing(table)) + "/"
        return {r["file_path"].removeprefix(prefix): (r["status"], r["row_count"]) for r in tracker.read().to_pylist()}

    def errors(self, table: str) -> dict[str, str]:
        """Each failed file's error (name relative to the landing zone)."""
        tracker = DeltaTrackerResource.from_settings(self.settings).for_table(table)
        prefix = str(self.landing(table)) + "/"
        return {r["file_path"].removeprefix(prefix): r["error_message"] for r in tracker.read().to_pylist()
                if r["status"] == "failed"}

    def checks(self, result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str]]:
        """The run's check results: check name -> (passed, severity). A run in which files failed fails its
        asset step (``on_failed_file: fail_partition``), so its check steps are skipped; the failed-files result
        that run reported itself is included."""
        evaluations = {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events
                       if e.event_type_value == "ASSET_CHECK_EVALUATION"}
        for table in self.settings.tables:
            check = dg.AssetCheckKey(dg.AssetKey(table.table_name), "no_failed_files")
            # the run's own record of the check stays PLANNED; the newest one after it is what the run reported
            records = self.instance.event_log_storage.get_asset_check_execution_history(check, limit=2)
            if (check.name not in evaluations and len(records) == 2 and records[1].run_id == result.run_id
                    and not records[0].run_id and getattr(records[0].evaluation, "passed", None) is not None):
                evaluations[check.name] = records[0].evaluation
        return {name: (e.passed, e.severity.value) for name, e in evaluations.items()}

    def partitions_def(self, table: str) -> dg.TimeWindowPartitionsDefinition:
        return partitions_def_for(self.settings.table(table))
