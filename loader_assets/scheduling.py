"""Finding which partitions of a table have work, without writing anything (sensor and CLI share it).

One listing of the source, one read of the tracker, and vectorised set operations (pyarrow hash lookups and masks, no
per-file Python work): a file needs loading when the tracker does not know it yet, knows it as pending, or as
failed with retries left and its backoff over, or when its fingerprint changed in the source since the tracker
last saw it (the run applies ``on_file_change``). Unknown files get the partition their modification time gives
now; known files keep the partition stored at registration. Files younger than ``min_file_age_seconds`` wait.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from loader_assets.core.discovery import TIMESTAMP, fingerprint, list_source_files
from loader_assets.core.partitions import group_into_ranges, partition_keys_for
from loader_assets.core.states import FileStatus
from loader_assets.loading import eligible_files
from loader_assets.resources.lock import TableLock
from loader_assets.resources.tracker import FileTracker, changed_files
from loader_assets.settings import TableSettings


@dataclass(frozen=True)
class PendingWork:
    """The files of one table that a run would load, grouped by partition."""

    table_name: str
    discovered: int
    new_files: int
    pending_files: int
    retryable_files: int
    interrupted_files: int
    changed_files: int
    partition_keys: tuple[str, ...]
    ranges: tuple[tuple[str, str], ...]
    digest: str

    @property
    def has_work(self) -> bool:
        return bool(self.partition_keys)


def find_pending_work(
    table: TableSettings,
    tracker: FileTracker,
    retry_attempts: int,
    lock: TableLock | None = None,
    now: datetime | None = None,
) -> PendingWork:
    """What a run of ``table`` would do now. With ``lock``, files left ``processing`` by a holder that is gone
    count as work too: the run's recovery resolves them (committed -> completed, else retried)."""
    listing = list_source_files(table.source_path)
    known = tracker.read(
        columns=["file_path", "status", "retry_count", "partition_key", "fingerprint", "batch_id",
                 "source_fingerprint", "retryable", "next_attempt_at", "file_modified_time"]
    )
    new = listing.filter(pc.invert(pc.is_in(listing["file_path"], known["file_path"])))
    if table.min_file_age_seconds > 0:
        settled = (now or datetime.now(UTC)) - timedelta(seconds=table.min_file_age_seconds)
        new = new.filter(pc.less_equal(new["file_modified_time"], pa.scalar(settled, TIMESTAMP)))
    new_keys = partition_keys_for(
        new["file_modified_time"], table.partitioning.granularity.value, table.partitioning.start, now
    )
    # Only files still in the source count: a tracked file that was deleted from the landing zone cannot load.
    present = known.filter(pc.is_in(known["file_path"], listing["file_path"]))
    eligible = eligible_files(present, retry_attempts, now, table.min_file_age_seconds)
    changed = changed_files(present, listing)
    orphaned = known.slice(0, 0)
    if lock is not None:
        processing = known.filter(pc.equal(known["status"], FileStatus.PROCESSING.value))
        if processing.num_rows:
            state = lock.read()
            if state is None or not state.held or state.stale_reason() is not None:
                orphaned = processing
    keys = sorted(
        set(new_keys.to_pylist())
        | set(eligible["partition_key"].to_pylist())
        | set(orphaned["partition_key"].to_pylist())
        | set(changed["partition_key"].to_pylist())
    )
    entries = [
        "\x00".join((path, fp, "0", ""))
        for path, fp in zip(
            new["file_path"].to_pylist(),
            fingerprint(new["file_size"], new["file_modified_time"]).to_pylist(),
            strict=True,
        )
    ]
    entries += [
        "\x00".join((path, fp, str(retries or 0), batch_id or ""))
        for path, fp, retries, batch_id in zip(
            eligible["file_path"].to_pylist(), eligible["fingerprint"].to_pylist(),
            eligible["retry_count"].to_pylist(), eligible["batch_id"].to_pylist(), strict=True,
        )
    ]
    entries += [
        "\x00".join((path, "interrupted", batch_id or ""))
        for path, batch_id in zip(orphaned["file_path"].to_pylist(), orphaned["batch_id"].to_pylist(), strict=True)
    ]
    entries += [
        "\x00".join((path, "changed", fp or ""))
        for path, fp in zip(changed["file_path"].to_pylist(), changed["_fp"].to_pylist(), strict=True)
    ]
    digest = hashlib.sha256("\n".join(sorted(entries)).encode())
    return PendingWork(
        table_name=table.table_name,
        discovered=listing.num_rows,
        new_files=new.num_rows,
        pending_files=int(pc.sum(pc.equal(eligible["status"], "pending")).as_py() or 0),
        retryable_files=int(pc.sum(pc.equal(eligible["status"], "failed")).as_py() or 0),
        interrupted_files=orphaned.num_rows,
        changed_files=changed.num_rows,
        partition_keys=tuple(keys),
        ranges=tuple(group_into_ranges(keys, table.partitioning.granularity.value)),
        digest=digest.hexdigest()[:16],
    )
