"""SCD2 benchmark: the loader's SCD2 path against the canonical Delta-docs SCD2 MERGE written by hand.

Same data, same Spark session, same run: a dimension of ``--keys`` keys, then ``--files`` change files in each of
which ``--changed`` of the keys change a tracking column. The initial load is not timed. Timed:
- loader: ``run_pipeline`` over the change files (full path: Dagster run, lock, tracker, validation, one MERGE
  per batch, row counts, checks);
- baseline: the Delta docs' SCD2 pattern (stage NULL-merge-key inserts + keyed updates, one MERGE), once per file
  in order.
Both tables must end identical (checked), so the comparison is of two correct implementations. ``--repeats``
rounds, each on a dimension of its own, the sides taking turns going first; the medians are compared.

    python -m benchmarks.bench_scd2 --keys 1000000            # the issue's size; writes benchmarks/results/scd2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from loader_assets.api import run_pipeline
from loader_assets.resources.spark import get_or_create_spark
from loader_assets.settings import load_settings

BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def dimension_file(path: Path, ids: list[int], versions: list[int], at: datetime) -> None:
    pq.write_table(
        pa.table({
            "customer_id": pa.array(ids, pa.int64()),
            "name": pa.array([f"name-{i}-{v}" for i, v in zip(ids, versions, strict=True)]),
            "email": pa.array([f"c{i}@example.com" for i in ids]),
            "tier": pa.array(["pro" if i % 3 == 0 else "free" for i in ids]),
            "updated_at": pa.array([at] * len(ids), pa.timestamp("us", tz="UTC")),
        }),
        path,
    )


def make_data(root: Path, keys: int, files: int, changed: float, seed: int) -> list[Path]:
    rng = random.Random(seed)
    landing = root / "landing" / "customers"
    landing.mkdir(parents=True)
    ids = list(range(1, keys + 1))
    versions = [0] * keys
    paths = []
    initial = landing / "000-initial.parquet"
    dimension_file(initial, ids, versions, BASE_TIME)
    os.utime(initial, (time.time() - 7200, time.time() - 7200))
    paths.append(initial)
    for n in range(1, files + 1):
        picked = sorted(rng.sample(ids, max(1, int(keys * changed))))
        for key in picked:
            versions[key - 1] += 1
        path = landing / f"{n:03d}-changes.parquet"
        dimension_file(path, picked, [versions[k - 1] for k in picked], BASE_TIME + timedelta(hours=n))
        os.utime(path, (time.time() - 3600 + n, time.time() - 3600 + n))
        paths.append(path)
    return paths


def canonical_scd2_merge(spark: Any, path: str, updates_path: Path) -> None:  # noqa: ANN401
    """The Delta Lake docs' SCD2 upsert (staged updates with a NULL merge key for the new versions)."""
    from delta.tables import DeltaTable

    target = DeltaTable.forPath(spark, path)
    updates = spark.read.parquet(str(updates_path))
    changed = "NOT (c.name <=> u.name AND c.email <=> u.email)"
    new_versions = (
        updates.alias("u").join(target.toDF().alias("c"), "customer_id")
        .where(f"c.is_current = true AND {changed}").selectExpr("NULL as merge_key", "u.*")
    )
    staged = new_versions.unionByName(updates.selectExpr("customer_id as merge_key", "*"))
    (
        target.alias("c").merge(staged.alias("u"), "c.customer_id = u.merge_key")
        .whenMatchedUpdate(condition=f"c.is_current = true AND {changed}",
                           set={"is_current": "false", "end_date": "u.updated_at"})
        .whenNotMatchedInsert(values={
            "customer_id": "u.customer_id", "name": "u.name", "email": "u.email", "tier": "u.tier",
            "updated_at": "u.updated_at", "effective_date": "u.updated_at", "end_date": "null",
            "is_current": "true"})
        .execute()
    )


def jvm_peak_rss_mb(spark: Any) -> int | None:  # noqa: ANN401
    """Peak resident memory of the Spark driver JVM (local mode: the whole engine), from /proc (Linux)."""
    process = getattr(spark.sparkContext._gateway, "proc", None)
    if process is None:
        return None
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        return None
    return None


def _round(root: Path, keys: int, files: int, changed: float, seed: int,
           instance: dg.DagsterInstance) -> dict[str, Any]:
    """One round's fixture (untimed): the dimension loaded by the loader, a copy of it without the audit columns
    for the baseline, and the change files (the same in every round: ``seed``) landed for the loader."""
    paths = make_data(root, keys, files, changed, seed)
    config = {
        "target_root": "lake", "checkpoint_path": "checkpoints",
        "spark": {"master": "local[*]", "conf": {"spark.driver.memory": "8g"}},
        "tables": [{"table_name": "customers", "source_path": "landing/customers", "file_format": "parquet",
                    "loading_strategy": "scd2", "primary_keys": ["customer_id"],
                    "tracking_columns": ["name", "email"], "scd2_sequence_column": "updated_at",
                    "partitioning": {"start": "2024-01-01"}}],
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(root / "config.yaml")
    spark = get_or_create_spark("local[*]", "bench-scd2", {"spark.driver.memory": "8g"})
    changes = paths[1:]
    hidden = root / "hidden"
    hidden.mkdir()
    for path in changes:
        shutil.move(path, hidden / path.name)
    run_pipeline(settings, instance=instance)
    baseline_path = str(root / "baseline")
    spark.read.format("delta").load(settings.table_path("customers")).drop(
        "_source_file", "_load_timestamp", "_batch_id").write.format("delta").save(baseline_path)
    for path in changes:
        shutil.copy2(hidden / path.name, path)
        os.utime(path, (time.time() - 3600 + int(path.name[:3]), time.time() - 3600 + int(path.name[:3])))
    return {"settings": settings, "baseline": baseline_path, "changes": [hidden / p.name for p in changes],
            "instance": instance}


def run(keys: int, files: int, changed: float, seed: int, repeats: int = 3,
        workdir: Path | None = None) -> dict[str, Any]:
    """``repeats`` rounds, each on a dimension of its own, the loader and the baseline taking turns going first;
    the medians of each side's rounds are compared, and every round's two tables must be identical."""
    from benchmarks._common import alternating_rounds, loader_phases, median_round, same_rows

    root = Path(workdir or tempfile.mkdtemp(prefix="bench-scd2-"))
    spark = get_or_create_spark("local[*]", "bench-scd2", {"spark.driver.memory": "8g"})

    def baseline(fixture: dict[str, Any]) -> None:
        for path in fixture["changes"]:
            canonical_scd2_merge(spark, fixture["baseline"], path)

    with dg.DagsterInstance.ephemeral() as instance, loader_phases() as phases:
        rounds = alternating_rounds(
            repeats, lambda n: _round(root / f"round-{n}", keys, files, changed, seed, instance),
            lambda fixture: run_pipeline(fixture["settings"], instance=fixture["instance"]), baseline, phases)

    columns = ["customer_id", "name", "email", "tier", "effective_date", "end_date", "is_current"]
    identical = True
    for timed_round in rounds:
        summary, fixture = timed_round["loader_result"], timed_round["fixture"]
        assert summary.success and summary.total_files_processed == files, summary.to_json()
        ours = fixture["settings"].table_path("customers")
        identical = identical and same_rows(spark, ours, fixture["baseline"], columns)
    rows = spark.read.format("delta").load(ours).count()  # the last round's (every round's are the same data)
    loader_seconds = statistics.median(r["loader_seconds"] for r in rounds)
    baseline_seconds = statistics.median(r["baseline_seconds"] for r in rounds)
    result = {
        "benchmark": "P2 scd2",
        "keys": keys, "files": files, "changed_fraction": changed, "repeats": repeats,
        "loader_seconds": round(loader_seconds, 2),
        "baseline_seconds": round(baseline_seconds, 2),
        "ratio": round(loader_seconds / baseline_seconds, 3),
        "target_ratio": 1.0,
        "tables_identical": identical,
        "final_rows": rows,
        "rounds": [{"first": r["first"], "loader_seconds": round(r["loader_seconds"], 3),
                    "baseline_seconds": round(r["baseline_seconds"], 3),
                    "ratio": round(r["loader_seconds"] / r["baseline_seconds"], 3)} for r in rounds],
        "phases": phases.report(runs=median_round(rounds)["runs"]),
        "loader_rows_per_second": round(keys * changed * files / loader_seconds),
        "python_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "jvm_driver_peak_rss_mb": jvm_peak_rss_mb(spark),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    if workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--changed", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/scd2.json")
    args = parser.parse_args()
    result = run(args.keys, args.files, args.changed, args.seed, args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
