"""reset-state, force-unlock and missing-state detection, through the CLI's main() in this process."""

import shutil

import pytest

from loader_assets.api import run_pipeline
from loader_assets.cli import main
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets_tests.conftest import target_rows

pytestmark = pytest.mark.spark


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()


def test_reset_state_then_reload_does_not_duplicate(spark, lake, instance, home, capsys, monkeypatch):
    a = lake.write_parquet("events", "a.parquet", [1, 2], days_ago=2)
    settings = lake.config()
    run_pipeline(settings, instance=instance)
    before = target_rows(spark, settings, "events")
    monkeypatch.setattr("builtins.input", lambda _: "n")
    assert main(["reset-state", "--config", str(lake.config_path)]) == 1
    assert "Aborted; nothing was changed." in capsys.readouterr().out
    assert main(["reset-state", "--config", str(lake.config_path), "--yes"]) == 0
    out = capsys.readouterr().out
    assert "The Delta tables are kept" in out and "✓ events: forgot 1 files; table kept" in out
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    assert tracker.exists() and tracker.read().num_rows == 0
    b = lake.write_parquet("events", "b.parquet", [3], days_ago=1)
    summary = run_pipeline(settings, instance=instance)
    assert summary.total_files_processed == 2  # a.parquet reloaded, b.parquet new
    assert target_rows(spark, settings, "events") == sorted(before + [(3, "n3", str(b))])
    assert main(["validate-consistency", "--config", str(lake.config_path)]) == 0
    assert str(a) in {r["file_path"] for r in tracker.read().to_pylist()}


def test_a_missing_tracker_is_reported_and_never_silently_recreated(spark, lake, instance, home, capsys):
    lake.write_parquet("events", "a.parquet", [1], days_ago=1)
    settings = lake.config()
    run_pipeline(settings, instance=instance)
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table("events")
    shutil.rmtree(tracker.path)
    lake.write_parquet("events", "b.parquet", [2], days_ago=1)
    summary = run_pipeline(settings, instance=instance)
    assert "the tracker of table 'events' is missing" in summary.tables["events"].errors[0]
    assert not tracker.exists()
    assert main(["validate-consistency", "--config", str(lake.config_path)]) == 1
    out = capsys.readouterr().out
    assert "reset-state --table events" in out and "Overall Status: INCONSISTENT" in out


def test_force_unlock_asks_and_releases(lake, home, capsys, monkeypatch):
    settings = lake.config()
    lease = DeltaLockResource(checkpoint_path=settings.checkpoint_path).for_table("events").acquire(
        "run-x", wait_seconds=0, heartbeat=False)
    monkeypatch.setattr("builtins.input", lambda _: "")
    assert main(["force-unlock", "--config", str(lake.config_path)]) == 1
    out = capsys.readouterr().out
    assert "events: current lock held by PID" in out and "(the holder looks alive)" in out
    assert "Aborted; the lock is unchanged." in out
    assert main(["force-unlock", "--config", str(lake.config_path), "--yes"]) == 0
    assert "✓ Pipeline lock force released" in capsys.readouterr().out
    assert not DeltaLockResource(checkpoint_path=settings.checkpoint_path).for_table("events").read().held
    lease.release()  # the old holder's release must not touch a lock it no longer owns
    assert main(["force-unlock", "--config", str(lake.config_path)]) == 0
    assert "No pipeline lock is held." in capsys.readouterr().out
