"""Opening the loader's own state tables (tracker, lock) with delta-rs, telling "absent" from "damaged"."""

from pathlib import Path

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from loader_assets.core.errors import TrackerError

# Table properties of every state table (tracker, lock, event log) a write creates. Each lock acquire, renewal
# and release and each tracker transition is a commit; delta-rs checkpoints after every 10th, so opening a
# state table replays at most 9 JSON commits (about 5 ms; delta-rs's default interval is 100).
STATE_TABLE_PROPERTIES = {"delta.checkpointInterval": "10"}


def open_state_table(path: str, damaged_hint: str) -> DeltaTable | None:
    """The Delta table at ``path``; None when nothing is there yet.

    A directory that has files but no readable Delta log is damaged: that raises TrackerError with
    ``damaged_hint`` instead of being treated as absent, so state is never silently recreated empty.
    """
    try:
        return DeltaTable(path)
    except TableNotFoundError:
        if Path(path).exists() and any(Path(path).iterdir()):
            raise TrackerError(f"{path} exists but is not a readable Delta table; {damaged_hint}") from None
        return None
