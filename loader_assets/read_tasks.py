"""How many Spark tasks a large append batch is read and written in: split sizes that fill the session's cores
to the end (docs/ARCHITECTURE.md, "Read tasks in full waves").

An append's write is a map-only Spark job: each task reads one file partition of the batch and writes one data
file, so the job lasts as long as its tasks' waves over the session's cores. Spark sizes the partitions without
looking at the cores once a batch exceeds ``spark.sql.files.maxPartitionBytes`` per core: 200 parquet files of
0.6 MB on 2 cores become 8 partitions of which the last holds 4 files against the others' 28, so one core
idles through most of the fourth wave. The loader plans the partitions as Spark does
(``spark_partitions``: Spark's FilePartition packing, files largest first, each costing its length plus
``spark.sql.files.openCostInBytes``), models each task as its partition's cost plus one more open cost (a task's
own fixed cost: starting, opening a data file, committing it; ``makespan``), and when a smaller split ends the
modelled job at least ``MIN_GAIN`` sooner, sets ``spark.sql.files.maxPartitionBytes`` to it for the write only
(``balanced_split``): for that batch, 8 partitions of 25 files. Measured on this machine (its 10M rows, the
append alone, same process, splits alternating, medians of 5): Spark's split 9.97 s against 9.32 s for 15
tasks, in the order the model ranks the five splits tried; in a second probe Spark's split 11.79 s, the
model's 8 equal tasks 10.81 s, 15 tasks 10.69 s.

Invariants: a split is only ever chosen at least as large as the batch's largest file, so no file is cut in
pieces that Spark would not cut (a parquet file splits at row groups, which the model does not see); nothing
is chosen when Spark's own split would cut a file, when the session's cores cannot be told (a Spark Connect
client reads them from a planned range, which ``spark.sql.leafNodeDefaultParallelism`` would hide), or when
``spark.sql.files.maxPartitionNum`` is set (Spark would repack). The split may change how many data files
the commit writes (not for the batch above: 8 either way), never which rows. The session conf is set around
the write and restored, as the keyed writers set their txn confs (``writers/keyed.py``, ``delta_txn``): one
load at a time per Spark session.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loader_assets.resources.spark import session_conf

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MAX_PARTITION_BYTES_CONF = "spark.sql.files.maxPartitionBytes"
OPEN_COST_CONF = "spark.sql.files.openCostInBytes"
MIN_PARTITION_NUM_CONF = "spark.sql.files.minPartitionNum"
MAX_PARTITION_NUM_CONF = "spark.sql.files.maxPartitionNum"
LEAF_PARALLELISM_CONF = "spark.sql.leafNodeDefaultParallelism"
MIN_GAIN = 0.03  # a split is chosen only when the modelled job ends at least 3% sooner than with Spark's own
MAX_WAVES = 16  # candidate splits give 1..MAX_WAVES tasks per core

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40, "p": 1 << 50, "pb": 1 << 50}


def parse_bytes(text: str) -> int:
    """A Spark byte-size conf value (``134217728b``, ``128m``, ``4MB``, ``4194304``) in bytes."""
    found = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if found is None or found.group(2).lower() not in _UNITS:
        raise ValueError(f"not a byte size: {text!r}")
    return int(found.group(1)) * _UNITS[found.group(2).lower()]


@dataclass(frozen=True)
class SessionShape:
    """What Spark's file partitioning reads from the session: task slots (cores), the minimum partition number
    it aims at, the split cap and a file's open cost."""

    slots: int
    min_partitions: int
    max_partition_bytes: int
    open_cost: int


def spark_default_split(sizes: Sequence[int], shape: SessionShape) -> int:
    """Spark's split size for these files (FilePartition.maxSplitBytes): the cap, or less when the files with
    their open costs spread over ``min_partitions`` need less, never below one open cost."""
    total = sum(size + shape.open_cost for size in sizes)
    return min(shape.max_partition_bytes, max(shape.open_cost, total // max(1, shape.min_partitions)))


def spark_partitions(sizes: Sequence[int], split: int, open_cost: int) -> list[int]:
    """The cost of each file partition Spark makes of these (whole, unsplit) files with this split size, in
    Spark's order (FilePartition.getFilePartitions: largest first, a partition closed when the next file's
    length would take it past the split; each file costs its length plus the open cost)."""
    partitions: list[int] = []
    cost = 0
    for size in sorted(sizes, reverse=True):
        if cost and cost + size > split:
            partitions.append(cost)
            cost = 0
        cost += size + open_cost
    if cost:
        partitions.append(cost)
    return partitions


def makespan(partitions: Sequence[int], slots: int, task_cost: int) -> int:
    """When the last task ends if the tasks start in order, each on the first free slot, and each lasts its
    partition's cost plus ``task_cost``."""
    free = [0] * max(1, slots)
    for cost in partitions:
        heapq.heappush(free, heapq.heappop(free) + cost + task_cost)
    return max(free)


def balanced_split(sizes: Sequence[int], shape: SessionShape) -> int | None:
    """A split size at least as large as the largest file that ends the modelled job at least ``MIN_GAIN``
    sooner than Spark's own split, or None (Spark's own is kept). Candidates give ``slots`` x 1..``MAX_WAVES``
    partitions; the shortest makespan wins, the larger split (fewer data files) on a tie."""
    if len(sizes) < 2 or shape.slots < 1:
        return None
    default = spark_default_split(sizes, shape)
    largest = max(sizes)
    if largest > default:
        return None  # Spark cuts a file at this split: where it cuts depends on row groups the model does not see
    task_cost = shape.open_cost
    baseline = makespan(spark_partitions(sizes, default, shape.open_cost), shape.slots, task_cost)
    total = sum(size + shape.open_cost for size in sizes)
    best: tuple[int, int] | None = None  # (makespan, -split)
    for waves in range(1, MAX_WAVES + 1):
        split = max(largest, -(-total // (shape.slots * waves)))
        if split >= default:
            continue
        candidate = (makespan(spark_partitions(sizes, split, shape.open_cost), shape.slots, task_cost), -split)
        if best is None or candidate < best:
            best = candidate
    if best is None or best[0] > baseline * (1 - MIN_GAIN):
        return None
    return -best[1]


_RANGE_SPLITS = re.compile(r"Range \(0, 1, step=1, splits=(\d+)\)")


def _task_slots(spark: SparkSession, leaf: str | None) -> int | None:
    """The session's default parallelism (its cores), or None if it cannot be told. A classic session asks its
    SparkContext. A Spark Connect client has none; there, the plan of a one-row range says how many splits the
    server gives a leaf (its default parallelism, unless ``spark.sql.leafNodeDefaultParallelism`` is set, and
    then the cores cannot be told): one planning round trip, no job."""
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:  # Spark Connect: no SparkContext in the client
        pass
    if leaf:
        return None
    try:
        plan = str(spark.sql("EXPLAIN SELECT id FROM range(1)").collect()[0][0])
    except Exception:
        return None
    found = _RANGE_SPLITS.search(plan)
    return int(found.group(1)) if found else None


def session_shape(spark: SparkSession) -> SessionShape | None:
    """The session's cores and file-partitioning confs, or None when the cores cannot be told or
    ``spark.sql.files.maxPartitionNum`` is set."""
    conf = spark.conf
    if conf.get(MAX_PARTITION_NUM_CONF, None):
        return None
    leaf = conf.get(LEAF_PARALLELISM_CONF, None)
    slots = _task_slots(spark, leaf)
    if slots is None:
        return None
    minimum = conf.get(MIN_PARTITION_NUM_CONF, None) or leaf or str(slots)
    return SessionShape(slots=slots, min_partitions=int(minimum),
                        max_partition_bytes=parse_bytes(conf.get(MAX_PARTITION_BYTES_CONF, "128m") or "128m"),
                        open_cost=parse_bytes(conf.get(OPEN_COST_CONF, "4m") or "4m"))


def split_for(spark: SparkSession, sizes: Sequence[int]) -> int | None:
    """``balanced_split`` of these files' sizes for this session, or None."""
    if len(sizes) < 2:
        return None
    shape = session_shape(spark)
    return None if shape is None else balanced_split(sizes, shape)


@contextmanager
def split_for_write(spark: SparkSession, split: int | None) -> Iterator[None]:
    """Spark plans the write's file partitions with ``split`` as ``spark.sql.files.maxPartitionBytes`` (read
    when the write's plan is made, not when the DataFrame was built); the session's value is restored after."""
    if split is None:
        yield
        return
    with session_conf(spark, MAX_PARTITION_BYTES_CONF, str(split)):
        yield
