"""What the loader's Spark session is started with (resources/spark.py), beyond Delta's jars and extensions."""

from __future__ import annotations

import pytest

from loader_assets.resources.spark import CODEGEN_CACHE_ENTRIES, spark_config

CACHE_CONF = "spark.sql.codegen.cache.maxEntries"


def test_the_generated_code_cache_is_a_default_the_user_can_override():
    assert spark_config("local[1]", "x", {})[CACHE_CONF] == CODEGEN_CACHE_ENTRIES
    assert spark_config("spark://h:7077", "x", {})[CACHE_CONF] == CODEGEN_CACHE_ENTRIES  # every master
    assert spark_config("local[1]", "x", {CACHE_CONF: "50"})[CACHE_CONF] == "50"


@pytest.mark.spark
def test_a_query_keeps_its_generated_classes_while_150_others_are_compiled(spark):
    """One keyed load run generates about 150 classes; with Spark's default cache of 100, a query's classes were
    evicted before its shape came back, and compiled (and JIT-compiled) again. Each query below compiles a class
    of its own (the literal is part of the generated code), counted by Spark's codegen metrics."""
    metrics = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics

    def compiled() -> int:
        return int(metrics.METRIC_COMPILATION_TIME().getCount())

    def query(n: int) -> None:
        assert spark.range(3).selectExpr(f"id * {n + 7} AS v").collect()[2]["v"] == 2 * (n + 7)

    assert spark.conf.get(CACHE_CONF) == CODEGEN_CACHE_ENTRIES
    first = compiled()
    query(0)
    assert compiled() > first  # the class was compiled here, so it is in the cache
    before_others = compiled()
    for n in range(1, 151):
        query(n)
    assert compiled() - before_others >= 150  # 150 other classes went through the cache
    again = compiled()
    query(0)
    assert compiled() == again, "the first query's class was evicted and compiled again"
