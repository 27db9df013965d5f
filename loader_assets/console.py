"""The console logger of the project's jobs: Dagster's colored console logger, with the expected failure of a run
whose files failed told in one line.

A run in which files failed fails its asset step on purpose, so that Dagster shows their partitions failed
(docs/ARCHITECTURE.md, "A partition with a failed file shows failed"). Each file's error is already logged on one
line as it fails, and the tracker, the run's summary and the ``no_failed_files`` check carry it. Dagster would
print that step failure with a Python stack trace, then one "Dependencies for step ... failed" line per check, then
the run failure with the stack trace again: about fifty lines on the terminal for one bad file. This logger keeps
the step failure as one line with its description, drops the skipped-check lines of that run and the run
failure's repeated trace. Any other failure is printed as Dagster prints it. The event log is not touched.
"""

import logging
from typing import ClassVar

import dagster as dg
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR
from dagster._loggers import colored_console_logger

from loader_assets.materialization import FAILED_FILES_KEY

RUNS_REMEMBERED = 1000


class FailedFilesOnOneLine(logging.Filter):
    """See the module docstring. Remembers the runs whose step failed only for their files, across its instances
    (Dagster builds the console logger more than once per run: the run failure comes through another one)."""

    runs: ClassVar[dict[str, None]] = {}  # insertion-ordered; the oldest are forgotten past RUNS_REMEMBERED

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, LOG_RECORD_METADATA_ATTR, None) or {}
        event = meta.get("dagster_event")
        run_id = meta.get("run_id")
        message = str(record.msg)
        if event is not None and event.is_step_failure and event.step_failure_data is not None:
            user = event.step_failure_data.user_failure_data
            if user is not None and FAILED_FILES_KEY in (user.metadata or {}):
                self.runs[str(run_id)] = None
                while len(self.runs) > RUNS_REMEMBERED:
                    del self.runs[next(iter(self.runs))]
                record.msg = f"{message.split(chr(10), 1)[0]} {user.description}"
                record.args = ()
            return True
        if str(run_id) not in self.runs:
            return True
        if message.split(" - ")[-1].startswith("Dependencies for step "):
            return False  # the run's checks, skipped because its asset step failed for its files
        if "\n\n" in message:  # the run failure, with the step's error and trace again
            record.msg = message.split("\n\n", 1)[0]
            record.args = ()
        return True


def _console_logger(init_context: "dg.InitLoggerContext") -> logging.Logger:
    logger = colored_console_logger.logger_fn(init_context)
    logger.addFilter(FailedFilesOnOneLine())
    return logger


console_logger = dg.LoggerDefinition(
    logger_fn=_console_logger,
    config_schema=colored_console_logger.config_schema,
    description="Dagster's colored console logger; a run whose files failed is told in one line (loader_assets.console).",
)
