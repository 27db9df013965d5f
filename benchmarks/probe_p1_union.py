"""Side probe for P1 (not part of run_all): why writing the loader's per-file union costs more than one read.

Reads ``--files`` parquet files of ``--rows`` rows the way ``reading.read_batch`` does (one DataFrame per
file, unioned) and as one ``spark.read.parquet``, and times each written to a noop sink and as a Delta
append, plus the union coalesced to 2 partitions (to tell per-branch cost from per-output-file cost).

    python -m benchmarks.probe_p1_union --files 200 --rows 5000
"""

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from loader_assets.reading import ExpectedFile, read_batch
from loader_assets.settings import TableSettings


def _timed(label: str, function: Callable[[], Any]) -> Any:  # noqa: ANN401
    started = time.perf_counter()
    outcome = function()
    print(f"{label}: {time.perf_counter() - started:.2f} s", flush=True)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rows", type=int, default=5_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="probe-p1-"))
    try:
        paths = common.write_data_files(root / "landing", args.files, args.rows, common.yesterday_noon())
        spark = common.spark_session()
        table = TableSettings(table_name="events", source_path=str(root / "landing"), file_format="parquet")
        files = [ExpectedFile(str(p), p.stat().st_size, p.stat().st_mtime_ns // 1000) for p in paths]
        spark.read.parquet(*[str(p) for p in paths[:5]]).write.format("noop").mode(
            "overwrite"
        ).save()  # warm-up
        union = _timed(
            "read_batch (per-file reads + union)", lambda: read_batch(spark, table, files, None)
        ).dataframe
        print("union partitions:", union.rdd.getNumPartitions())
        _timed("union -> noop sink", lambda: union.write.format("noop").mode("overwrite").save())
        _timed("union -> delta", lambda: union.write.format("delta").save(str(root / "t1")))
        _timed(
            "union.coalesce(2) -> delta",
            lambda: union.coalesce(2).write.format("delta").save(str(root / "t2")),
        )
        one = spark.read.parquet(*[str(p) for p in paths])
        print("one-read partitions:", one.rdd.getNumPartitions())
        _timed("one read -> noop sink", lambda: one.write.format("noop").mode("overwrite").save())
        _timed("one read -> delta", lambda: one.write.format("delta").save(str(root / "t3")))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
