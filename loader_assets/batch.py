"""A claimed batch: the immutable description of one claim, which the load hands to its writer.

A batch is the files the tracker moved to ``processing`` in one commit, under one ``batch_id`` and one
``batch_seq`` (strictly increasing per table). Nothing about it changes after the claim; a batch that is split
(``part``) becomes new batches with numbers of their own, claimed again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from loader_assets.reading import ExpectedFile
from loader_assets.settings import TableSettings
from loader_assets.target import app_id, commit_metadata

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class ClaimedBatch:
    """One claim. ``replace`` is True when some of its files may already have rows in the target, as the tracker
    records durably (the file was claimed before, or the tracker started after the target held batches): the
    batch's commit then replaces those files' rows instead of appending beside them."""

    table: TableSettings
    target_path: str
    run_id: str
    batch_id: str
    batch_seq: int
    files: tuple[ExpectedFile, ...]
    replace: bool
    # what the read found per file that commits with the rows (``quarantined`` rows, ``expectations`` results):
    # it rides in the commit's userMetadata, so recovery restores it with the batch (docs/ARCHITECTURE.md)
    quality: tuple[tuple[str, str], ...] = ()

    @property
    def table_name(self) -> str:
        return self.table.table_name

    @property
    def app_id(self) -> str:
        return app_id(self.table.table_name)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def file_times(self) -> dict[str, int]:
        """path -> modification time (microseconds) as the tracker saw it at discovery."""
        return {f.path: f.modified_micros for f in self.files}

    def user_metadata(self, merge: str | None = None) -> str:
        return commit_metadata(self.batch_id, self.batch_seq, self.run_id, self.table_name, len(self.files),
                               {path: json.loads(found) for path, found in self.quality}, merge)

    def with_quality(self, quarantined: Mapping[str, int], expectations: Mapping[str, Any]) -> ClaimedBatch:
        """This batch carrying what its read found per file (see ``quality``)."""
        found = {}
        for path in self.paths:
            entry = {**({"quarantined": quarantined[path]} if path in quarantined else {}),
                     **({"expectations": expectations[path]} if path in expectations else {})}
            if entry:
                found[path] = json.dumps(entry, sort_keys=True)
        return replace(self, quality=tuple(sorted(found.items())))

    def txn_options(self) -> dict[str, str]:
        """The DataFrameWriter options that make an append or overwrite this batch's one commit."""
        return {"txnAppId": self.app_id, "txnVersion": str(self.batch_seq), "userMetadata": self.user_metadata()}

    def part(self, paths: Sequence[str], batch_id: str, batch_seq: int) -> ClaimedBatch:
        """The batch of some of these files under a new id and number (a split batch's half)."""
        wanted = set(paths)
        return replace(self, batch_id=batch_id, batch_seq=batch_seq,
                       files=tuple(f for f in self.files if f.path in wanted),
                       quality=tuple(q for q in self.quality if q[0] in wanted))


@dataclass
class PreparedRows:
    """The rows a writer will commit, what it computed on the way (``extras``), and what it cached
    (``cached``, unpersisted by ``release`` once the batch is written or abandoned)."""

    rows: DataFrame
    extras: dict[str, Any] = field(default_factory=dict)
    cached: list[DataFrame] = field(default_factory=list)

    def keep(self, frame: DataFrame) -> DataFrame:
        """Persist ``frame`` for the rest of this batch."""
        frame = frame.persist()
        self.cached.append(frame)
        return frame

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()
        self.cached.clear()
