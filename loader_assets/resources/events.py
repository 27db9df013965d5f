"""The event log of one table's files: every change seen in the source and every operator action.

Layout: ``<checkpoint_path>/file_events/<table_name>``, an append-only Delta table written with delta-rs. The
tracker holds each file's current state; this log holds how it got there: a file that changed after it was
loaded (old and new fingerprint, the version number, the batch and row count of the version it replaces, what
``on_file_change`` did), a duplicate skipped by content hash, and ``retry`` / ``reprocess`` / ``skip`` by an
operator (who, when, why).

Invariants: appends only (appends never conflict with each other in Delta). Events are written after the tracker
commit they describe; a crash between the two loses the event, never the file's state.
"""

import getpass
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from loader_assets.core.discovery import TIMESTAMP
from loader_assets.resources._state_tables import STATE_TABLE_PROPERTIES

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_time", TIMESTAMP),
        pa.field("table_name", pa.string()),
        pa.field("file_path", pa.string()),
        pa.field("event", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("actor", pa.string()),
        pa.field("file_version", pa.int32()),
        pa.field("old_fingerprint", pa.string()),
        pa.field("new_fingerprint", pa.string()),
        pa.field("previous_status", pa.string()),
        pa.field("previous_batch_id", pa.string()),
        pa.field("previous_row_count", pa.int64()),
    ]
)


def current_actor() -> str:
    """``user@host (pid N)``: who performed an operator action."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


class FileEvents:
    """Append and read the event log of one table."""

    def __init__(self, path: str, table_name: str, options: dict[str, str] | None = None) -> None:
        self.path = path
        self.table_name = table_name
        self.options = dict(options or {})

    def record(self, events: Sequence[dict[str, Any]]) -> int:
        """Append events (dicts with EVENT_SCHEMA's keys; missing keys are null). One commit."""
        if not events:
            return 0
        now = datetime.now(UTC)
        rows = [
            {**{name: None for name in EVENT_SCHEMA.names}, "event_time": now, "table_name": self.table_name, **e}
            for e in events
        ]
        write_deltalake(self.path, pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), mode="append",
                        configuration=STATE_TABLE_PROPERTIES,  # applies when this write creates the table
                        storage_options=self.options or None)
        return len(rows)

    def read(self, file_paths: Sequence[str] | None = None) -> pa.Table:
        """Events in time order, optionally of some files only."""
        try:
            table = DeltaTable(self.path, storage_options=self.options or None).to_pyarrow_table()
        except TableNotFoundError:
            return EVENT_SCHEMA.empty_table()
        if file_paths:
            table = table.filter(pc.is_in(table["file_path"], pa.array(list(file_paths), pa.string())))
        return table.sort_by([("event_time", "ascending")])
