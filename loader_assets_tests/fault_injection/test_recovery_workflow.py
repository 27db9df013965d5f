"""The seed guide's recovery workflow on a pipeline left broken by a SIGKILLed run, through the real CLI: the
killed run is a process of its own; detect, fix, verify and resume run the CLI's ``main()`` in this process."""

import json
import signal

import pytest

from loader_assets.core import faults
from loader_assets.resources.lock import DeltaLockResource
from loader_assets_tests.conftest import target_rows
from loader_assets_tests.fault_injection.test_crash_windows import (
    cli,
    cli_here,
    expected_rows,
    seed_files,
    tracker_statuses,
)

pytestmark = [pytest.mark.fault, pytest.mark.spark]


def test_detect_fix_verify_resume(spark, lake):
    paths = seed_files(lake)
    settings = lake.config()
    code, _, err = cli(lake, "run", kill_at=faults.AFTER_CLAIM)
    assert code == -signal.SIGKILL, err[-2000:]

    # 1. detect: orphans and the dead holder's lock are reported, exit 1 for monitoring
    code, out, _ = cli_here(lake, "validate-consistency")
    assert code == 1
    assert "=== PIPELINE CONSISTENCY VALIDATION ===" in out and "Overall Status: INCONSISTENT" in out
    assert "File Tracker Status: inconsistent" in out and "Total Files Checked: 4" in out
    for path in paths:
        assert f"  - Orphaned processing record: {path}" in out
    assert "Stale lock on events" in out and "is gone" in out
    code, out, _ = cli_here(lake, "validate-consistency", "--json")
    report = json.loads(out)
    assert code == 1 and report["inconsistencies_found"] == 5
    assert report["tables"][0]["orphaned_processing"] == sorted(str(p) for p in paths)

    # 2. fix
    code, out, err = cli_here(lake, "fix-inconsistencies")
    assert code == 0, out + err[-2000:]
    assert "=== FIXING PIPELINE INCONSISTENCIES ===" in out and "Fixes Applied: 2" in out and "Fixes Failed: 0" in out
    assert "Released stale lock of events" in out
    assert "Fixed 4 orphaned processing records of events: their batch had not committed" in out
    assert set(tracker_statuses(settings).values()) == {("failed", None)}
    assert not DeltaLockResource(checkpoint_path=settings.checkpoint_path).for_table("events").read().held

    # 3. verify
    code, out, _ = cli_here(lake, "validate-consistency")
    assert code == 0 and "Overall Status: CONSISTENT" in out and "  ✓ events" in out

    # 4. resume
    code, out, err = cli_here(lake, "run", "--json")
    assert code == 0, err[-3000:]
    assert json.loads(out)["total_files_processed"] == 4
    assert target_rows(spark, settings, "events") == expected_rows(paths)
    code, out, _ = cli_here(lake, "validate-consistency")
    assert code == 0, out
