"""``read_state_table`` reads what deltalake's own reader reads, on the shapes a state table takes over its life:
partitioned or not, files from before a column was added, a NULL partition value, a pruned partition filter."""

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from loader_assets.resources._state_tables import read_state_table


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(name, "ascending") for name in table.column_names])


@pytest.fixture
def evolved(tmp_path):
    """A table partitioned by status: two commits of rows, a third that adds a column, a row with a NULL
    status, and a delete that rewrites part of one partition."""
    path = str(tmp_path / "state")
    write_deltalake(path, pa.table({"file_path": ["a", "b", "c"], "status": ["pending", "completed", "failed"],
                                    "n": pa.array([1, 2, None], pa.int64())}), partition_by=["status"])
    write_deltalake(path, pa.table({"file_path": ["d"], "status": ["completed"], "n": pa.array([4], pa.int64())}),
                    mode="append")
    write_deltalake(path, pa.table({"file_path": ["e", "f"], "status": ["completed", None],
                                    "n": pa.array([5, 6], pa.int64()), "added": ["x", "y"]}),
                    mode="append", schema_mode="merge")
    DeltaTable(path).delete("file_path = 'd'")
    return DeltaTable(path)


@pytest.mark.parametrize(("columns", "partitions"), [
    (None, None),
    (["file_path", "added"], None),
    (["file_path", "status", "n"], {"status": ["completed"]}),
    (None, {"status": ["pending", "failed"]}),
    (["n"], {"status": ["processing"]}),
])
def test_reads_what_deltalake_reads(evolved, columns, partitions):
    filters = [(name, "in", values) for name, values in (partitions or {}).items()] or None
    expected = evolved.to_pyarrow_table(columns=columns, filters=filters)
    got = read_state_table(evolved, columns, partitions)
    assert got.schema == expected.schema
    assert _sorted(got).equals(_sorted(expected)), (got.to_pylist(), expected.to_pylist())


def test_the_fixture_has_what_the_cases_need(evolved):
    rows = {r["file_path"]: r for r in read_state_table(evolved).to_pylist()}
    assert set(rows) == {"a", "b", "c", "e", "f"}  # "d" deleted
    assert rows["a"]["added"] is None and rows["e"]["added"] == "x"  # an older file reads the new column as NULL
    assert rows["f"]["status"] is None and rows["b"]["status"] == "completed"
    assert read_state_table(evolved, ["file_path"], {"status": ["processing"]}).num_rows == 0


def test_an_unpartitioned_table(tmp_path):
    path = str(tmp_path / "lock")
    write_deltalake(path, pa.table({"name": ["l"], "holder": [None]}, schema=pa.schema(
        [("name", pa.string()), ("holder", pa.string())])))
    write_deltalake(path, pa.table({"name": ["l"], "holder": ["run-1"]}), mode="overwrite")
    assert read_state_table(DeltaTable(path)).to_pylist() == [{"name": "l", "holder": "run-1"}]


def test_a_filter_on_a_column_that_is_not_a_partition_is_refused(evolved):
    with pytest.raises(ValueError, match="not a partition column"):
        read_state_table(evolved, None, {"file_path": ["a"]})
