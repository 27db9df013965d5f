"""Property: an scd2 or scd1 table is a function of the set of change rows, not of the order or batching in
which files arrived (issue 12).

For seeded random change streams (8 to 10 files over six overlapping keys, with deletes, rows that repeat a key's
values, nulls in the tracked column, identical rows in two files, and for full extracts keys absent from some
extracts), each trial delivers the files in a random order, in one to three waves, loading after each wave with a
random ``max_files_per_run``, and requires the final table to equal the pure-Python definition
(``model/cdc.py``), audit columns aside. The ``*_in_order_on_spark`` configurations draw streams whose files follow
each other in sequence and deliver them in order but for one swap, so their batches mostly take Spark's in-order
MERGE; every trial reports which engine and which MERGE made its commits (``commit_kinds``), and the CI trials
assert that each path was taken. CI runs ``CI_TRIALS``; the soak tier runs ``LOADER_ASSETS_CDC_TRIALS`` per
configuration (default 34, so 340 orders and batchings over the ten configurations), from trial
``LOADER_ASSETS_CDC_FIRST_TRIAL`` (default 0; trial n loads stream 1000 + n // 4 in order n), one line per trial:

    LOADER_ASSETS_CDC_TRIALS=34 .venv/bin/python -m pytest loader_assets_tests/integration/test_cdc_orders.py -m soak -s
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from loader_assets.api import run_pipeline
from loader_assets.checks import keyed_report
from loader_assets_tests.model.cdc import DELETE, UPSERT, Event, Extract, absences, history, latest

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
SCHEMA = pa.schema([("customer_id", pa.int64()), ("name", pa.string()), ("tier", pa.string()),
                    ("updated_at", pa.timestamp("us", tz="UTC")), ("op", pa.string())])
NAMES = ("ann", "bob", None, "cy")
CONFIGS = {
    "scd2": {"loading_strategy": "scd2", "delete_condition": "op = 'D'"},
    # the same table with every batch on Spark: "scd2" and "scd1" send their batches after the first to the
    # small-batch engine (delta-rs, small_keyed.py), so the two engines meet the same model on the same streams
    "scd2_on_spark": {"loading_strategy": "scd2", "delete_condition": "op = 'D'", "small_batch_max_bytes": 0},
    "scd2_full_invalidate": {"loading_strategy": "scd2", "extract_mode": "full", "hard_deletes": "invalidate"},
    "scd2_full_new_record": {"loading_strategy": "scd2", "extract_mode": "full", "hard_deletes": "new_record"},
    "scd2_full_ignore": {"loading_strategy": "scd2", "extract_mode": "full"},
    "scd1": {"loading_strategy": "scd1", "delete_condition": "op = 'D'"},
    "scd1_on_spark": {"loading_strategy": "scd1", "delete_condition": "op = 'D'", "small_batch_max_bytes": 0},
    "scd1_full_invalidate": {"loading_strategy": "scd1", "extract_mode": "full", "hard_deletes": "invalidate"},
    # streams whose files follow each other in sequence, delivered in order but for one swap of neighbours: most
    # batches have no late row and take Spark's in-order MERGE (writers/keyed.py), which the random orders of
    # the configurations above rarely give
    "scd2_in_order_on_spark": {"loading_strategy": "scd2", "delete_condition": "op = 'D'",
                               "small_batch_max_bytes": 0, "stream": "ordered"},
    "scd1_in_order_on_spark": {"loading_strategy": "scd1", "delete_condition": "op = 'D'",
                               "small_batch_max_bytes": 0, "stream": "ordered"},
}
Row = tuple[int, str | None, str, int, str]  # (customer_id, name, tier, sequence in hours, op)


def stream(seed: int, full: bool, ordered: bool = False) -> list[list[Row]]:
    """A change stream: 8 to 10 files; full extracts are each the whole source at their own sequence; with
    ``ordered``, file n's rows have sequences from 12n + 1 on, so the files follow each other."""
    rng = random.Random(seed)
    files: list[list[Row]] = []
    used: set[tuple[int, int]] = set()
    for number in range(rng.randint(8, 10)):
        if full:
            seq = 10 * (number + 1) + rng.randint(0, 5)  # the extract's time; distinct per extract
            keys = sorted(rng.sample(range(1, 7), rng.randint(1, 6)))
            files.append([(k, rng.choice(NAMES), rng.choice("xy"), seq, "U") for k in keys])
            continue
        rows: list[Row] = []
        for _ in range(rng.randint(1, 4)):
            if files and rng.random() < 0.2:  # an identical row in two files
                rows.append(rng.choice(rng.choice(files)))
                continue
            key, seq = rng.randint(1, 6), (12 * number + rng.randint(1, 12) if ordered else rng.randint(1, 120))
            while (key, seq) in used:
                seq += 1
            used.add((key, seq))
            rows.append((key, rng.choice(NAMES), rng.choice("xy"), seq, "D" if rng.random() < 0.15 else "U"))
        files.append(sorted(set(rows), key=repr))
    return files


def name_of(number: int) -> str:
    return f"f{number:02d}.parquet"


def expected(files: list[list[Row]], config: dict) -> list[tuple]:
    events = {Event(k, s, 0, name_of(i), DELETE if op == "D" else UPSERT, (n, t))
              for i, rows in enumerate(files) for k, n, t, s, op in rows}
    # an identical row in two files is one change row (which file holds it is an audit column)
    unique = {(e.key, e.seq, e.op, e.values): e for e in sorted(events)}
    events = list(unique.values())
    if config.get("extract_mode") == "full" and config.get("hard_deletes", "ignore") != "ignore":
        extracts = [Extract(name_of(i), max(r[3] for r in rows), 0, frozenset(r[0] for r in rows))
                    for i, rows in enumerate(files)]
        events += absences(extracts)
    if config["loading_strategy"] == "scd1":
        return sorted((k, values[0], values[1]) for k, (values, _) in latest(events).items())
    with_flag = config.get("hard_deletes") == "new_record"
    return sorted(((v.key, v.values[0], v.values[1], v.start, v.end, v.current, *((v.deleted,) if with_flag else ()))
                   for v in history(events, deletion_versions=with_flag)), key=repr)


def hours(moment: datetime | None) -> int | None:
    return None if moment is None else int((moment.astimezone(UTC) - EPOCH).total_seconds() // 3600)


def actual(spark, settings, config) -> list[tuple]:
    frame = spark.read.format("delta").load(settings.table_path("customers"))
    if config["loading_strategy"] == "scd1":
        return sorted(tuple(r) for r in frame.select("customer_id", "name", "tier").collect())
    flag = ["is_deleted"] if config.get("hard_deletes") == "new_record" else []
    rows = frame.select("customer_id", "name", "tier", "effective_date", "end_date", "is_current", *flag).collect()
    return sorted(((r[0], r[1], r[2], hours(r[3]), hours(r[4]), *r[5:]) for r in rows), key=repr)


def trial(spark, lake, instance, config_name: str, seed: int, order_seed: int) -> None:
    config = CONFIGS[config_name]
    ordered = config.get("stream") == "ordered"
    files = stream(seed, config.get("extract_mode") == "full", ordered)
    rng = random.Random(order_seed)
    order = list(range(len(files)))
    if ordered:  # in order, but for one swap of neighbours
        swap = rng.randrange(len(files) - 1)
        order[swap], order[swap + 1] = order[swap + 1], order[swap]
    else:
        rng.shuffle(order)
    max_files = rng.randint(1, len(files))
    cuts = sorted(rng.sample(range(1, len(files)), rng.randint(0, 2)))
    waves = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(files)], strict=True)]
    engine_bytes = config.get("small_batch_max_bytes", 32 << 20)
    spec = {"table_name": "customers", "source_path": "landing/customers", "file_format": "parquet",
            "primary_keys": ["customer_id"], "scd2_sequence_column": "updated_at",
            **{k: v for k, v in config.items() if k not in ("small_batch_max_bytes", "stream")}}
    if config["loading_strategy"] == "scd2":
        spec["tracking_columns"] = ["name"]
    settings = lake.config(tables=[spec], max_files_per_run=max_files, small_batch_max_bytes=engine_bytes)
    moment = datetime.now(UTC) - timedelta(days=2)
    for wave in waves:
        for number in wave:
            path = lake.landing / "customers" / name_of(number)
            path.parent.mkdir(parents=True, exist_ok=True)
            records = [dict(zip(SCHEMA.names, (k, n, t, EPOCH + timedelta(hours=s), op), strict=True))
                       for k, n, t, s, op in files[number]]
            pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), path)
            moment += timedelta(minutes=1)
            os.utime(path, (moment.timestamp(), moment.timestamp()))
        summary = run_pipeline(settings, instance=instance, run_checks=False)
        assert summary.total_files_failed == 0, summary.tables["customers"].failed_files
    label = f"{config_name} seed {seed} order {order_seed}: waves {waves}, max_files_per_run {max_files}"
    assert actual(spark, settings, config) == expected(files, config), label
    violations, difference = keyed_report(spark, settings.tables[0], settings)
    assert difference.ok and (violations is None or violations.ok), (label, violations, difference)
    return commit_kinds(settings)


def commit_kinds(settings) -> Counter:
    """How the target's commits were made: by the small-batch engine ("delta-rs", which names itself in
    engineInfo), or by Spark's in-order MERGE or difference MERGE (the ``merge`` of the commit's userMetadata)."""
    kinds: Counter = Counter()
    for commit in DeltaTable(settings.table_path("customers")).history():
        if "delta-rs" in str(commit.get("engineInfo")):
            kinds["delta-rs"] += 1
        merge = json.loads(commit.get("userMetadata") or "{}").get("merge")
        if merge:
            kinds[merge] += 1
    return kinds


# one trial per configuration (each against the model, which no order or batching changes); the soak tier runs
# four orders and batchings of each stream
CI_TRIALS = [(name, 100 + i, 7 * i + 1) for i, name in enumerate(CONFIGS)]


@pytest.mark.spark
@pytest.mark.parametrize(("config_name", "seed", "order_seed"), CI_TRIALS)
def test_the_table_is_a_function_of_the_change_rows(spark, lake, instance, config_name, seed, order_seed):
    kinds = trial(spark, lake, instance, config_name, seed, order_seed)
    if config_name in ("scd2", "scd1"):
        assert kinds["delta-rs"] >= 2, "the small-batch engine took fewer than two of the stream's batches"
    else:  # Spark for every batch: the engine refuses full extracts, and is off for the *_on_spark ones
        assert kinds["delta-rs"] == 0
    if config_name.endswith("_in_order_on_spark"):
        assert kinds["in_order"] >= 2, f"Spark's in-order MERGE took fewer than two batches: {dict(kinds)}"
    elif "full" in config_name:  # a full extract always takes the MERGE of the difference
        assert kinds["in_order"] == 0 and kinds["diff"] >= 1, dict(kinds)


@pytest.mark.soak
@pytest.mark.spark
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_many_orders_and_batchings(spark, tmp_path, instance, config_name):
    from loader_assets_tests.conftest import Lake

    trials = int(os.environ.get("LOADER_ASSETS_CDC_TRIALS", "34"))
    first = int(os.environ.get("LOADER_ASSETS_CDC_FIRST_TRIAL", "0"))  # to continue a soak where one stopped
    started = time.monotonic()
    for number in range(first, first + trials):
        seed = 1000 + number // 4  # four orders and batchings of each stream
        kinds = trial(spark, Lake(tmp_path / f"t{number}"), instance, config_name, seed, number)
        print(f"{config_name} trial {number} (stream {seed}) ok, commits {dict(kinds)} "
              f"({time.monotonic() - started:.0f} s so far)", flush=True)
