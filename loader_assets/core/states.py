"""The closed set of file states and the transitions between them (DESIGN.md section 4).

    (new) --register--> pending --claim--> processing --complete--> completed
                                               |  \\--fail-------> failed --claim (retries left, backoff over)--> processing
                                               |  \\--release----> pending   (file still being written: wait for it)
                                               \\--recover: target has the batch's txn -> completed, else -> failed
    pending | failed --skip (operator, or duplicate_content=skip)--> skipped
    failed --retry (operator)--> pending;  completed | skipped | failed --reprocess (operator)--> pending
    completed --changed in the source (on_file_change)--> pending (reload) | failed, not retried (fail) | kept (ignore)
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
