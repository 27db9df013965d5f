"""Named crash points for fault-injection tests.

A test starts a real process with ``LOADER_ASSETS_KILL_AT=<point>`` (and ``LOADER_ASSETS_KILL_AT_HIT=<n>`` for the
n-th time the point is reached, e.g. in the second batch of a run); when the process reaches that point it sends
itself SIGKILL, exactly like an OOM kill or a node loss. Nothing is cleaned up, nothing is flushed.
The points are the crash windows of the exactly-once protocol (see ``loader_assets.load``).

``LOADER_ASSETS_PAUSE_AT=<point>`` with ``LOADER_ASSETS_PAUSE_FILE=<path>`` instead holds the process at the
point: it creates ``<path>.reached`` and waits (up to 120 s) until ``<path>`` exists, so a test can change the
world at that instant (a writer appending to a claimed file, for one). ``LOADER_ASSETS_PAUSE_AT_HIT=<n>`` holds
it only the n-th time (default: every time).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

KILL_AT_ENV = "LOADER_ASSETS_KILL_AT"
KILL_AT_HIT_ENV = "LOADER_ASSETS_KILL_AT_HIT"  # kill the n-th time the point is reached (default 1)

KILL_DELAY_ENV = "LOADER_ASSETS_KILL_DELAY"
PAUSE_AT_ENV = "LOADER_ASSETS_PAUSE_AT"
PAUSE_FILE_ENV = "LOADER_ASSETS_PAUSE_FILE"
PAUSE_AT_HIT_ENV = "LOADER_ASSETS_PAUSE_AT_HIT"

# The protocol's crash windows, in the order a batch passes them. The "during" points kill from a timer while
# the step that follows them is running (the Spark write of the target commit; the tracker's completion commit).
AFTER_LOCK = "after_lock"
AFTER_CLAIM = "after_claim"
BEFORE_TARGET_COMMIT = "before_target_commit"
DURING_TARGET_WRITE = "during_target_write"
AFTER_CHANGE_RECORD = "after_change_record"  # scd2: the change record took the batch, the target not yet
AFTER_TARGET_COMMIT = "after_target_commit"
DURING_TRACKER_COMMIT = "during_tracker_commit"
AFTER_COMPLETE = "after_complete"
POINTS = (AFTER_LOCK, AFTER_CLAIM, BEFORE_TARGET_COMMIT, DURING_TARGET_WRITE, AFTER_CHANGE_RECORD,
          AFTER_TARGET_COMMIT, DURING_TRACKER_COMMIT, AFTER_COMPLETE)
DEFAULT_DELAYS = {DURING_TARGET_WRITE: 1.0, DURING_TRACKER_COMMIT: 0.02}


_hits: dict[str, int] = {}
_pauses: dict[str, int] = {}


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _armed(name: str) -> bool:
    """True when the environment names ``name`` as the kill point and this is the hit it names."""
    if os.environ.get(KILL_AT_ENV) != name:
        return False
    _hits[name] = _hits.get(name, 0) + 1
    return _hits[name] == int(os.environ.get(KILL_AT_HIT_ENV, "1"))


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment names ``name`` as the kill point (or hold it there, see above)."""
    if _armed(name):
        _kill()
    if os.environ.get(PAUSE_AT_ENV) == name and os.environ.get(PAUSE_FILE_ENV):
        _pauses[name] = _pauses.get(name, 0) + 1
        if os.environ.get(PAUSE_AT_HIT_ENV) not in (None, str(_pauses[name])):
            return
        release = Path(os.environ[PAUSE_FILE_ENV])
        Path(f"{release}.reached").touch()
        deadline = time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def crash_during(name: str) -> None:
    """If the environment names ``name``, SIGKILL this process from a timer ``LOADER_ASSETS_KILL_DELAY`` seconds
    from now (defaults per point), i.e. in the middle of whatever the caller does next."""
    if _armed(name):
        delay = float(os.environ.get(KILL_DELAY_ENV, DEFAULT_DELAYS.get(name, 0.5)))
        timer = threading.Timer(delay, _kill)
        timer.daemon = True
        timer.start()
