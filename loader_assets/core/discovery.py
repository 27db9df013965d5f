"""Listing a table's landing directory: one recursive listing, no per-file calls.

Paths go through ``pyarrow.fs`` so local directories and object stores (``s3://``, ``gs://``, ``abfss://``) list
through the same code. The listing is returned as a pyarrow Table so the diff against the tracker is vectorised.

Files whose name, or any directory below the source root, starts with ``.`` or ``_`` are skipped: writers use
those for temporary and marker files (``_SUCCESS``, ``.part``, ``.crc``), the same convention Spark follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

TIMESTAMP = pa.timestamp("us", tz="UTC")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LISTING_SCHEMA = pa.schema(
    [
        pa.field("file_path", pa.string(), nullable=False),
        pa.field("file_size", pa.int64()),
        pa.field("file_modified_time", TIMESTAMP),
    ]
)


@dataclass(frozen=True)
class SourceLocation:
    """A source directory resolved to a pyarrow filesystem and a path inside it."""

    filesystem: pafs.FileSystem
    root: str
    uri_prefix: str

    @classmethod
    def parse(cls, source_path: str) -> SourceLocation:
        if "://" in source_path:
            filesystem, root = pafs.FileSystem.from_uri(source_path)
            scheme = source_path.split("://", 1)[0]
            return cls(filesystem, root.rstrip("/"), f"{scheme}://")
        return cls(pafs.LocalFileSystem(), source_path.rstrip("/") or "/", "")

    def to_user_path(self, fs_path: str) -> str:
        """The path as the user wrote it: absolute local path, or scheme://bucket/key."""
        return f"{self.uri_prefix}{fs_path}"


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem a user path (local, or ``scheme://...``) lives on, and the path inside it."""
    location = SourceLocation.parse(path)
    return location.filesystem, path[len(location.uri_prefix):]


def _is_hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def list_source_files(source_path: str) -> pa.Table:
    """Every data file below ``source_path`` with its size and modification time, sorted by path.

    A missing source directory lists as empty (a table may be configured before its first file lands).
    """
    location = SourceLocation.parse(source_path)
    selector = pafs.FileSelector(location.root, recursive=True, allow_not_found=True)
    infos = location.filesystem.get_file_info(selector)
    prefix_len = len(location.root) + 1
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        if _is_hidden(info.path[prefix_len:]):
            continue
        paths.append(location.to_user_path(info.path))
        sizes.append(info.size)
        mtime_ns = info.mtime_ns
        mtimes.append((mtime_ns // 1000) if mtime_ns is not None else 0)
    table = pa.table(
        {
            "file_path": pa.array(paths, pa.string()),
            "file_size": pa.array(sizes, pa.int64()),
            "file_modified_time": pa.array(mtimes, pa.int64()).cast(TIMESTAMP),
        },
        schema=LISTING_SCHEMA,
    )
    return table.sort_by("file_path")


def micros_to_datetime(micros: int) -> datetime:
    """An exact UTC datetime from microseconds since the epoch (no float rounding, so fingerprints match)."""
    return EPOCH + timedelta(microseconds=micros)


def fingerprint(sizes: pa.Array, mtimes: pa.Array) -> pa.Array:
    """``<size>:<mtime in microseconds>`` per file: a file whose fingerprint changes is a new version of it."""
    mtime_us = pc.cast(mtimes, pa.int64())
    return pc.binary_join_element_wise(pc.cast(sizes, pa.string()), pc.cast(mtime_us, pa.string()), ":")


def is_within(source_path: str, file_path: str) -> bool:
    """True when ``file_path`` lies below ``source_path`` (a run never reads outside its table's source)."""
    root = source_path.rstrip("/") + "/"
    return file_path.startswith(root) and ".." not in file_path[len(root):].split("/")
