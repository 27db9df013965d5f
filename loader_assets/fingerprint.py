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

Two places compute the rows' side (docs/ARCHITECTURE.md, "A packed append is proven by the fingerprint its
write observed"):
- ``fingerprint_columns`` grouped by ``_batch_id`` over the target (the whole-table check, ``checks.py``);
- ``observe`` on the rows a Spark append writes, filled by the write itself (a Spark ``Observation``, no
  second pass over the data): the post-load check compares it with the tracker and, through the Delta log,
  with the commit, instead of reading the batch back (``verified_by_fingerprints``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc

from loader_assets.core.spark_hash import halves, spark_xxhash64, weighted_sums
from loader_assets.reading import SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

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


def observe(frame: DataFrame) -> tuple[DataFrame, Any]:
    """``frame`` with an Observation of its fingerprint attached: filled when an action (the write) runs it."""
    from pyspark.sql import Observation

    observation = Observation()
    return frame.observe(observation, *fingerprint_columns()), observation


def observed(observation: Any) -> Fingerprint | None:  # noqa: ANN401 - a pyspark Observation (classic or Connect)
    """The fingerprint the action filled in, or None if it was not filled (a write Delta skipped because its txn
    was already recorded never runs the plan). Never blocks: classic PySpark's ``Observation.get`` waits for the
    metrics forever, so the JVM future is asked first; over Spark Connect ``get`` is what the response carried
    (empty when nothing was observed)."""
    try:
        if hasattr(observation, "_jo"):  # classic
            handle = observation._jo
            if handle is None or not handle.future().isCompleted():
                return None
        values = observation.get
    except Exception:  # an observation that failed proves nothing; the check then reads the rows back
        return None
    if not values or values.get("rows") is None:
        return None
    return int(values["rows"]), values.get("h1"), values.get("h2")


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


def verified_by_fingerprints(target_path: str, expected: pa.Table, observed: Mapping[str, Fingerprint],
                             every_file: bool) -> pa.Table | None:
    """Rows per file of ``expected`` (tracker rows: ``file_path``, ``status``, ``batch_id``, ``row_count``) as
    the target holds them, proven without reading a row, or None when this cannot be proven here (the caller
    counts in Spark, which also names what differs).

    ``observed`` holds the fingerprints of the rows this run's writes added, per batch. The proof:
    1. every expected file is completed in a batch of ``observed``, and per batch the tracker's fingerprint of
       its files equals the observed one: the written rows are exactly those files with those counts;
    2. every live data file that may hold rows of the expected files (its ``_source_file`` range holds one;
       with ``every_file``, every data file, since the table must hold nothing else) holds rows of one of those
       batches only (``_batch_id`` min == max, no nulls): no earlier load of the files is left, nothing else is
       there;
    3. per batch, the live data files of that batch are exactly the files its commit added (read from the
       commit's JSON at the tracker's ``target_version``), holding as many rows as were observed: data files
       are immutable, so no UPDATE, DELETE or OPTIMIZE changed the written rows since, and no other commit
       carries the batch's id.
    Deletion vectors, or statistics the log lacks, leave it unproven (``target.data_file_stats``).
    """
    from loader_assets.core.states import FileStatus
    from loader_assets.reading import BATCH_ID_COLUMN
    from loader_assets.target import data_file_stats, files_added_by, holds_one_of

    if not observed or expected.num_rows == 0:
        return None
    if not pc.all(pc.equal(expected["status"], FileStatus.COMPLETED.value)).as_py():
        return None  # a file waiting for a reload still has the rows of an earlier load
    batches = set(expected["batch_id"].to_pylist())
    if not batches <= set(observed):
        return None
    with_rows = expected.filter(pc.greater(pc.fill_null(expected["row_count"], 0), 0))
    tracked = tracker_fingerprints(with_rows)
    for batch in batches:
        if not (same(observed[batch], tracked.get(batch)) or (observed[batch][0] == 0 and batch not in tracked)):
            return None
    stats = data_file_stats(target_path, SOURCE_FILE_COLUMN, BATCH_ID_COLUMN)
    if stats is None:
        return None
    low, high = stats[f"min.{BATCH_ID_COLUMN}"], stats[f"max.{BATCH_ID_COLUMN}"]
    of_batch = pc.fill_null(pc.and_(pc.and_(pc.equal(low, high), pc.equal(stats[f"null_count.{BATCH_ID_COLUMN}"], 0)),
                                    pc.is_in(low, pa.array(sorted(batches), pa.string()))), False)
    if not every_file:
        may_hold = holds_one_of(expected["file_path"].to_pylist(), stats[f"min.{SOURCE_FILE_COLUMN}"],
                                stats[f"max.{SOURCE_FILE_COLUMN}"])
        if not pc.all(pc.or_(pc.invert(may_hold), of_batch)).as_py():
            return None
    elif not pc.all(of_batch).as_py():
        return None
    mine = stats.filter(of_batch)
    live: dict[str, set[str]] = {batch: set() for batch in batches}
    held = dict.fromkeys(batches, 0)
    for batch, path, records in zip(mine[f"min.{BATCH_ID_COLUMN}"].to_pylist(), mine["path"].to_pylist(),
                                    mine["num_records"].to_pylist(), strict=True):
        if records is None:
            return None
        live[batch].add(unquote(path))
        held[batch] += int(records)
    if any(held[batch] != observed[batch][0] for batch in batches):
        return None
    versions = dict(zip(expected["batch_id"].to_pylist(), expected["target_version"].to_pylist(), strict=True))
    for batch in batches:  # the batch's rows are still the files its commit wrote: no UPDATE, DELETE or OPTIMIZE
        version = versions.get(batch)
        if version is None or files_added_by(target_path, int(version)) != live[batch]:
            return None
    return (with_rows.select(["file_path", "row_count"]).rename_columns(["file_path", "rows"])
            .cast(pa.schema([("file_path", pa.string()), ("rows", pa.int64())])).sort_by("file_path"))


RUN_METADATA_KEY = "run_batch_fingerprints"  # on a table's materialisations: {batch_id: [rows, h1, h2]}


def as_metadata(fingerprints: Mapping[str, Fingerprint]) -> dict[str, list[int | None]]:
    return {batch: list(values) for batch, values in fingerprints.items()}


def observed_in_run(instance: Any, run_id: str, asset: str) -> dict[str, Fingerprint]:  # noqa: ANN401
    """The fingerprints a run's materialisations of ``asset`` recorded (``RUN_METADATA_KEY``), per batch."""
    import dagster as dg

    found: dict[str, Fingerprint] = {}
    key = dg.AssetKey(asset)
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        if materialization is None or materialization.asset_key != key:
            continue
        value = getattr(materialization.metadata.get(RUN_METADATA_KEY), "value", None)
        for batch, values in (value or {}).items():
            rows, h1, h2 = values
            found[batch] = (int(rows), h1, h2)
    return found
