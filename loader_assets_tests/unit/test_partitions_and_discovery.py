import os
from datetime import UTC, datetime

import pyarrow as pa

from loader_assets.core.discovery import fingerprint, is_within, list_source_files
from loader_assets.core.partitions import group_into_ranges, partition_keys_for

TS = pa.timestamp("us", tz="UTC")
NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)


def test_partition_keys_daily_and_hourly_with_clamping():
    times = pa.array([datetime(2023, 5, 1, tzinfo=UTC), datetime(2024, 3, 5, 13, 5, tzinfo=UTC),
                      datetime(2031, 1, 1, tzinfo=UTC)], TS)
    assert partition_keys_for(times, "day", "2024-01-01", NOW).to_pylist() == ["2024-01-01", "2024-03-05", "2026-11-28"]
    assert partition_keys_for(times, "hour", "2024-01-01-00:00", NOW).to_pylist() == [
        "2024-01-01-00:00", "2024-03-05-13:00", "2026-11-28-09:00"]


def test_group_into_ranges_splits_on_gaps():
    keys = ["2024-01-03", "2024-01-01", "2024-01-09", "2024-03-01", "2024-01-01"]
    assert group_into_ranges(keys, "day", max_gap=7) == [("2024-01-01", "2024-01-09"), ("2024-03-01", "2024-03-01")]
    assert group_into_ranges([], "day") == []
    assert group_into_ranges(["2024-01-01-00:00", "2024-01-01-05:00"], "hour", max_gap=2) == [
        ("2024-01-01-00:00", "2024-01-01-00:00"), ("2024-01-01-05:00", "2024-01-01-05:00")]


def test_listing_is_recursive_sorted_and_skips_hidden_and_marker_files(tmp_path):
    names = ["b.csv", "sub/a, 'q' ü [x].csv", "_SUCCESS", ".part-0.tmp", "_tmp/c.csv", "sub/.hidden/d.csv"]
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    os.utime(tmp_path / "b.csv", (1_700_000_000, 1_700_000_000))
    listing = list_source_files(str(tmp_path))
    assert listing["file_path"].to_pylist() == [str(tmp_path / "b.csv"), str(tmp_path / "sub/a, 'q' ü [x].csv")]
    assert listing["file_size"].to_pylist() == [1, 1]
    assert listing["file_modified_time"][0].as_py() == datetime.fromtimestamp(1_700_000_000, UTC)
    assert fingerprint(listing["file_size"], listing["file_modified_time"])[0].as_py() == "1:1700000000000000"


def test_missing_source_lists_empty(tmp_path):
    assert list_source_files(str(tmp_path / "not-there")).num_rows == 0


def test_is_within():
    assert is_within("/in/t", "/in/t/a.csv")
    assert not is_within("/in/t", "/in/tx/a.csv")
    assert not is_within("/in/t", "/in/t/../u/a.csv")


def test_partition_keys_never_carry_characters_dagster_reserves():
    from datetime import UTC, datetime

    import pyarrow as pa
    from dagster._core.definitions.partitions.utils.base import INVALID_PARTITION_SUBSTRINGS

    moments = [datetime(1970, 1, 1, tzinfo=UTC), datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
               datetime(2099, 12, 31, tzinfo=UTC), None]
    mtimes = pa.array(moments, pa.timestamp("us", tz="UTC"))
    for granularity, start in (("day", "2024-01-01"), ("hour", "2024-01-01-00:00")):
        keys = partition_keys_for(mtimes.fill_null(moments[0]), granularity, start).to_pylist()
        assert all(key and not any(bad in key for bad in INVALID_PARTITION_SUBSTRINGS) for key in keys), keys
