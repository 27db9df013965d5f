"""The driver-side reproduction of Spark's ``hash()`` (``core.spark_hash``) against Spark itself: the whole-
table consistency check compares sums of one with sums of the other, so they must agree bit for bit."""

import random

import pyarrow as pa
import pytest

from loader_assets.core.spark_hash import spark_hash, weighted_sums


@pytest.mark.spark
def test_spark_hash_matches_spark_for_every_tail_length_and_non_ascii(spark):
    from pyspark.sql import functions as F

    rng = random.Random(7)
    alphabet = "abcXYZ/._-0123456789 éü日本€\U0001F600"
    strings = ["", "a", "ab", "abc", "abcd", "abcde", "/landing/events/2024-01-01/part-00001.parquet"]
    strings += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(2_000)]
    frame = spark.createDataFrame([(s,) for s in strings], "s string")
    expected = frame.select(F.hash("s").cast("long").alias("h1"), F.hash("s", "s").cast("long").alias("h2")).toArrow()
    values = pa.array(strings)
    h1 = spark_hash(values)
    assert h1.to_pylist() == expected["h1"].to_pylist()
    assert spark_hash(values, h1).to_pylist() == expected["h2"].to_pylist()
    assert spark_hash(values.slice(5, 50)).to_pylist() == expected["h1"].to_pylist()[5:55]  # an offset array


def test_weighted_sums_are_exact_when_the_true_sum_fits_a_long():
    big = 2**62
    sums = weighted_sums(pa.array(["a", "a", "b", None]), pa.array([big, big, 5, 3], pa.int64()),
                         pa.array([3, -3, 2, 1], pa.int64()))
    assert sums == {"a": 0, "b": 10, None: 3}  # 3 * 2^62 wraps; the -3 * 2^62 brings it back exactly
