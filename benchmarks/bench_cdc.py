"""P11 and P12: change data capture at size.

P11, late rows: a ``--keys``-key scd2 dimension that has had one round of changes, then a batch of ``--changed``
changes of which ``--late`` arrive late (their sequence falls inside a closed version, which they split). The
loader's time for that batch against its time for the same batch with every row in order, each into its own copy
of the same table (built the same way, untimed). Target: <= 1.5x. Both tables are checked against their change
records (``keyed_report``), and the late table must hold exactly one more version per late row.

P12, scd1: a ``--keys``-key scd1 table and ``--files`` files of ``--changed`` upserts each, through the loader,
against a hand-written upsert MERGE (newer sequence wins) applied file by file to a copy of the same table, in
``--repeats`` rounds on fresh tables with the sides taking turns going first; medians compared. Target:
<= 1.00x. The two tables must end identical in every round.

    python -m benchmarks.bench_cdc late --keys 1000000 --changed 100000
    python -m benchmarks.bench_cdc scd1 --keys 1000000 --files 5 --changed 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from benchmarks import _common as common
from loader_assets.api import run_pipeline
from loader_assets.settings import LoaderSettings

BASE = datetime(2025, 1, 1, tzinfo=UTC)
LATE_TARGET = 1.5
SCD1_TARGET = 1.0


def write_rows(path: Path, ids: list[int], names: list[str], hours: list[int], mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "name": pa.array(names),
        "tier": pa.array(["pro" if i % 3 == 0 else "free" for i in ids]),
        "updated_at": pa.array([BASE + timedelta(hours=h) for h in hours], pa.timestamp("us", tz="UTC")),
    }), path)
    os.utime(path, (mtime, mtime))


def load(settings: LoaderSettings, instance: dg.DagsterInstance) -> tuple[float, Any]:
    return common.timed(lambda: run_pipeline(settings, instance=instance, log_level="WARNING"))


def _scd2_lake(root: Path, keys: int, changed: int, rng: random.Random) -> tuple[LoaderSettings, list[int]]:
    settings = common.write_config(root, {
        "table_name": "customers", "source_path": "landing/customers", "loading_strategy": "scd2",
        "primary_keys": ["customer_id"], "tracking_columns": ["name"], "scd2_sequence_column": "updated_at"})
    ids = list(range(1, keys + 1))
    landing = root / "landing" / "customers"
    now = time.time()
    write_rows(landing / "000.parquet", ids, [f"n{i}-0" for i in ids], [0] * keys, now - 7200)
    first = sorted(rng.sample(ids, changed))
    write_rows(landing / "001.parquet", first, [f"n{i}-2" for i in first], [20] * changed, now - 7100)
    return settings, first


def run_late(keys: int = 1_000_000, changed: int = 100_000, late: float = 0.10, seed: int = 5,
             workdir: Path | None = None) -> dict[str, Any]:
    """P11 (see the module docstring)."""
    from loader_assets.checks import keyed_report

    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p11-"))
    spark = common.spark_session()
    rng = random.Random(seed)
    lakes = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for side in ("in_order", "late"):
            settings, first = _scd2_lake(root / side, keys, changed, random.Random(seed))
            load(settings, instance)  # untimed: the dimension and its first round of changes
            lakes[side] = (settings, first)
        batch = sorted(rng.sample(lakes["late"][1], changed))  # keys whose version from hour 20 is current
        late_keys = set(rng.sample(batch, int(changed * late)))
        names = [f"n{i}-3" for i in batch]
        for side, (settings, _) in lakes.items():
            hours = [10 if side == "late" and i in late_keys else 30 for i in batch]  # 10: inside [0, 20)
            write_rows(Path(settings.table("customers").source_path) / "002.parquet", batch, names, hours,
                       time.time() - 60)
        before = {side: spark.read.format("delta").load(s.table_path("customers")).count()
                  for side, (s, _) in lakes.items()}
        in_order_seconds, _ = load(lakes["in_order"][0], instance)
        late_seconds, _ = load(lakes["late"][0], instance)
    after = {side: spark.read.format("delta").load(s.table_path("customers")).count() for side, (s, _) in lakes.items()}
    # in order: a new version per key; late: a version per key too (the late row splits the closed one)
    assert after["in_order"] - before["in_order"] == changed, (before, after)
    assert after["late"] - before["late"] == changed, (before, after)
    for settings, _ in lakes.values():
        violations, difference = keyed_report(spark, settings.tables[0], settings)
        assert difference.ok and violations is not None and violations.ok, (violations, difference)
    ratio = late_seconds / in_order_seconds
    return common.result(
        "P11", f"scd2 batch of {changed:,} changes, {late:.0%} late, into {keys:,} keys", late_seconds,
        in_order_seconds, LATE_TARGET, "<= 1.5x the same batch in order", ratio <= LATE_TARGET,
        keys=keys, changed=changed, late_rows=len(late_keys), python_peak_rss_mb=common.python_peak_rss_mb())


def upsert_merge(spark: Any, path: str, updates: Path) -> None:  # noqa: ANN401
    """A hand-written scd1 upsert: newer sequence wins, new keys are inserted."""
    from delta.tables import DeltaTable

    source = spark.read.parquet(str(updates))
    (DeltaTable.forPath(spark, path).alias("t").merge(source.alias("s"), "t.customer_id = s.customer_id")
     .whenMatchedUpdateAll(condition="s.updated_at > t.updated_at").whenNotMatchedInsertAll().execute())


def _scd1_round(root: Path, keys: int, files: int, changed: int, seed: int,
                instance: dg.DagsterInstance) -> dict[str, Any]:
    """One round's fixture (untimed): the loader's scd1 table of ``keys`` keys loaded, a copy of it without the
    audit columns for the baseline, and ``files`` change files (the same in every round: ``seed``) landed for
    the loader and kept aside for the baseline."""
    spark = common.spark_session()
    rng = random.Random(seed)
    settings = common.write_config(root, {
        "table_name": "customers", "source_path": "landing/customers", "loading_strategy": "scd1",
        "primary_keys": ["customer_id"], "scd2_sequence_column": "updated_at"})
    landing = root / "landing" / "customers"
    hidden = root / "hidden"
    ids = list(range(1, keys + 1))
    now = time.time()
    write_rows(landing / "000.parquet", ids, [f"n{i}-0" for i in ids], [0] * keys, now - 7200)
    changes = []
    for n in range(1, files + 1):
        picked = sorted(rng.sample(ids, changed))
        write_rows(hidden / f"{n:03d}.parquet", picked, [f"n{i}-{n}" for i in picked], [n] * changed, now - 7200 + n)
        changes.append(hidden / f"{n:03d}.parquet")
    load(settings, instance)  # the initial table
    baseline = str(root / "baseline")
    spark.read.format("delta").load(settings.table_path("customers")).drop(
        "_source_file", "_load_timestamp", "_batch_id").write.format("delta").save(baseline)
    for path in changes:  # the loader's copies land now; the baseline reads the ones kept aside
        shutil.copy2(path, landing / path.name)
    return {"settings": settings, "baseline": baseline, "changes": changes, "instance": instance}


def run_scd1(keys: int = 1_000_000, files: int = 5, changed: int = 100_000, seed: int = 7, repeats: int = 3,
             workdir: Path | None = None) -> dict[str, Any]:
    """P12 (see the module docstring): ``repeats`` rounds, each on a table of its own, the sides taking turns
    going first; the medians of each side's rounds are compared."""
    root = Path(workdir or tempfile.mkdtemp(prefix="bench-p12-"))
    spark = common.spark_session()

    def baseline(fixture: dict[str, Any]) -> None:
        for path in fixture["changes"]:
            upsert_merge(spark, fixture["baseline"], path)

    with dg.DagsterInstance.ephemeral() as instance, common.loader_phases() as phases:
        rounds = common.alternating_rounds(
            repeats, lambda n: _scd1_round(root / f"round-{n}", keys, files, changed, seed, instance),
            lambda fixture: load(fixture["settings"], fixture["instance"])[1], baseline, phases)
    columns = ["customer_id", "name", "tier", "updated_at"]
    for timed_round in rounds:
        summary, fixture = timed_round["loader_result"], timed_round["fixture"]
        assert summary.success and summary.total_files_processed == files, summary.to_json()
        assert common.same_rows(spark, fixture["settings"].table_path("customers"), fixture["baseline"], columns), \
            "tables differ"
    loader_seconds = statistics.median(r["loader_seconds"] for r in rounds)
    baseline_seconds = statistics.median(r["baseline_seconds"] for r in rounds)
    ratio = loader_seconds / baseline_seconds
    return common.result(
        "P12", f"scd1: {files} files of {changed:,} upserts into {keys:,} keys", loader_seconds, baseline_seconds,
        SCD1_TARGET, "<= 1.00x a hand-written upsert MERGE", ratio <= SCD1_TARGET,
        keys=keys, files=files, changed=changed, repeats=repeats,
        rounds=[{"first": r["first"], "loader_seconds": round(r["loader_seconds"], 3),
                 "baseline_seconds": round(r["baseline_seconds"], 3),
                 "ratio": round(r["loader_seconds"] / r["baseline_seconds"], 3)} for r in rounds],
        python_peak_rss_mb=common.python_peak_rss_mb(),
        phases=phases.report(runs=common.median_round(rounds)["runs"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["late", "scd1"])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--changed", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.which == "late":
        outcome = run_late(args.keys, args.changed)
    else:
        outcome = run_scd1(args.keys, args.files, args.changed, repeats=args.repeats)
    text = json.dumps(outcome, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
