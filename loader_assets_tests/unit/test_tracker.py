import pyarrow as pa
import pytest
from deltalake import DeltaTable

from loader_assets.core.discovery import list_source_files
from loader_assets.core.errors import TrackerError
from loader_assets.core.partitions import partition_keys_for
from loader_assets.core.states import FileStatus
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets_tests.conftest import new_tracker


@pytest.fixture
def files(tmp_path):
    for name in ["a.csv", "b.csv", "c.csv"]:
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text("h\n1\n")
    listing = list_source_files(str(tmp_path / "in"))
    return listing, partition_keys_for(listing["file_modified_time"], "day", "2024-01-01")


def test_register_is_idempotent_and_keeps_known_rows(tmp_path, files):
    tracker = new_tracker(tmp_path / "ckpt")
    assert tracker.read().num_rows == 0 and tracker.max_batch_seq() == 0
    listing, keys = files
    assert tracker.register(listing, keys).new_files == 3
    paths = listing["file_path"].to_pylist()
    tracker.claim(paths[:1], "b1", 1, "run1")
    assert tracker.register(listing, keys).new_files == 0
    rows = {r["file_path"]: r for r in tracker.read().to_pylist()}
    assert rows[paths[0]]["status"] == "processing" and rows[paths[1]]["status"] == "pending"
    assert rows[paths[1]]["fingerprint"] == f"4:{int(listing['file_modified_time'][1].value)}"
    assert rows[paths[0]]["table_name"] == "t"


def test_named_transitions_and_counts(tmp_path, files):
    tracker = new_tracker(tmp_path / "ckpt")
    listing, keys = files
    tracker.register(listing, keys)
    a, b, c = listing["file_path"].to_pylist()
    tracker.claim([a, b], "b7", 7, "run1")
    tracker.complete({a: 10}, "b7", 3)
    tracker.fail({b: "boom"})
    assert tracker.status_counts() == {"pending": 1, "processing": 0, "completed": 1, "failed": 1, "skipped": 0}
    assert tracker.max_batch_seq() == 7
    rows = {r["file_path"]: r for r in tracker.read().to_pylist()}
    assert (rows[a]["row_count"], rows[a]["target_version"], rows[a]["batch_id"]) == (10, 3, "b7")
    assert (rows[b]["error_message"], rows[b]["retry_count"]) == ("boom", 1)
    assert rows[a]["processing_end_time"] is not None and rows[c]["processing_start_time"] is None
    # a failed file can be claimed again, a completed one cannot
    tracker.claim([b], "b8", 8, "run2")
    with pytest.raises(TrackerError, match="cannot claim .* from status 'completed'"):
        tracker.claim([a], "b9", 9, "run3")
    with pytest.raises(TrackerError, match="cannot complete .* from status 'pending'"):
        tracker.complete({c: 1}, "b9", 4)


def test_filtered_read_and_logical_view(tmp_path, files):
    resource = DeltaTrackerResource(checkpoint_path=str(tmp_path / "ckpt"))
    listing, keys = files
    new_tracker(tmp_path / "ckpt", "t").register(listing, keys)
    new_tracker(tmp_path / "ckpt", "u").register(listing.slice(0, 1), keys.slice(0, 1))
    from loader_assets.core.states import FileStatus
    pending = resource.for_table("t").read(columns=["file_path"], statuses=[FileStatus.PENDING])
    assert pending.column_names == ["file_path"] and pending.num_rows == 3
    everything = resource.read_all(["t", "u"])
    assert everything.num_rows == 4 and set(everything["table_name"].to_pylist()) == {"t", "u"}


def test_damaged_tracker_is_reported_not_recreated(tmp_path):
    path = tmp_path / "ckpt" / "file_processing_tracker" / "t"
    path.mkdir(parents=True)
    (path / "part-0.parquet").write_bytes(b"junk")
    tracker = DeltaTrackerResource(checkpoint_path=str(tmp_path / "ckpt")).for_table("t")
    with pytest.raises(TrackerError, match="not a readable Delta table"):
        tracker.read()
    with pytest.raises(TrackerError):
        tracker.register(pa.table({"file_path": ["x"], "file_size": [1], "file_modified_time": [None]}),
                         pa.array(["2024-01-01"]))


def test_a_tracker_written_by_schema_version_1_gains_the_new_columns(tmp_path, files):
    from deltalake import write_deltalake

    from loader_assets.resources.tracker import TRACKER_SCHEMA, TRACKER_SCHEMA_VERSION

    listing, keys = files
    tracker = new_tracker(tmp_path / "ckpt")
    tracker.register(listing, keys)
    v2 = tracker.read()
    v1_names = TRACKER_SCHEMA.names[: TRACKER_SCHEMA.get_field_index("fingerprint") + 1]
    old = tmp_path / "old"
    write_deltalake(str(old), v2.select(v1_names), mode="overwrite")
    legacy = type(tracker)(str(old), "t")
    written = DeltaTable(str(old)).version()
    assert legacy.read().column_names == TRACKER_SCHEMA.names  # the new columns read as nulls
    assert legacy.read(columns=["file_version"])["file_version"].null_count == 3
    # reads understand the old (unpartitioned) layout; the first write moves it to schema 3's
    assert DeltaTable(str(old)).metadata().partition_columns == []
    assert legacy.read(statuses=[FileStatus.PENDING]).num_rows == 3 and legacy.status_counts()["pending"] == 3
    assert legacy.max_batch_seq() == 0 and legacy.baseline_txn() is None
    assert DeltaTable(str(old)).version() == written  # reads never write (no migration from a read)
    assert "file_version" not in DeltaTable(str(old)).schema().to_arrow().names
    a = listing["file_path"][0].as_py()
    legacy.claim([a], "b1", 1, "r")
    migrated = DeltaTable(str(old))
    assert migrated.metadata().partition_columns == ["status"]
    assert migrated.metadata().configuration["loader_assets.tracker_schema_version"] == TRACKER_SCHEMA_VERSION
    legacy.complete({a: 1}, "b1", 0)
    assert legacy.status_counts() == {"pending": 2, "processing": 0, "completed": 1, "failed": 0, "skipped": 0}
    assert legacy.read().num_rows == 3 and legacy.max_batch_seq() == 1


def test_a_transition_rewrites_only_the_partitions_it_moves_rows_from(tmp_path, files):
    """Completed rows are never rewritten by a claim or a completion (benchmark P6's layout)."""
    listing, keys = files
    tracker = new_tracker(tmp_path / "ckpt")
    tracker.register(listing, keys)
    a, b, c = listing["file_path"].to_pylist()
    tracker.claim([a], "b1", 1, "r")
    tracker.complete({a: 5}, "b1", 0)

    def completed_files() -> set[str]:
        actions = pa.table(DeltaTable(tracker.path).get_add_actions(flatten=True))
        return {p for p, s in zip(actions["path"].to_pylist(), actions["partition.status"].to_pylist(),
                                  strict=True) if s == "completed"}

    before = completed_files()
    tracker.claim([b, c], "b2", 2, "r")
    tracker.fail({c: "boom"})
    assert completed_files() == before
    tracker.complete({b: 7}, "b2", 1)
    assert before < completed_files()  # the new completed rows are a new file; the old one stays
    rows = {r["file_path"]: (r["status"], r["row_count"]) for r in tracker.read().to_pylist()}
    assert rows == {a: ("completed", 5), b: ("completed", 7), c: ("failed", None)}
    # a transition from a status the file is not in names it, and writes nothing
    version = DeltaTable(tracker.path).version()
    with pytest.raises(TrackerError, match="cannot complete .* from status 'failed'"):
        tracker.complete({c: 1}, "b3", 2)
    with pytest.raises(TrackerError, match="claim of 1 unknown files"):
        tracker.claim(["/nowhere.csv"], "b3", 3, "r")
    assert DeltaTable(tracker.path).version() == version


def test_changed_fingerprints_follow_the_policy_and_are_reported_once(tmp_path, files):
    import os

    from loader_assets.settings import OnFileChange

    listing, keys = files
    tracker = new_tracker(tmp_path / "ckpt")
    tracker.register(listing, keys)
    a, b, c = listing["file_path"].to_pylist()
    tracker.claim([a, b, c], "b1", 1, "r")
    tracker.complete({a: 1, b: 1}, "b1", 0)
    tracker.fail({c: "boom"})
    for path in (a, b, c):
        with open(path, "a") as handle:
            handle.write("2\n")
        os.utime(path, (1_700_000_000, 1_700_000_000))
    changed = list_source_files(os.path.dirname(a))
    result = tracker.register(changed, keys, OnFileChange.FAIL)
    actions = {c_.file_path: c_.action for c_ in result.changes}
    assert actions == {a: "fail", b: "fail", c: "refresh"}  # c never loaded: it just takes the new version
    rows = {r["file_path"]: r for r in tracker.read().to_pylist()}
    assert rows[a]["status"] == "failed" and rows[a]["retryable"] is False and rows[a]["file_version"] == 1
    assert rows[c]["status"] == "pending" and rows[c]["file_version"] == 2 and rows[c]["retry_count"] == 0
    assert tracker.register(changed, keys, OnFileChange.FAIL).changes == []  # seen once, reported once


def test_eligibility_honours_backoff_retryable_and_file_age():
    from datetime import UTC, datetime, timedelta

    from loader_assets.planning import eligible_mask
    from loader_assets.resources.tracker import TRACKER_SCHEMA

    now = datetime(2026, 1, 2, tzinfo=UTC)
    rows = [
        dict(file_path="pending", status="pending", retry_count=0, file_modified_time=now - timedelta(days=1)),
        dict(file_path="backing_off", status="failed", retry_count=1, next_attempt_at=now + timedelta(minutes=1),
             file_modified_time=now - timedelta(days=1)),
        dict(file_path="due", status="failed", retry_count=1, next_attempt_at=now - timedelta(minutes=1),
             file_modified_time=now - timedelta(days=1)),
        dict(file_path="exhausted", status="failed", retry_count=3, file_modified_time=now - timedelta(days=1)),
        dict(file_path="operator", status="failed", retry_count=0, retryable=False,
             file_modified_time=now - timedelta(days=1)),
        dict(file_path="fresh", status="pending", retry_count=0, file_modified_time=now - timedelta(seconds=5)),
        dict(file_path="skipped", status="skipped", retry_count=0, file_modified_time=now - timedelta(days=1)),
    ]
    table = pa.Table.from_pylist([{**dict.fromkeys(TRACKER_SCHEMA.names), **r} for r in rows], schema=TRACKER_SCHEMA)
    chosen = table.filter(eligible_mask(table, retry_attempts=3, now=now))["file_path"].to_pylist()
    assert sorted(chosen) == ["due", "fresh", "pending"]  # file age is work_files' business (test_planning)


def test_small_files_are_compacted_as_they_pile_up(tmp_path):
    """A long-lived tracker stays a handful of files per status (reads stay fast after many commits)."""
    from loader_assets.resources.tracker import MAX_SMALL_FILES, PARTITION_COLUMNS

    (tmp_path / "in").mkdir()
    tracker = new_tracker(tmp_path / "ckpt")
    for n in range(30):  # one file per batch: register, claim, complete (3 commits each)
        path = tmp_path / "in" / f"f{n:03d}.csv"
        path.write_text("h\n1\n")
        listing = list_source_files(str(path.parent))
        listing = listing.filter(pa.compute.equal(listing["file_path"], str(path)))
        tracker.register(listing, partition_keys_for(listing["file_modified_time"], "day", "2024-01-01"))
        tracker.claim([str(path)], f"b{n}", n + 1, "r")
        tracker.complete({str(path): 1}, f"b{n}", n)
    table = DeltaTable(tracker.path)
    assert table.metadata().partition_columns == PARTITION_COLUMNS
    assert len(table.file_uris()) <= MAX_SMALL_FILES + 1, len(table.file_uris())
    assert tracker.status_counts()["completed"] == 30 and tracker.max_batch_seq() == 30
    assert sorted(tracker.read(columns=["batch_id"])["batch_id"].to_pylist()) == sorted(f"b{n}" for n in range(30))


def test_the_freshness_check_measures_the_newest_loaded_file_and_the_longest_wait(tmp_path):
    import os
    from datetime import UTC, datetime, timedelta

    import dagster as dg

    from loader_assets.checks import freshness_result
    from loader_assets.settings import TableSettings

    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    source = tmp_path / "in"
    source.mkdir()
    for name, minutes_ago in [("loaded.csv", 90), ("waiting.csv", 40)]:
        (source / name).write_text("h\n1\n")
        moment = (now - timedelta(minutes=minutes_ago)).timestamp()
        os.utime(source / name, (moment, moment))
    tracker = new_tracker(tmp_path / "ckpt")
    listing = list_source_files(str(source))
    tracker.register(listing, partition_keys_for(listing["file_modified_time"], "day", "2024-01-01"))
    loaded = str(source / "loaded.csv")
    tracker.claim([loaded], "b1", 1, "run1")
    tracker.complete({loaded: 1}, "b1", 0)

    def check(**limits):
        table = TableSettings(table_name="t", source_path=str(source), file_format="csv", freshness=limits)
        result = freshness_result(table, tracker, retry_attempts=3, now=now)
        return result.passed, result.severity, result.description

    assert check(max_lag_minutes=120, max_pending_minutes=60) == (
        True, dg.AssetCheckSeverity.WARN, "newest loaded file 90 min old, 1 files waiting, the oldest 40 min")
    assert check(max_lag_minutes=60) == (
        False, dg.AssetCheckSeverity.WARN, "the newest loaded file is 90 min old (limit 60)")
    assert check(max_lag_minutes=30) == (
        False, dg.AssetCheckSeverity.ERROR, "the newest loaded file is 90 min old (limit 30)")
    assert check(max_pending_minutes=30) == (
        False, dg.AssetCheckSeverity.ERROR, "a file has waited 40 min to be loaded (limit 30)")
