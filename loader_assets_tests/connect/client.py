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


STEPS = {"replay": replay, "delta-table-api": delta_table_api}

if __name__ == "__main__":
    url, step, path = sys.argv[1:4]
    session = get_or_create_spark("unused", "connect-tier", {}, remote=url)
    print(json.dumps(STEPS[step](session, path)))
