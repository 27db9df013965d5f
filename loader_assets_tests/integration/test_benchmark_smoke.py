"""The benchmarks run at a tiny size so they never rot (timings are not asserted; correctness is).

P5 and P6 use no Spark and run in the fast tier too."""

import pytest

from benchmarks import (
    bench_p1_append,
    bench_p3_rerun,
    bench_p4_batch_cost,
    bench_p5_sensor,
    bench_p6_tracker,
    bench_p7_validate,
    run_all,
)
from benchmarks.bench_scd2 import run


@pytest.mark.spark
def test_scd2_benchmark_at_tiny_size_matches_the_canonical_merge(spark, tmp_path):
    result = run(keys=300, files=3, changed=0.1, seed=3, repeats=2, workdir=tmp_path / "bench")
    assert result["tables_identical"]
    assert result["final_rows"] == 300 + 3 * 30
    # both turn orders ran, each round on its own table; the phases are one timed round's (one Dagster run)
    assert [r["first"] for r in result["rounds"]] == ["baseline", "loader"]
    assert result["phases"]["dagster run (whole)"]["calls"] == 1


# Issue 6 benchmarks (run_all's tiny sizes). Each asserts what the benchmark itself relies on; never a time.


@pytest.mark.spark
def test_append_benchmark_loads_every_row_on_both_sides(spark, tmp_path):
    result = bench_p1_append.run(files=4, rows=500, repeats=2, workdir=tmp_path / "bench")
    assert result["tables_equal_row_counts"]
    assert result["loader_rows"] == result["baseline_rows"] == result["total_rows_loaded"] == 2000
    assert result["phases"]["read batch (Spark)"]["calls"] == 1
    assert len(result["round_ratios"]) == 2 and result["raw_copy_seconds"] > 0  # both turn orders ran
    assert result["python_peak_rss_mb"] > 0


@pytest.mark.spark
def test_rerun_benchmark_starts_no_spark_session(spark, tmp_path):
    result = bench_p3_rerun.run(files=50, first_load=3, rows_per_file=10, workdir=tmp_path / "bench")
    assert result["spark_session_started"] is False
    assert result["files_discovered"] == 50
    assert result["first_load_rows"] == 30


@pytest.mark.spark
def test_batch_cost_benchmark_appends_to_the_populated_table(spark, tmp_path):
    result = bench_p4_batch_cost.run(batches=3, batch_files=2, rows=10, repeats=1, workdir=tmp_path / "bench")
    # per repeat: a Spark batch, a small-batch engine batch, and a Spark batch right after the engine's commit
    assert result["populated_rows_after"] == (3 + 3) * 2 * 10
    assert result["tracker_completed_after"] == (3 + 3) * 2
    assert len(result["small_batch_times"]) == 1 and "populated_small_batch" in result["phases"]
    assert len(result["populated_after_engine_times"]) == 1 and "populated_after_engine" in result["phases"]
    # what the docstring says the after-engine figure shows: delta-rs left no version checksum for Spark
    assert result["engine_commits_with_checksum"] == 0


def test_sensor_benchmark_requests_one_run_for_the_new_files(tmp_path):
    result = bench_p5_sensor.run(files=300, new_fraction=0.01, repeats=1, workdir=tmp_path / "bench")
    assert result["new_files"] == 3 and result["run_requests"] == 1


def test_tracker_benchmark_claims_the_pending_files_at_both_sizes(tmp_path):
    result = bench_p6_tracker.run(rows=2_000, base_rows=500, claim=20, repeats=1, workdir=tmp_path / "bench")
    for size in ("large", "small", "what_if_large_not_compacted"):
        assert result[size]["processing_after_claims"] == 20
    assert result["large"]["rows"] == 2_000 and result["small"]["rows"] == 500


@pytest.mark.spark
def test_validate_benchmark_table_is_consistent(spark, tmp_path):
    result = bench_p7_validate.run(files=300, rows_per_file=3, repeats=1, workdir=tmp_path / "bench")
    assert result["consistent"] and result["files_checked"] == 300


def test_run_all_renders_a_table_and_the_results_page():
    results = [
        {
            "id": "P5",
            "what": "sensor",
            "loader_seconds": 0.5,
            "baseline_seconds": 0.25,
            "ratio": 2.0,
            "target_ratio": 3.0,
            "target": "<= 3x; < 5 s",
            "met": True,
            "baseline": "scandir",
        },
        {
            "id": "P7",
            "what": "validate",
            "loader_seconds": 9.0,
            "baseline_seconds": 1.0,
            "ratio": 9.0,
            "target_ratio": 3.0,
            "target": "<= 3x",
            "met": False,
            "baseline": "count",
            "phases": {"validate: target vs tracker (Spark)": 8.5},
            "what_if": {"toArrow": 2.0},
        },
    ]
    text = run_all.text_table(results)
    assert "P7" in text and "NO" in text and "yes" in text
    page = run_all.render_markdown(
        {
            "generated": "2026-01-01 00:00",
            "runs": [{"generated": "2026-01-01 00:00", "ids": ["P5", "P7"], "total_seconds": 60.0}],
            "notes": [],
            "machine": run_all.machine(),
            "results": results,
        }
    )
    assert "| P5 | sensor |" in page
    assert "### P7: validate (9.00x, target <= 3x)" in page and "toArrow" in page
    assert "### P5" not in page


@pytest.mark.spark
def test_cdc_benchmarks_at_tiny_sizes_check_their_tables(spark, tmp_path):
    from benchmarks import bench_cdc

    late = bench_cdc.run_late(keys=200, changed=40, late=0.25, workdir=tmp_path / "late")
    assert late["id"] == "P11" and late["late_rows"] == 10 and late["loader_seconds"] > 0
    scd1 = bench_cdc.run_scd1(keys=200, files=2, changed=30, repeats=2, workdir=tmp_path / "scd1")
    assert scd1["id"] == "P12" and scd1["baseline_seconds"] > 0  # each round's tables were checked identical inside
    assert [r["first"] for r in scd1["rounds"]] == ["baseline", "loader"]
    assert scd1["phases"]["dagster run (whole)"]["calls"] == 1


@pytest.mark.spark
def test_streaming_peer_benchmark_leaves_equal_tables_after_every_step(spark, tmp_path):
    from benchmarks import bench_p8_streaming

    result = bench_p8_streaming.run(files=4, rows=200, increments=2, increment_files=2, repeats=1,
                                    workdir=tmp_path / "bench")
    # one first-load round, two batches, the rerun: each step compared the tables (rows, files, row hash)
    assert result["steps_checked_equal"] == 1 + 2 + 1 and result["rows_after"] == (4 + 2 * 2) * 200
    assert result["rerun_started_spark"] is False


@pytest.mark.extended  # a Spark Connect server, two daemons and a run process per file: about 3 minutes
def test_latency_benchmark_commits_every_dropped_file_under_the_daemon(tmp_path):
    from benchmarks import bench_p9_latency

    result = bench_p9_latency.run(files=2, rows=10, workdir=tmp_path / "bench")
    for side in ("connect", "local"):
        assert result[side]["rows"] == (2 + 1) * 10 and len(result[side]["latencies"]) == 2, result
        assert all(0 < s < 600 for s in result[side]["latencies"]), result
        assert result[side]["median_phases"]["landing to run created (sensor tick)"] is not None, result


@pytest.mark.spark
def test_small_batch_benchmark_loads_each_round_on_every_side(spark, tmp_path):
    from benchmarks import bench_p10_small_batch

    # the warm part (in this process); the new-process part starts 4 JVMs, run_all --tiny covers it
    result = bench_p10_small_batch.run(rows=5, repeats=1, process_repeats=0, workdir=tmp_path / "bench")
    for table in ("append", "scd2"):  # the rounds' row counts are asserted inside; here what is reported
        assert len(result["warm"][table]["loader_times"]) == 1 and result["warm"][table]["phases"], result
        assert 0 < result["warm"][table]["delta_rs_hand_seconds"] < 600, result  # the third side is reported
    # the append into the existing table is the small-batch engine's (no Spark read); with it off, Spark's
    phases = result["warm"]["append"]["phases"]
    assert phases["small-batch engine: data files + commit (delta-rs)"]["calls"] == 1, phases
    assert "read batch (Spark)" not in phases, phases
    assert result["warm"]["append_spark"]["phases"]["read batch (Spark)"]["calls"] == 1
    assert result["process"] is None
