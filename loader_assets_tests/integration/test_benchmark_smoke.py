"""The benchmarks run at a tiny size so they never rot (timings are not asserted; correctness is)."""

import pytest

from benchmarks.bench_scd2 import run

pytestmark = pytest.mark.spark


def test_scd2_benchmark_at_tiny_size_matches_the_canonical_merge(spark, tmp_path):
    result = run(keys=300, files=3, changed=0.1, seed=3, workdir=tmp_path / "bench")
    assert result["tables_identical"]
    assert result["final_rows"] == 300 + 3 * 30
