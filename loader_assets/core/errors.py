"""The loader's exceptions. Each carries its identifiers as attributes and names them in its message."""

from __future__ import annotations


class LoaderError(Exception):
    """Base class of every error the loader raises on purpose."""


class ConfigError(LoaderError):
    """The configuration is invalid. The message names the file and the bad fields."""


class TrackerError(LoaderError):
    """The tracker or lock state on disk is missing, unreadable or inconsistent."""


class LockHeldError(LoaderError):
    """A table's lock is held by another live holder and did not come free in time."""

    def __init__(self, table: str, holder: str, waited_seconds: float) -> None:
        self.table = table
        self.holder = holder
        self.waited_seconds = waited_seconds
        super().__init__(
            f"table {table!r} is locked by {holder}; waited {waited_seconds:.0f} s "
            "(raise lock_wait_seconds, or check the holder with `loader-assets status`)"
        )


class LockLostError(LoaderError):
    """This process's lease on a table's lock was taken over (it expired) while the process still worked."""

    def __init__(self, table: str, detail: str) -> None:
        self.table = table
        super().__init__(f"lost the lock of table {table!r}: {detail}")


class FileLoadError(LoaderError):
    """One source file cannot be loaded. The file fails alone; the rest of its batch goes on."""

    def __init__(self, table: str, file_path: str, cause: str) -> None:
        self.table = table
        self.file_path = file_path
        self.cause = cause
        super().__init__(f"table {table!r}, file {file_path!r}: {cause}")


class BatchWriteError(LoaderError):
    """The target commit of a batch failed; every file of the batch is marked failed for retry."""

    def __init__(self, table: str, batch_id: str, cause: str) -> None:
        self.table = table
        self.batch_id = batch_id
        super().__init__(f"table {table!r}, batch {batch_id}: write failed: {cause}")
