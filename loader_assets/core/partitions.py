"""Time-window partition keys for files (docs/ARCHITECTURE.md, "Partitions and runs").

A file's partition is the window of its modification time at first discovery, in UTC, in Dagster's key format
(``2024-01-31`` daily, ``2024-01-31-13:00`` hourly). Every file gets a partition whatever its date: one older than
the first partition goes to the first, one dated after the last existing partition goes to the last. The key
is stored in the tracker when the file is registered and never recomputed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

DAY_FORMAT = "%Y-%m-%d"
HOUR_FORMAT = "%Y-%m-%d-%H:%M"


def key_format(granularity: str) -> str:
    return HOUR_FORMAT if granularity == "hour" else DAY_FORMAT


def parse_start(start: str) -> datetime:
    for fmt in (HOUR_FORMAT, DAY_FORMAT):
        try:
            return datetime.strptime(start, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"bad partition start {start!r}")


def window_start(moment: datetime, granularity: str) -> datetime:
    moment = moment.astimezone(UTC)
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def last_partition_start(granularity: str, now: datetime | None = None) -> datetime:
    """Start of the newest partition that exists now (the current window: the asset uses ``end_offset=1``)."""
    return window_start(now or datetime.now(UTC), granularity)


def partition_keys_for(
    mtimes: pa.Array, granularity: str, start: str, now: datetime | None = None
) -> pa.Array:
    """The partition key of each modification time, clamped into [first partition, current partition]."""
    first = window_start(parse_start(start), granularity)
    last = last_partition_start(granularity, now)
    ts_type = pa.timestamp("us", tz="UTC")
    micros = pc.cast(pc.cast(mtimes, ts_type), pa.int64())  # element-wise min/max have no timestamp kernels
    lowest = _micros(first)
    highest = _micros(last + _width(granularity)) - 1
    clamped = pc.min_element_wise(pc.max_element_wise(micros, lowest), highest)
    windows = pc.floor_temporal(pc.cast(clamped, ts_type), unit=granularity)
    return pc.strftime(windows, format=key_format(granularity))


def _micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _width(granularity: str) -> timedelta:
    return timedelta(hours=1) if granularity == "hour" else timedelta(days=1)


def key_to_datetime(key: str, granularity: str) -> datetime:
    return datetime.strptime(key, key_format(granularity)).replace(tzinfo=UTC)


def group_into_ranges(keys: list[str], granularity: str, max_gap: int = 7) -> list[tuple[str, str]]:
    """Group sorted partition keys into contiguous-enough ranges.

    A ranged run pays Dagster bookkeeping for every partition inside it, empty ones included (about 60 ms each
    on sqlite), so keys more than ``max_gap`` windows apart go into separate runs.
    """
    if not keys:
        return []
    ordered = sorted(set(keys))
    width = _width(granularity)
    ranges: list[tuple[str, str]] = []
    start = prev = ordered[0]
    for key in ordered[1:]:
        gap = (key_to_datetime(key, granularity) - key_to_datetime(prev, granularity)) / width
        if gap > max_gap:
            ranges.append((start, prev))
            start = key
        prev = key
    ranges.append((start, prev))
    return ranges
