from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute  # noqa: F401

from loader_assets.core.discovery import list_source_files
from loader_assets.core.partitions import partition_keys_for
from loader_assets.planning import eligible_mask
from loader_assets.recovery import recover_interrupted
from loader_assets.settings import LoaderSettings
from loader_assets.writers.append import AppendWriter
from loader_assets_tests.conftest import new_tracker


def no_spark():
    raise AssertionError("recovering a batch that never committed must not need Spark")


def test_an_interrupted_batch_goes_back_in_line_without_using_a_retry(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ["a.csv", "b.csv"]:
        (tmp_path / "in" / name).write_text("h\n1\n")
    listing = list_source_files(str(tmp_path / "in"))
    tracker = new_tracker(tmp_path / "ckpt")
    settings = LoaderSettings(target_root=str(tmp_path / "no-target"), checkpoint_path=str(tmp_path / "ckpt"),
                              tables=[{"table_name": "t", "source_path": str(tmp_path / "in"), "file_format": "csv"}])
    writer = AppendWriter(settings.tables[0], settings)
    tracker.register(listing, partition_keys_for(listing["file_modified_time"], "day", "2024-01-01"))
    paths = listing["file_path"].to_pylist()
    for attempt in range(1, 6):  # five crashes in a row, more than retry_attempts
        tracker.claim(paths, f"b{attempt}", attempt, "run")
        report = recover_interrupted(tracker, writer, no_spark)
        assert sorted(report.failed) == sorted(paths) and not report.completed
    rows = tracker.read().to_pylist()
    assert {(r["status"], r["retry_count"]) for r in rows} == {("failed", 0)}
    assert all(r["error_message"].startswith("interrupted: the run loading batch b5") for r in rows)
    assert pa.compute.sum(eligible_mask(tracker.read(), retry_attempts=3, now=datetime.now(UTC))).as_py() == 2
