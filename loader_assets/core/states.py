"""The closed set of file states and the transitions between them (DESIGN.md section 4).

    (new) --register--> pending --claim--> processing --complete--> completed
                                               |  \\--fail-------> failed --claim (retry_count < retry_attempts)--> processing
                                               \\--recover: target has the batch's txn -> completed, else -> failed
"""

from __future__ import annotations

from enum import StrEnum


class FileStatus(StrEnum):
    """A file's state in the tracker; values are the seed guide's."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


ALL_STATUSES: tuple[FileStatus, ...] = tuple(FileStatus)
