"""Read tasks in full waves (``loader_assets.read_tasks``) against real Spark: the module's packing is the one
Spark makes, and an append batch whose Spark split would leave a short last task is written in the balanced
split's tasks, with every row once, the session's conf restored, and the same rows as Spark's own split."""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from loader_assets.api import run_pipeline
from loader_assets.read_tasks import (
    MAX_PARTITION_BYTES_CONF,
    OPEN_COST_CONF,
    SessionShape,
    balanced_split,
    session_shape,
    spark_default_split,
    spark_partitions,
)
from loader_assets.target import files_added_by
from loader_assets_tests.conftest import target_rows

pytestmark = pytest.mark.spark


class SessionConf:
    """Set session confs for one test and put back what was there."""

    def __init__(self, spark):
        self.spark, self.saved = spark, {}

    def set(self, key, value):
        self.saved.setdefault(key, self.spark.conf.get(key, None))
        self.spark.conf.set(key, str(value))

    def restore(self):
        for key, value in self.saved.items():
            if value is None:
                self.spark.conf.unset(key)
            else:
                self.spark.conf.set(key, value)


@pytest.fixture
def session_conf(spark):
    conf = SessionConf(spark)
    yield conf
    conf.restore()


def spark_partition_costs(spark, paths, open_cost):
    """Per file partition of Spark's own read of ``paths``, in partition order: its files' lengths plus one open
    cost each, as Spark grouped them (read from ``spark_partition_id`` and ``_metadata``)."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(*paths).select(
        F.spark_partition_id().alias("part"), F.col("_metadata.file_path").alias("file"),
        F.col("_metadata.file_size").alias("size")).distinct()
    grouped = frame.groupBy("part").agg(F.sum(F.col("size") + F.lit(open_cost)).alias("cost"),
                                        F.count("file").alias("files")).orderBy("part").collect()
    return [int(row["cost"]) for row in grouped], sum(int(row["files"]) for row in grouped)


@pytest.mark.parametrize("seed", range(4))
def test_the_modelled_packing_is_the_one_spark_makes(spark, session_conf, tmp_path, seed):
    """Seeded random batches of parquet files of different sizes, under random split caps and open costs: the
    cost of each partition Spark reads, in Spark's order, is what ``spark_partitions`` of
    ``spark_default_split`` gives, and no file is in two partitions."""
    rng = random.Random(seed)
    paths, sizes = [], []
    for n in range(rng.randint(5, 30)):
        rows = rng.randint(1, 3000)
        path = tmp_path / f"f{n:03d}.parquet"
        pq.write_table(pa.table({"id": pa.array(range(rows), pa.int64()),
                                 "text": [f"{rng.random():.12f}" for _ in range(rows)]}), path)
        paths.append(str(path))
        sizes.append(path.stat().st_size)
    open_cost = rng.choice([0, 512, 4096])
    cap = rng.randint(max(sizes), 4 * max(sizes))
    session_conf.set(OPEN_COST_CONF, open_cost)
    session_conf.set(MAX_PARTITION_BYTES_CONF, cap)
    shape = session_shape(spark)
    assert shape is not None and shape.open_cost == open_cost and shape.max_partition_bytes == cap
    split = spark_default_split(sizes, shape)
    costs, files = spark_partition_costs(spark, paths, open_cost)
    assert files == len(paths)
    assert costs == spark_partitions(sizes, split, open_cost), (sizes, split, open_cost)
    assert len(costs) > 1


def test_an_append_batch_is_written_in_the_balanced_tasks_with_every_row_once(spark, lake, instance,
                                                                             session_conf):
    """Nine small parquet files under a split cap that packs them 3, 3, 3 on the session's 2 cores (the third
    task alone in a second wave): the loader writes them in the balanced split's partitions, one data file each;
    the table holds every row once, the post-load check passes, and the session's conf is what it was."""
    settings = lake.config(small_batch_max_bytes=0)
    files = [lake.write_parquet("events", f"p{n}.parquet", list(range(100 * n, 100 * n + 40))) for n in range(9)]
    sizes = [path.stat().st_size for path in files]
    session_conf.set(OPEN_COST_CONF, 1024)
    session_conf.set(MAX_PARTITION_BYTES_CONF, 3 * (max(sizes) + 1024) + 1)
    shape = session_shape(spark)
    assert shape == SessionShape(slots=2, min_partitions=2, max_partition_bytes=3 * (max(sizes) + 1024) + 1,
                                 open_cost=1024)
    spark_own = spark_partitions(sizes, spark_default_split(sizes, shape), 1024)
    split = balanced_split(sizes, shape)
    assert len(spark_own) == 3 and split is not None
    balanced = spark_partitions(sizes, split, 1024)
    assert len(balanced) != len(spark_own)

    summary = run_pipeline(settings, instance=instance)
    assert summary.success and summary.total_files_processed == 9

    path = settings.table_path("events")
    assert len(files_added_by(path, DeltaTable(path).version())) == len(balanced)  # the batch's commit is the last
    assert spark.conf.get(MAX_PARTITION_BYTES_CONF) == str(3 * (max(sizes) + 1024) + 1)
    expected = sorted((i, f"n{i}", str(f)) for n, f in enumerate(files) for i in range(100 * n, 100 * n + 40))
    assert target_rows(spark, settings, "events") == expected


def test_without_a_cap_a_small_batch_keeps_sparks_own_split(spark, lake, instance):
    """Under the session's own confs a small batch is below the cap: Spark spreads it per core already and
    nothing is set (the commit has as many data files as Spark's packing)."""
    settings = lake.config(small_batch_max_bytes=0)
    files = [lake.write_parquet("events", f"q{n}.parquet", list(range(10 * n, 10 * n + 5))) for n in range(5)]
    shape = session_shape(spark)
    assert shape is not None
    sizes = [path.stat().st_size for path in files]
    assert balanced_split(sizes, shape) is None
    summary = run_pipeline(settings, instance=instance)
    assert summary.success and summary.total_files_processed == 5
    path = settings.table_path("events")
    assert len(files_added_by(path, DeltaTable(path).version())) == len(
        spark_partitions(sizes, spark_default_split(sizes, shape), shape.open_cost))

