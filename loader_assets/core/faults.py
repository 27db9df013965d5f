"""Named crash points for fault-injection tests.

A test starts a real process with ``LOADER_ASSETS_KILL_AT=<point>``; when the process reaches that point it
sends itself SIGKILL, exactly like an OOM kill or a node loss. Nothing is cleaned up, nothing is flushed.
The points are the crash windows of the exactly-once protocol (see ``loader_assets.loading``).
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "LOADER_ASSETS_KILL_AT"

# The protocol's crash windows, in the order a batch passes them.
AFTER_LOCK = "after_lock"
AFTER_CLAIM = "after_claim"
BEFORE_TARGET_COMMIT = "before_target_commit"
AFTER_TARGET_COMMIT = "after_target_commit"
AFTER_COMPLETE = "after_complete"
POINTS = (AFTER_LOCK, AFTER_CLAIM, BEFORE_TARGET_COMMIT, AFTER_TARGET_COMMIT, AFTER_COMPLETE)


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment names ``name`` as the kill point."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
