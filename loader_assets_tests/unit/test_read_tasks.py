"""The read-task model (``loader_assets.read_tasks``) on its own: Spark's split and packing rules as the module
states them, and what ``balanced_split`` may and may not choose. That the packing is Spark's is checked against
Spark itself in ``integration/test_read_tasks.py``."""

import random

import pytest

from loader_assets.read_tasks import (
    MAX_WAVES,
    MIN_GAIN,
    SessionShape,
    balanced_split,
    makespan,
    parse_bytes,
    spark_default_split,
    spark_partitions,
)

MB = 1 << 20
TWO_CORES = SessionShape(slots=2, min_partitions=2, max_partition_bytes=128 * MB, open_cost=4 * MB)


@pytest.mark.parametrize(("text", "expected"), [
    ("134217728b", 134217728), ("128m", 128 * MB), ("4MB", 4 * MB), ("4194304", 4194304), ("1g", 1 << 30),
    (" 2k ", 2048),
])
def test_spark_byte_sizes_parse(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "12x", "m", "1.5m"])
def test_a_value_that_is_not_a_byte_size_is_refused(text):
    with pytest.raises(ValueError, match="not a byte size"):
        parse_bytes(text)


def test_the_benchmark_batch_gets_eight_equal_tasks_instead_of_a_short_last_one():
    """200 files of 0.6 MB on 2 cores (benchmark P8's first load): Spark's 128 MB split makes 7 partitions of 28
    files and one of 4; the chosen split makes 8 of 25."""
    sizes = [615_075] * 200
    default = spark_default_split(sizes, TWO_CORES)
    assert default == 128 * MB
    spark_own = spark_partitions(sizes, default, TWO_CORES.open_cost)
    assert [cost // (615_075 + 4 * MB) for cost in spark_own] == [28] * 7 + [4]
    split = balanced_split(sizes, TWO_CORES)
    assert split is not None
    chosen = spark_partitions(sizes, split, TWO_CORES.open_cost)
    assert [cost // (615_075 + 4 * MB) for cost in chosen] == [25] * 8
    assert makespan(chosen, 2, 4 * MB) < makespan(spark_own, 2, 4 * MB) * (1 - MIN_GAIN)


def test_makespan_starts_each_task_on_the_first_free_slot():
    assert makespan([10, 10, 10], 2, 0) == 20
    assert makespan([10, 1, 1, 1], 2, 0) == 10
    assert makespan([10, 1, 1, 1], 2, 1) == 11  # the short tasks' fixed cost: 2 + 2 + 2 on the other slot
    assert makespan([5, 5], 1, 1) == 12
    assert makespan([], 4, 1) == 0


def test_packing_closes_a_partition_when_the_next_file_would_pass_the_split():
    # largest first; each file costs its length plus the open cost; the test adds the next file's length only
    assert spark_partitions([3, 5, 4], 8, 2) == [7, 6, 5]  # 5 costs 7; 7 + 4 > 8: close; 6 + 3 > 8: close
    assert spark_partitions([1, 3, 2], 6, 1) == [7, 2]  # 3 costs 4; 4 + 2 = 6 is not past 6; 7 + 1 > 6: close
    assert spark_partitions([1, 1, 1, 1], 2, 0) == [2, 2]
    assert spark_partitions([9], 4, 1) == [10]  # a file larger than the split is one partition here (never chosen)


def test_nothing_is_chosen_for_a_batch_spark_already_spreads_evenly():
    assert balanced_split([615_075] * 10, TWO_CORES) is None  # below the cap: Spark splits per core
    assert balanced_split([615_075], TWO_CORES) is None
    assert balanced_split([], TWO_CORES) is None


def test_nothing_is_chosen_when_spark_would_cut_a_file():
    sizes = [200 * MB, 10 * MB, 10 * MB]
    assert spark_default_split(sizes, TWO_CORES) < 200 * MB
    assert balanced_split(sizes, TWO_CORES) is None


@pytest.mark.parametrize("seed", range(40))
def test_a_chosen_split_is_never_below_the_largest_file_and_ends_the_modelled_job_sooner(seed):
    """Seeded random batches and sessions: whatever is chosen keeps every file whole, is below Spark's split, and
    beats Spark's packing by MIN_GAIN in the model; when nothing is chosen, no candidate did."""
    rng = random.Random(seed)
    slots = rng.choice([1, 2, 3, 4, 8, 16])
    shape = SessionShape(slots=slots, min_partitions=slots, max_partition_bytes=rng.choice([8, 32, 128]) * MB,
                         open_cost=rng.choice([0, 1, 4]) * MB)
    sizes = [rng.randint(1, 6 * MB) if rng.random() < 0.9 else rng.randint(1, 30 * MB)
             for _ in range(rng.randint(2, 400))]
    default = spark_default_split(sizes, shape)
    baseline = makespan(spark_partitions(sizes, default, shape.open_cost), slots, shape.open_cost)
    split = balanced_split(sizes, shape)
    candidates = [max(max(sizes), -(-sum(s + shape.open_cost for s in sizes) // (slots * waves)))
                  for waves in range(1, MAX_WAVES + 1)]
    better = [c for c in candidates if c < default and makespan(spark_partitions(sizes, c, shape.open_cost), slots,
                                                                shape.open_cost) <= baseline * (1 - MIN_GAIN)]
    if max(sizes) > default:
        assert split is None
        return
    if split is None:
        assert better == []
        return
    assert max(sizes) <= split < default
    assert split in better
    chosen = makespan(spark_partitions(sizes, split, shape.open_cost), slots, shape.open_cost)
    assert chosen == min(makespan(spark_partitions(sizes, c, shape.open_cost), slots, shape.open_cost)
                         for c in better)
