"""The closed set of file states and the transitions between them (docs/CONTRACT.md, "Every file has a state").

    (new) --register--> pending --claim--> processing --complete--> completed
                                               |  \\--fail-------> failed --claim (retries left, backoff over)--> processing
                                               |  \\--release----> pending   (file still being written: wait for it)
                                               \\--recover: target has the batch's txn -> completed, else -> failed
    pending | failed --skip (operator, or duplicate_content=skip)--> skipped
    failed --retry (operator)--> pending;  completed | skipped | failed --reprocess (operator)--> pending
    completed --changed in the source (on_file_change)--> pending (reload) | failed, not retried (fail) | kept (ignore)
    pending | failed --vanish (no longer in the source)--> failed (not counted as a retry)

``TRANSITIONS`` is what the tracker consults: each named transition moves rows only from its source statuses,
and a row in any other status makes the transition fail instead of moving it.
"""

from __future__ import annotations

from enum import StrEnum


class FileStatus(StrEnum):
    """A file's state in the tracker; values are the seed guide's."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


ALL_STATUSES: tuple[FileStatus, ...] = tuple(FileStatus)

# Statuses a run may pick work from (pending, and failed with retries left): the tracker's small partitions.
ACTIVE_STATUSES: tuple[FileStatus, ...] = (FileStatus.PENDING, FileStatus.FAILED)

# transition name -> (statuses it moves rows from, status it moves them to)
TRANSITIONS: dict[str, tuple[tuple[FileStatus, ...], FileStatus]] = {
    "claim": ((FileStatus.PENDING, FileStatus.FAILED), FileStatus.PROCESSING),
    "reclaim": ((FileStatus.PROCESSING,), FileStatus.PROCESSING),  # a split batch's half gets a batch of its own
    "complete": ((FileStatus.PROCESSING,), FileStatus.COMPLETED),
    "fail": ((FileStatus.PROCESSING, FileStatus.PENDING, FileStatus.FAILED), FileStatus.FAILED),
    "release": ((FileStatus.PROCESSING,), FileStatus.PENDING),
    "skip": ((FileStatus.PENDING, FileStatus.FAILED), FileStatus.SKIPPED),
    "retry": ((FileStatus.FAILED,), FileStatus.PENDING),
    "reprocess": ((FileStatus.COMPLETED, FileStatus.SKIPPED, FileStatus.FAILED), FileStatus.PENDING),
}


def sources_of(transition: str) -> tuple[FileStatus, ...]:
    """The statuses ``transition`` moves rows from."""
    return TRANSITIONS[transition][0]


def target_of(transition: str) -> FileStatus:
    """The status ``transition`` moves rows to."""
    return TRANSITIONS[transition][1]
