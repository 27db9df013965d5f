"""The driver-side reproduction of Spark's ``xxhash64()`` (``core.spark_hash``) against Spark itself: the
fingerprints compare sums of one with sums of the other, so they must agree bit for bit."""

import random

import pyarrow as pa
import pytest

from loader_assets.core.spark_hash import halves, spark_xxhash64, weighted_sums


@pytest.mark.spark
def test_spark_xxhash64_and_its_halves_match_spark_for_every_length_and_non_ascii(spark):
    from pyspark.sql import functions as F

    rng = random.Random(7)
    alphabet = "abcXYZ/._-0123456789 éü日本€\U0001F600"
    # every byte length 0..100: no stripe, one to three 32-byte stripes, each 8-byte word count, 4-byte and
    # single-byte tails
    strings = ["x" * n for n in range(101)] + ["/landing/events/2024-01-01/part-00001.parquet"]
    strings += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(2_000)]
    frame = spark.createDataFrame([(s,) for s in strings], "s string")
    hashed = F.xxhash64("s")
    expected = frame.select(hashed.alias("h"), F.shiftright(hashed, 32).alias("high"),
                            hashed.bitwiseAND(F.lit(0xFFFFFFFF)).alias("low")).toArrow()
    values = pa.array(strings)
    found = spark_xxhash64(values)
    assert found.to_pylist() == expected["h"].to_pylist()
    high, low = halves(found)
    assert high.to_pylist() == expected["high"].to_pylist()
    assert low.to_pylist() == expected["low"].to_pylist()
    assert min(high.to_pylist()) < 0 <= min(low.to_pylist())  # the high half signed, the low one not
    assert spark_xxhash64(values.slice(5, 50)).to_pylist() == expected["h"].to_pylist()[5:55]  # an offset array


def test_weighted_sums_are_exact_when_the_true_sum_fits_a_long():
    big = 2**62
    sums = weighted_sums(pa.array(["a", "a", "b", None]), pa.array([big, big, 5, 3], pa.int64()),
                         pa.array([3, -3, 2, 1], pa.int64()))
    assert sums == {"a": 0, "b": 10, None: 3}  # 3 * 2^62 wraps; the -3 * 2^62 brings it back exactly
