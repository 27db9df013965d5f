"""Opening the loader's own state tables (tracker, lock, event log) with delta-rs, telling "absent" from "damaged".

The state tables live under ``checkpoint_path`` on any store delta-rs writes to. Where they live and with which
credentials is a dagster-deltalake storage config (``LocalConfig``, ``S3Config``, ``AzureConfig``,
``GcsConfig``: the ``state_storage`` setting); ``storage_options`` turns it into delta-rs's options. Secrets are
best left out of it: delta-rs reads the usual environment variables (``AWS_ACCESS_KEY_ID`` and so on) itself.
"""

from collections.abc import Mapping

import pyarrow.fs as pafs
from dagster_deltalake import AzureConfig, GcsConfig, LocalConfig, S3Config
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from loader_assets.core.discovery import resolve
from loader_assets.core.errors import TrackerError

StorageConfig = LocalConfig | S3Config | AzureConfig | GcsConfig

# Table properties of every state table (tracker, lock, event log) a write creates. Each lock acquire, renewal
# and release and each tracker transition is a commit; delta-rs checkpoints after every 10th, so opening a
# state table replays at most 9 JSON commits (about 5 ms; delta-rs's default interval is 100).
STATE_TABLE_PROPERTIES = {"delta.checkpointInterval": "10"}


__all__ = ["STATE_TABLE_PROPERTIES", "LocalConfig", "StorageConfig", "open_state_table", "storage_options"]


def storage_options(config: StorageConfig | None) -> dict[str, str]:
    """delta-rs ``storage_options`` of a dagster-deltalake storage config (its ``provider`` tag left out)."""
    if config is None:
        return {}
    return {key: value for key, value in config.str_dict().items() if key != "provider"}


def _has_files(path: str) -> bool:
    filesystem, fs_path = resolve(path)
    try:
        found = filesystem.get_file_info(pafs.FileSelector(fs_path, recursive=False, allow_not_found=True))
    except OSError:
        return False
    return bool(found)


def open_state_table(path: str, damaged_hint: str, options: Mapping[str, str] | None = None) -> DeltaTable | None:
    """The Delta table at ``path``; None when nothing is there yet.

    A directory that has files but no readable Delta log is damaged: that raises TrackerError with
    ``damaged_hint`` instead of being treated as absent, so state is never silently recreated empty.
    """
    try:
        return DeltaTable(path, storage_options=dict(options or {}) or None)
    except TableNotFoundError:
        if _has_files(path):
            raise TrackerError(f"{path} exists but is not a readable Delta table; {damaged_hint}") from None
        return None
