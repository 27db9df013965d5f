"""The scd2 and scd1 definitions (docs/CONTRACT.md, "SCD2 and SCD1") in plain Python, for the property tests.

A change row is an ``Event``: key, sequence, its file's time and path (the tie-breakers), op (``upsert`` or
``delete``) and values. ``history`` gives the scd2 versions and ``latest`` the scd1 rows that a *set* of events
defines; ``absences`` gives the deletes a set of full extracts implies. Nothing here knows about batches, orders
or Spark: the loader must give these tables whatever order and batching the files came in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

UPSERT, DELETE = "upsert", "delete"


@dataclass(frozen=True, order=True)
class Event:
    key: int
    seq: int
    file_time: int
    path: str
    op: str
    values: tuple = ()  # (name, tier) for the test tables; the tracked value is values[0]


@dataclass(frozen=True)
class Version:
    key: int
    start: int
    end: int | None
    current: bool
    deleted: bool
    values: tuple
    path: str


def _order(event: Event) -> tuple:
    return (event.seq, event.file_time, event.path, event.op)


def history(events: Iterable[Event], deletion_versions: bool = False) -> list[Version]:
    """scd2 versions: per key in order, an upsert starts a version when the key is not live or its tracked value
    (``values[0]``) differs from the last upsert's; a delete of a live key ends its version (with
    ``deletion_versions``, starts a deletion version carrying the ended version's values)."""
    by_key: dict[int, list[Event]] = {}
    for event in set(events):
        by_key.setdefault(event.key, []).append(event)
    versions: list[Version] = []
    for key, items in by_key.items():
        items.sort(key=_order)
        markers: list[tuple[Event, bool, tuple]] = []  # (event, is a deletion version, values)
        previous: Event | None = None
        carried: tuple = ()
        for event in items:
            if event.op == UPSERT:
                if previous is None or previous.op != UPSERT or previous.values[0] != event.values[0]:
                    markers.append((event, False, event.values))
                    carried = event.values
            elif previous is not None and previous.op == UPSERT:
                markers.append((event, True, carried))
            previous = event
        for i, (event, deletion, values) in enumerate(markers):
            end = markers[i + 1][0].seq if i + 1 < len(markers) else None
            if deletion and not deletion_versions:
                continue
            versions.append(Version(key, event.seq, end, end is None, deletion, values, event.path))
    return sorted(versions, key=lambda v: (v.key, v.start))


def latest(events: Iterable[Event]) -> dict[int, tuple[tuple, str]]:
    """scd1 rows: per key, the latest event if it is an upsert: key -> (values, path)."""
    newest: dict[int, Event] = {}
    for event in set(events):
        if event.key not in newest or _order(event) > _order(newest[event.key]):
            newest[event.key] = event
    return {k: (e.values, e.path) for k, e in newest.items() if e.op == UPSERT}


@dataclass(frozen=True)
class Extract:
    path: str
    seq: int
    file_time: int
    keys: frozenset[int]


def absences(extracts: Sequence[Extract]) -> list[Event]:
    """The deletes full extracts imply: a key in extract i (in (seq, file time, path) order) and not in extract
    i+1 is deleted at extract i+1's sequence."""
    ordered = sorted(extracts, key=lambda e: (e.seq, e.file_time, e.path))
    deletes = []
    for before, after in zip(ordered, ordered[1:], strict=False):
        for key in before.keys - after.keys:
            deletes.append(Event(key, after.seq, after.file_time, after.path, DELETE))
    return deletes
