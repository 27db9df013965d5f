"""Spark Connect client steps of the connect tier, each run as ``python -m loader_assets_tests.connect.client
<sc://url> <step> <dir>`` in a process of its own (conftest explains why). Prints one JSON line."""

from __future__ import annotations

import json
import sys

from deltalake import DeltaTable as RustDeltaTable

from loader_assets.resources.spark import get_or_create_spark
from loader_assets.scd2 import diff, merge_diff
from loader_assets.target import app_id, txn_version
from loader_assets.writers.keyed import delta_txn


def replay(spark, path: str) -> dict:
    """The same append and the same MERGE, each sent twice with the loader's txn: the second is skipped."""
    app = app_id("replayed")
    rows = spark.createDataFrame([(i, f"v{i}") for i in range(10)], "id long, v string")
    for _ in range(2):  # the append writer's options (writers/append.py: batch.txn_options())
        rows.write.format("delta").mode("append").option("txnAppId", app).option("txnVersion", "1").save(path)
    after_append = spark.read.format("delta").load(path).count()
    old = spark.read.format("delta").load(path)
    new = spark.createDataFrame([(i, f"w{i}") for i in range(5, 15)], "id long, v string")
    changes = diff(old, new, ["id"], ["v"]).localCheckpoint()  # fixed before the first MERGE changes `old`
    for _ in range(2):  # the SCD2/SCD1 writers' MERGE (writers/keyed.py)
        with delta_txn(spark, app, 2, "batch-2"):
            merge_diff(spark, path, changes, ["id"], ["v"], ["id", "v"])
    final = sorted((r["id"], r["v"]) for r in spark.read.format("delta").load(path).collect())
    history = RustDeltaTable(path).history()
    return {"after_append": after_append, "final": final, "txn_version": txn_version(path, app),
            "operations": sorted(h["operation"] for h in history)}


def delta_table_api(spark, path: str) -> dict:
    """delta-spark's ``DeltaTable`` over Connect needs the Delta Connect server plugin."""
    from delta.tables import DeltaTable

    spark.range(3).write.format("delta").save(path)
    try:
        return {"rows": DeltaTable.forPath(spark, path).toDF().count()}
    except Exception as error:  # what the server answers
        return {"error": type(error).__name__, "message": str(error).splitlines()[0],
                "sql_rows": spark.sql(f"SELECT count(*) AS n FROM delta.`{path}`").collect()[0]["n"]}


def read_tasks(spark, directory: str) -> dict:
    """Read tasks in full waves over Connect (loader_assets.read_tasks): the client tells the server's cores
    from a planned range, and the split set around a write decides the server's file partitions. Nine small
    parquet files under a split cap that packs them 3, 3, 3 on 2 cores, written once with Spark's split and
    once with the balanced one; the session conf is restored after."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from loader_assets.read_tasks import (
        MAX_PARTITION_BYTES_CONF,
        OPEN_COST_CONF,
        balanced_split,
        session_shape,
        spark_default_split,
        spark_partitions,
        split_for_write,
    )
    from loader_assets.target import files_added_by

    root = Path(directory)
    (root / "landing").mkdir(parents=True)
    paths = []
    for n in range(9):
        path = root / "landing" / f"p{n}.parquet"
        ids = list(range(100 * n, 100 * n + 40))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "name": [f"n{i}" for i in ids]}), path)
        paths.append(str(path))
    sizes = [Path(p).stat().st_size for p in paths]
    cap = 3 * (max(sizes) + 1024) + 1
    spark.conf.set(OPEN_COST_CONF, "1024")
    spark.conf.set(MAX_PARTITION_BYTES_CONF, str(cap))
    shape = session_shape(spark)
    if shape is None:
        return {"shape": None}
    split = balanced_split(sizes, shape)
    written = {}
    for name, chosen in (("spark", None), ("balanced", split)):
        with split_for_write(spark, chosen):
            spark.read.parquet(*paths).write.format("delta").save(str(root / name))
        written[name] = len(files_added_by(str(root / name), 0))
    return {"shape": [shape.slots, shape.min_partitions, shape.max_partition_bytes, shape.open_cost], "cap": cap,
            "split": split, "spark_partitions": len(spark_partitions(sizes, spark_default_split(sizes, shape), 1024)),
            "balanced_partitions": len(spark_partitions(sizes, split, 1024)) if split else None,
            "written": written, "restored": spark.conf.get(MAX_PARTITION_BYTES_CONF),
            "rows": spark.read.format("delta").load(str(root / "balanced")).count()}


STEPS = {"replay": replay, "delta-table-api": delta_table_api, "read-tasks": read_tasks}

if __name__ == "__main__":
    url, step, path = sys.argv[1:4]
    session = get_or_create_spark("unused", "connect-tier", {}, remote=url)
    print(json.dumps(STEPS[step](session, path)))
