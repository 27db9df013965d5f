"""The loader's exceptions, and how an error is told in one line.

Each exception carries its identifiers as attributes and names them in its message. ``root_cause`` turns any
error (a Spark failure included) into the line recorded for a file in the tracker: for an error raised in the
JVM that is the innermost Java exception's message, not py4j's "An error occurred while calling o123.save".
"""

from __future__ import annotations

MAX_ERROR_CHARS = 500


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


class BatchWriteError(LoaderError):
    """The target commit of a batch failed; every file of the batch is marked failed for retry."""

    def __init__(self, table: str, batch_id: str, cause: str) -> None:
        self.table = table
        self.batch_id = batch_id
        super().__init__(f"table {table!r}, batch {batch_id}: write failed: {cause}")


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, at most MAX_ERROR_CHARS long."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:MAX_ERROR_CHARS]
    return ""


def root_cause(error: BaseException) -> str:
    """One line naming what went wrong: for an error from the JVM (py4j's ``Py4JJavaError``, pyspark's captured
    exceptions), the deepest Java exception in the cause chain that has a message, with its class name."""
    java = getattr(error, "java_exception", None) or getattr(error, "_origin", None)
    if java is not None:
        try:
            chain: list[tuple[str, str]] = []
            current, depth = java, 0
            while current is not None and depth < 32:
                chain.append((str(current.getClass().getSimpleName()), str(current.getMessage() or "")))
                current, depth = current.getCause(), depth + 1
            for name, message in reversed(chain):
                if message.strip():
                    return first_line(f"{name}: {message}")
        except Exception:  # the JVM may be gone; fall back to the Python text
            pass
    return first_line(str(error)) or type(error).__name__


INTERRUPTIONS = ("KeyboardInterrupt", "DagsterExecutionInterruptedError")


def interruption_of(error: BaseException) -> BaseException | None:
    """The signal interruption (SIGINT, or SIGTERM, which Dagster maps to it) that ``error`` is or arose from,
    if any: the error itself, or one in its ``__cause__``/``__context__`` chain. A signal that lands while the
    JVM is answering leaves py4j's connection out of step, so the error that reaches the loader is often a
    py4j one (a KeyError of one letter, "Method ... does not exist") raised while handling the interruption."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if type(current).__name__ in INTERRUPTIONS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None

