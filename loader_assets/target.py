"""What the loader reads from a target table's Delta log with delta-rs (no Spark): its txn version and commits.

Every commit a batch makes on a target carries ``txnAppId = loader_assets/<table>`` and ``txnVersion =
batch_seq`` and names the batch in its ``userMetadata`` (docs/CONTRACT.md, "The protocol"). So the target itself
says which batches landed: ``txn_version`` is the highest batch_seq it recorded, and ``batch_commit`` finds the
commit of one batch. Recovery, planning and the checks decide from these facts, never from a run's memory.
"""

from __future__ import annotations

import json
from typing import Any

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

APP_ID_PREFIX = "loader_assets/"


def app_id(table_name: str) -> str:
    """The Delta txnAppId every commit of this table carries."""
    return f"{APP_ID_PREFIX}{table_name}"


def open_target(target_path: str) -> DeltaTable | None:
    """The target's Delta table, or None if it was never written."""
    try:
        return DeltaTable(target_path)
    except TableNotFoundError:
        return None


def txn_version(target_path: str, application: str) -> int:
    """The highest txnVersion the table at ``target_path`` recorded for ``application`` (0 when none)."""
    table = open_target(target_path)
    if table is None:
        return 0
    return table.transaction_version(application) or 0


def target_txn_version(target_path: str, table_name: str) -> int:
    """The highest batch_seq the target has committed for this table (0 when none)."""
    return txn_version(target_path, app_id(table_name))


def batch_commit(target_path: str, batch_id: str, search_depth: int = 200) -> dict[str, Any] | None:
    """The history entry (version, operation, operationMetrics, ...) of the commit that carries ``batch_id``
    in its userMetadata, looking back ``search_depth`` commits; None if there is none."""
    table = open_target(target_path)
    if table is None:
        return None
    for entry in table.history(search_depth):
        raw = entry.get("userMetadata")
        if not raw:
            continue
        try:
            if json.loads(raw).get("batch_id") == batch_id:
                return entry
        except (ValueError, AttributeError):
            continue
    return None


def commit_metadata(batch_id: str, batch_seq: int, run_id: str, table_name: str, files: int) -> str:
    """The userMetadata of a batch's commit (JSON naming the batch)."""
    return json.dumps({"batch_id": batch_id, "batch_seq": batch_seq, "run_id": run_id, "table": table_name,
                       "files": files}, sort_keys=True)
