"""``read_state_table`` reads what deltalake's own reader reads, on the shapes a state table takes over its life:
partitioned or not, files from before a column was added, a NULL partition value, a pruned partition filter.
``read_latest`` reads the latest snapshot with a kept handle: every later commit, and a table deleted and created
again, read as a fresh open reads them."""

import shutil
import threading

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from loader_assets.resources import _state_tables as state_tables
from loader_assets.resources._state_tables import _handles, read_latest, read_state_table


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


def _rows(table: DeltaTable) -> list[dict]:
    return sorted(read_state_table(table).to_pylist(), key=lambda row: row["n"])


def _append(path: str, *values: int) -> None:
    write_deltalake(path, pa.table({"n": pa.array(values, pa.int64())}), mode="append")


def test_a_kept_handle_sees_every_later_commit(tmp_path):
    path = str(tmp_path / "t")
    _append(path, 1)
    assert read_latest(path, "damaged", None, _rows) == [{"n": 1}]
    assert [key[1] for key in _handles if key[1] == path] == [path]  # kept for the next read (other tests' too)
    _append(path, 2)
    DeltaTable(path).delete("n = 1")
    assert read_latest(path, "damaged", None, _rows) == [{"n": 2}]
    assert read_latest(path, "damaged", None, lambda table: table.version()) == DeltaTable(path).version() == 2


@pytest.mark.parametrize("commits_after", [1, 3, 6], ids=["fewer", "as many", "more"])
def test_a_table_created_again_is_read_afresh(tmp_path, commits_after):
    """The old log had 3 commits (versions 0-2). A handle brought up to date by listing newer commits would
    apply the new table's commits 3.. on top of the old snapshot; the commit-file check opens it again."""
    path = str(tmp_path / "t")
    for n in range(3):
        _append(path, n)
    assert read_latest(path, "damaged", None, _rows) == [{"n": 0}, {"n": 1}, {"n": 2}]
    shutil.rmtree(path)
    for n in range(commits_after):
        _append(path, 100 + n)
    assert read_latest(path, "damaged", None, _rows) == [{"n": 100 + n} for n in range(commits_after)]


def test_a_table_removed_reads_as_absent(tmp_path):
    path = str(tmp_path / "t")
    _append(path, 1)
    assert read_latest(path, "damaged", None, _rows) == [{"n": 1}]
    shutil.rmtree(path)
    assert read_latest(path, "damaged", None, _rows) is None


def test_an_old_handle_is_not_used(tmp_path, monkeypatch):
    path = str(tmp_path / "t")
    _append(path, 1)
    read_latest(path, "damaged", None, _rows)
    kept = next(entry[0] for key, entry in _handles.items() if key[1] == path)
    monkeypatch.setattr(state_tables, "HANDLE_MAX_AGE_SECONDS", -1.0)
    seen = []
    _append(path, 2)
    assert read_latest(path, "damaged", None, lambda table: seen.append(table) or _rows(table)) == [{"n": 1}, {"n": 2}]
    assert seen[0] is not kept


def test_threads_reading_while_another_commits(tmp_path):
    path = str(tmp_path / "t")
    _append(path, 0)
    failures: list[str] = []

    def reader() -> None:
        last = -1
        for _ in range(40):
            rows = read_latest(path, "damaged", None, _rows)
            values = [row["n"] for row in rows]
            if values != list(range(len(values))) or len(values) - 1 < last:  # a prefix, never going back
                failures.append(repr(values))
            last = len(values) - 1

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for n in range(1, 15):
        _append(path, n)
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert read_latest(path, "damaged", None, _rows) == [{"n": n} for n in range(15)]


def test_handles_too_old_to_use_are_dropped_once_there_are_many(tmp_path, monkeypatch):
    monkeypatch.setattr(state_tables, "MAX_KEPT_HANDLES", 3)
    paths = [str(tmp_path / f"t{n}") for n in range(5)]
    for path in paths:
        _append(path, 1)
    for path in paths[:3]:
        read_latest(path, "damaged", None, _rows)
    monkeypatch.setattr(state_tables, "HANDLE_MAX_AGE_SECONDS", -1.0)  # every kept handle is now too old
    read_latest(paths[3], "damaged", None, _rows)  # four kept: above the bound, the old ones go
    assert not [key for key in _handles if key[1] in paths]
    monkeypatch.setattr(state_tables, "HANDLE_MAX_AGE_SECONDS", 30.0)
    read_latest(paths[4], "damaged", None, _rows)
    assert [key[1] for key in _handles if key[1] in paths] == [paths[4]]
