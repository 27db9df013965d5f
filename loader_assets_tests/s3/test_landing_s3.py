"""A landing zone on ``s3://``: discovery lists it through ``pyarrow.fs`` (S3FileSystem, endpoint and credentials
from the environment), operator actions refuse paths outside ``source_path``, and a damaged state table on S3 is
reported, not recreated. Real moto server, no Spark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from loader_assets.core.discovery import list_source_files
from loader_assets.core.errors import TrackerError
from loader_assets.operations import skip_files
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.settings import load_settings

pytestmark = pytest.mark.s3


def settings_for(tmp_path, s3):
    raw = {
        "target_root": s3.uri("lake"),
        "checkpoint_path": s3.uri("checkpoints"),
        "state_storage": {"provider": "s3"},
        "tables": [{"table_name": "events", "source_path": s3.uri("landing/events"), "file_format": "parquet"}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    return load_settings(tmp_path / "config.yaml")


def test_discovery_lists_an_s3_landing_zone_with_sizes_and_times(s3):
    """Every object below the prefix is listed (nested ones too) with its size and the store's modification
    time; hidden and marker objects, a sibling prefix that shares the name's start, and other prefixes are not."""
    before = datetime.now(UTC) - timedelta(seconds=5)
    s3.put("landing/events/a.parquet", b"a" * 3)
    s3.put("landing/events/2024/01/b.parquet", b"b" * 7)
    s3.put("landing/events/_SUCCESS", b"")
    s3.put("landing/events/.c.parquet.part", b"partial")
    s3.put("landing/events_old/x.parquet", b"x")  # shares the prefix's first characters: not the source
    s3.put("landing/other/y.parquet", b"y")
    listing = list_source_files(s3.uri("landing/events")).to_pylist()
    after = datetime.now(UTC) + timedelta(seconds=5)
    assert [(r["file_path"], r["file_size"]) for r in listing] == [
        (s3.uri("landing/events/2024/01/b.parquet"), 7),
        (s3.uri("landing/events/a.parquet"), 3),
    ]
    assert all(before <= r["file_modified_time"] <= after for r in listing)
    assert list_source_files(s3.uri("landing/not-there")).num_rows == 0  # a source nobody wrote to yet


def test_a_re_delivered_object_gets_a_new_fingerprint_and_times_are_whole_seconds(s3):
    """Overwriting an object with content of another size changes its fingerprint, so the tracker sees a new
    version. On S3 the time is the upload's (a writer cannot set it) and the listing gives whole seconds, as
    AWS's ListObjectsV2 does: a same-size overwrite within the same second would keep the fingerprint."""
    s3.put("landing/events/a.parquet", b"first")
    first = list_source_files(s3.uri("landing/events")).to_pylist()[0]
    s3.put("landing/events/a.parquet", b"second, longer")
    second = list_source_files(s3.uri("landing/events")).to_pylist()[0]
    assert first["file_size"] == 5 and second["file_size"] == 14
    assert second["file_modified_time"] >= first["file_modified_time"]
    assert first["file_modified_time"].microsecond == 0 and second["file_modified_time"].microsecond == 0


def test_operator_actions_refuse_paths_outside_the_s3_source(tmp_path, s3):
    """``skip`` of a pending file below the source is done; the same action on a sibling prefix, a ``..`` escape,
    another bucket and a local path is refused with the reason, and none of them reaches the tracker."""
    settings = settings_for(tmp_path, s3)
    inside = s3.put("landing/events/a.parquet", b"a")
    s3.put("landing/events_old/x.parquet", b"x")
    tracker = DeltaTrackerResource.from_settings(settings).for_table("events")
    tracker.create(baseline_txn=0)
    from loader_assets.core.partitions import partition_keys_for

    listing = list_source_files(settings.table("events").source_path)
    tracker.register(listing, partition_keys_for(listing["file_modified_time"], "day", "2024-01-01"))
    outside = [s3.uri("landing/events_old/x.parquet"), s3.uri("landing/events/../other/y.parquet"),
               "s3://another-bucket/landing/events/a.parquet", "/etc/passwd"]
    result = skip_files(settings, "events", [inside, *outside], reason="junk", actor="tester")
    assert result.changed == [inside]
    assert sorted(result.refused) == sorted(outside)
    assert all("not below the table's source_path" in why for why in result.refused.values())
    rows = {r["file_path"]: r["status"] for r in tracker.read().to_pylist()}
    assert rows == {inside: "skipped"}


def test_a_damaged_state_table_on_s3_is_reported_not_recreated(tmp_path, s3):
    """Objects under the tracker's prefix without a Delta log mean damage: reading it raises the repair hint
    instead of treating the tracker as absent (which would start an empty one and load every file again)."""
    settings = settings_for(tmp_path, s3)
    s3.put("checkpoints/file_processing_tracker/events/part-00000.parquet", b"orphan")
    tracker = DeltaTrackerResource.from_settings(settings).for_table("events")
    with pytest.raises(TrackerError, match="is damaged"):
        tracker.read()
