"""The public testing kit (``loader_assets.testing``) used as a user would: only its fixtures and methods.

Each test states the exact table, tracker states and check results after ``materialize()``, which runs the
table's asset and checks through the same exactly-once protocol as the CLI and the sensor.
"""

import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

pytestmark = pytest.mark.spark

PEOPLE = [{"table_name": "people", "file_format": "parquet", "loading_strategy": "scd2",
           "primary_keys": ["id"], "tracking_columns": ["city"], "scd2_sequence_column": "changed_at"}]


def test_an_append_table_loads_each_file_once(loader_lake):
    lake = loader_lake(tables=[{"table_name": "orders", "file_format": "parquet"}])
    day = lake.drop_parquet("orders", "a.parquet", [{"id": 1, "amount": 5}, {"id": 2, "amount": 7}],
                            modified="2025-03-01T10:00")
    assert lake.drop_parquet("orders", "b.parquet", [{"id": 3, "amount": 1}], modified="2025-03-01T11:00") == day
    result = lake.materialize("orders", day)
    assert result.success and day == "2025-03-01"
    assert lake.rows("orders") == [(1, 5), (2, 7), (3, 1)]
    assert lake.files("orders") == {"a.parquet": ("completed", 2), "b.parquet": ("completed", 1)}
    assert lake.checks(result) == {"no_failed_files": (True, "WARN"),
                                   "target_matches_tracker": (True, "ERROR"),
                                   "no_orphaned_processing": (True, "WARN"),
                                   "lock_not_stale": (True, "WARN")}


def test_materializing_the_same_partition_twice_loads_nothing_the_second_time(loader_lake):
    lake = loader_lake(tables=[{"table_name": "orders", "file_format": "parquet"}])
    day = lake.drop_parquet("orders", "a.parquet", [{"id": 1}], modified="2025-03-01T10:00")
    first, second = lake.materialize("orders", day), lake.materialize("orders", day)
    loaded = [e.materialization.metadata["files_loaded"].value for r in (first, second)
              for e in r.get_asset_materialization_events()]
    assert loaded == [1, 0]
    assert lake.rows("orders") == [(1,)] and lake.files("orders") == {"a.parquet": ("completed", 1)}


def test_an_scd2_table_keeps_a_tracked_change_as_a_new_version(loader_lake):
    lake = loader_lake(tables=PEOPLE)
    schema = pa.schema([("id", pa.int64()), ("city", pa.string()), ("changed_at", pa.timestamp("us", tz="UTC"))])
    march = {d: datetime(2025, 3, d, tzinfo=UTC) for d in (1, 2)}
    first = lake.drop_parquet("people", "1.parquet", [{"id": 1, "city": "Oslo", "changed_at": march[1]},
                                                      {"id": 2, "city": "Rome", "changed_at": march[1]}],
                              modified="2025-03-01T09:00", schema=schema)
    second = lake.drop_parquet("people", "2.parquet", [{"id": 1, "city": "Bergen", "changed_at": march[2]}],
                               modified="2025-03-02T09:00", schema=schema)
    assert lake.materialize("people", [first, second]).success
    history = [(i, city, str(start)[:10], end and str(end)[:10], current)
               for i, city, start, end, current in lake.rows("people", "id", "city", "effective_date", "end_date",
                                                              "is_current")]
    assert history == [(1, "Bergen", "2025-03-02", None, True), (1, "Oslo", "2025-03-01", "2025-03-02", False),
                       (2, "Rome", "2025-03-01", None, True)]


def test_a_bad_file_fails_alone_and_the_failed_files_check_warns(loader_lake):
    lake = loader_lake(tables=[{"table_name": "orders", "file_format": "parquet"}])
    day = lake.drop_parquet("orders", "good.parquet", [{"id": 1}], modified="2025-03-01T10:00")
    lake.drop_bytes("orders", "bad.parquet", b"PAR1 not parquet", modified="2025-03-01T10:05")
    result = lake.materialize("orders", day, raise_on_error=False)
    assert not result.success  # the day shows failed (its bad file), though its good file is committed
    assert lake.rows("orders") == [(1,)]
    assert lake.files("orders") == {"good.parquet": ("completed", 1), "bad.parquet": ("failed", None)}
    assert "not a readable parquet file" in lake.errors("orders")["bad.parquet"]
    assert lake.checks(result)["no_failed_files"] == (False, "WARN")  # retries remain


def test_a_file_out_of_retries_fails_the_check_with_error_severity(loader_lake):
    lake = loader_lake(tables=[{"table_name": "orders", "file_format": "parquet"}], retry_attempts=0)
    day = lake.drop_bytes("orders", "bad.parquet", b"PAR1 not parquet", modified="2025-03-01T10:05")
    result = lake.materialize("orders", day, raise_on_error=False)
    assert lake.checks(result)["no_failed_files"] == (False, "ERROR")  # waits for an operator


def test_a_ranged_materialisation_over_several_partitions_is_one_run_and_one_commit(loader_lake):
    lake = loader_lake(tables=[{"table_name": "orders", "file_format": "parquet"}])
    days = [lake.drop_parquet("orders", f"{d}.parquet", [{"id": d}], modified=f"2025-03-0{d}T12:00")
            for d in (1, 2, 4)]
    outside = lake.drop_parquet("orders", "later.parquet", [{"id": 9}], modified="2025-03-06T12:00")
    result = lake.materialize("orders", days)
    assert result.success
    assert {e.partition for e in result.get_asset_materialization_events()} == {
        "2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04"}  # every window of the range
    assert lake.rows("orders") == [(1,), (2,), (4,)]
    assert lake.files("orders")["later.parquet"] == ("pending", None) and outside == "2025-03-06"


def readme_section() -> tuple[str, str]:
    """The conftest and the test file the README's "Testing your tables" shows."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Testing your tables", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2, "the README section shows a conftest.py and a test file"
    return blocks[0], blocks[1]


def test_the_readme_section_works_when_pasted_into_a_new_test_file(pytester):
    conftest, tests = readme_section()
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_my_tables=tests)
    # a fresh interpreter, as in a user's repository (an in-process run would unload modules this session
    # imported, and their re-import registers Dagster's serdes classes twice)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=tests.count("\ndef test_"))
