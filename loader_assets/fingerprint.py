"""A batch's fingerprint: its rows and two hash sums of ``_source_file``, comparable with what the tracker says.

For a set of rows the fingerprint is (rows, sum of h1, sum of h2), where h1 and h2 are the high (signed) and
low (unsigned) 32-bit halves of Spark's ``xxhash64(_source_file)``, summed as 64-bit (``try_sum``: NULL if a
sum would overflow, which needs 2^31 rows). For the tracker's files of a batch it is the same sums with each
file weighted by its row count, computed on the driver with the same hash (``core.spark_hash``), so no
tracker row goes to the JVM. Equal fingerprints mean the rows are the tracker's files with the tracker's
counts: two different multisets of files with equal fingerprints need both half sums to collide at once
(about 1 in 2^64, the halves of a 64-bit hash being independent). A NULL sum never counts as equal. One
XXH64 pass reads each path once; the Murmur3 pair it replaced (``hash(s)``, ``hash(s, s)``) read it three
times.

The rows' side is ``fingerprint_columns`` grouped by ``_batch_id`` over the target (the whole-table check,
``checks.py``). A check scoped to a run's files proves them from the data files the batches' commits added
instead (``written_rows.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from loader_assets.core.spark_hash import halves, spark_xxhash64, weighted_sums
from loader_assets.reading import SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column

Fingerprint = tuple[int, int | None, int | None]  # rows, sum of h1, sum of h2 (None: the sum overflowed)


def fingerprint_columns() -> list[Column]:
    """The aggregations of a fingerprint over rows with ``_source_file``: ``rows``, ``h1``, ``h2``."""
    from pyspark.sql import functions as F

    return _fingerprint_of(F.xxhash64(F.col(SOURCE_FILE_COLUMN)))


def _fingerprint_of(hashed: Column) -> list[Column]:
    from pyspark.sql import functions as F

    return [F.count(F.lit(1)).cast("long").alias("rows"), F.try_sum(F.shiftright(hashed, 32)).alias("h1"),
            F.try_sum(hashed.bitwiseAND(F.lit(_LOW_HALF))).alias("h2")]


_LOW_HALF = 0xFFFFFFFF


def tracker_fingerprints(tracked: pa.Table) -> dict[str | None, Fingerprint]:
    """The fingerprint per ``batch_id`` of tracker rows (``file_path``, ``batch_id``, ``row_count``), each file
    weighted by its row count."""
    h1, h2 = halves(spark_xxhash64(tracked["file_path"]))
    counts = tracked["row_count"]
    ones = pa.array([1] * tracked.num_rows, pa.int64())
    rows = weighted_sums(tracked["batch_id"], ones, counts)
    sums1 = weighted_sums(tracked["batch_id"], h1, counts)
    sums2 = weighted_sums(tracked["batch_id"], h2, counts)
    return {b: (rows[b], sums1[b], sums2[b]) for b in rows}


def same(found: Fingerprint | None, expected: Fingerprint | None) -> bool:
    """Equal, and neither side has an overflowed (NULL) sum."""
    return found is not None and found == expected and None not in found
