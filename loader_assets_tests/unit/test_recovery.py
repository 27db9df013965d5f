from loader_assets.core.discovery import list_source_files
from loader_assets.core.partitions import partition_keys_for
from loader_assets.loading import eligible_files, recover_interrupted
from loader_assets.resources.tracker import DeltaTrackerResource


def no_spark():
    raise AssertionError("recovering a batch that never committed must not need Spark")


def test_an_interrupted_batch_goes_back_in_line_without_using_a_retry(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ["a.csv", "b.csv"]:
        (tmp_path / "in" / name).write_text("h\n1\n")
    listing = list_source_files(str(tmp_path / "in"))
    tracker = DeltaTrackerResource(checkpoint_path=str(tmp_path / "ckpt")).for_table("t")
    tracker.register(listing, partition_keys_for(listing["file_modified_time"], "day", "2024-01-01"))
    paths = listing["file_path"].to_pylist()
    for attempt in range(1, 6):  # five crashes in a row, more than retry_attempts
        tracker.claim(paths, f"b{attempt}", attempt, "run")
        report = recover_interrupted(tracker, str(tmp_path / "no-target"), "t", no_spark)
        assert sorted(report.failed) == sorted(paths) and not report.completed
    rows = tracker.read().to_pylist()
    assert {(r["status"], r["retry_count"]) for r in rows} == {("failed", 0)}
    assert all(r["error_message"].startswith("interrupted: the run loading batch b5") for r in rows)
    assert eligible_files(tracker.read(), retry_attempts=3).num_rows == 2
