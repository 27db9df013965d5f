"""Named crash points for fault-injection tests.

A test starts a real process with ``LOADER_ASSETS_KILL_AT=<point>``; when the process reaches that point it
sends itself SIGKILL, exactly like an OOM kill or a node loss. Nothing is cleaned up, nothing is flushed.
The points are the crash windows of the exactly-once protocol (see ``loader_assets.loading``).
"""

from __future__ import annotations

import os
import signal
import threading

KILL_AT_ENV = "LOADER_ASSETS_KILL_AT"

KILL_DELAY_ENV = "LOADER_ASSETS_KILL_DELAY"

# The protocol's crash windows, in the order a batch passes them. The "during" points kill from a timer while
# the step that follows them is running (the Spark write of the target commit; the tracker's completion commit).
AFTER_LOCK = "after_lock"
AFTER_CLAIM = "after_claim"
BEFORE_TARGET_COMMIT = "before_target_commit"
DURING_TARGET_WRITE = "during_target_write"
AFTER_TARGET_COMMIT = "after_target_commit"
DURING_TRACKER_COMMIT = "during_tracker_commit"
AFTER_COMPLETE = "after_complete"
POINTS = (AFTER_LOCK, AFTER_CLAIM, BEFORE_TARGET_COMMIT, DURING_TARGET_WRITE, AFTER_TARGET_COMMIT,
          DURING_TRACKER_COMMIT, AFTER_COMPLETE)
DEFAULT_DELAYS = {DURING_TARGET_WRITE: 1.0, DURING_TRACKER_COMMIT: 0.02}


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment names ``name`` as the kill point."""
    if os.environ.get(KILL_AT_ENV) == name:
        _kill()


def crash_during(name: str) -> None:
    """If the environment names ``name``, SIGKILL this process from a timer ``LOADER_ASSETS_KILL_DELAY`` seconds
    from now (defaults per point), i.e. in the middle of whatever the caller does next."""
    if os.environ.get(KILL_AT_ENV) == name:
        delay = float(os.environ.get(KILL_DELAY_ENV, DEFAULT_DELAYS.get(name, 0.5)))
        timer = threading.Timer(delay, _kill)
        timer.daemon = True
        timer.start()
