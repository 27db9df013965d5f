"""The history checks of an scd2 or scd1 table for the few keys a run touched, read with delta-rs, not Spark.

``checks.keyed_report`` compares a table with what its change record defines and checks the history's own
invariants, in Spark: about 3 s of small jobs even when a run changed one key (benchmark P10). When a run's
batches recorded change rows of at most ``MAX_KEYS`` keys, this module answers the same two questions for those
keys from the two tables' pruned Arrow datasets: the record's committed change rows of the keys (rows of
batches up to the target's txn version; extract markers left out), and the table's rows of the keys. The rows
the record defines are ``small_keyed.history`` (scd2: the definition ``scd2.history_from_events`` states for
Spark) or ``small_keyed.latest`` (scd1: ``scd1.latest_from_events``), so the check is exactly as strong as the
Spark one on that scope: every version (scd1: row) the record implies is in the table with its values and
``_source_file`` (scd2: its end and flag too), and nothing else is, no key twice (scd1) or no version twice
(scd2); and for scd2 the invariants: at most one current row per key (exactly one unless keys can be deleted),
the flag set exactly when the end is NULL, versions that start before they end, never overlap and leave no
gaps but deletes.

Tables it does not answer for (None: the caller runs the Spark check): append, full extracts (an extract
deletes keys it does not name, so the scope is the whole table), deletion versions, a missing table or record,
nested columns, more keys than ``MAX_KEYS``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable

from loader_assets.cdc import DELETE, RECORD_FILE_TIME, RECORD_OP, RECORD_SEQUENCE, UPSERT
from loader_assets.changes import ChangeRecord, changes_location
from loader_assets.reading import AUDIT_COLUMNS, BATCH_ID_COLUMN, SOURCE_FILE_COLUMN
from loader_assets.scd2 import HistoryDifference, Scd2Violations, deletes_possible
from loader_assets.settings import ExtractMode, LoaderSettings, TableSettings
from loader_assets.small_keyed import Event, Version, comparable, counted_changes, history, latest, per_file
from loader_assets.target import app_id, open_target

MAX_KEYS = 10_000
SAMPLE = 5


def _label(keys: Sequence[str], key: tuple) -> str:
    return json.dumps(dict(zip(keys, key, strict=True)), default=str, separators=(",", ":"))


def _sample(samples: dict[str, list[str]], name: str, text: str) -> None:
    found = samples.setdefault(name, [])
    if len(found) < SAMPLE:
        found.append(text)


def record_rows_per_file(change_record: ChangeRecord, files: Sequence[str], up_to: int | None = None
                         ) -> dict[str, int] | None:
    """Change rows each of ``files`` has in the record (batches up to ``up_to``, by default those the target
    committed; markers left out), read with delta-rs; None when the table or its record does not exist.
    ``ChangeRecord.rows_per_file`` answers the same in Spark."""
    target = open_target(change_record.target_path)
    record = open_target(change_record.path)
    if target is None or record is None or RECORD_OP not in pa.schema(record.schema().to_arrow()).names:
        return None
    committed = up_to if up_to is not None else target.transaction_version(app_id(change_record.table_name)) or 0
    found = record.to_pyarrow_dataset().to_table(columns=[SOURCE_FILE_COLUMN], filter=counted_changes(
        committed) & ds.field(SOURCE_FILE_COLUMN).isin(pa.array(list(files), pa.string())))
    return per_file(found[SOURCE_FILE_COLUMN])


@dataclass(frozen=True)
class RunKeys:
    """The distinct keys a run's batches recorded counted change rows of (``touched_keys``), with what they were
    read from: the target, the record, the record's Arrow dataset and the filter of its rows that count. The
    scoped check reads its events and rows from the same handles, so a run's check opens each table once."""

    keys: pa.Table
    target: DeltaTable
    record: DeltaTable
    changes: ds.Dataset
    counted: ds.Expression


def touched_keys(table: TableSettings, settings: LoaderSettings, batch_ids: Sequence[str]) -> RunKeys | None:
    """The keys ``batch_ids`` recorded counted change rows of (batches up to the target's txn version, markers
    left out), distinct, read with delta-rs from the record's key and batch id columns: the scope of a run's
    history check. None when the table, its record or the record's op column is missing (the Spark check then
    finds the scope itself)."""
    name = table.table_name
    target = open_target(settings.table_path(name))
    record = open_target(changes_location(settings.target_root, name))
    if target is None or record is None or RECORD_OP not in pa.schema(record.schema().to_arrow()).names:
        return None
    keys = list(table.primary_keys)
    counted = counted_changes(target.transaction_version(app_id(name)) or 0)
    changes = record.to_pyarrow_dataset()
    found = changes.to_table(columns=keys, filter=counted & ds.field(BATCH_ID_COLUMN).isin(
        pa.array(list(batch_ids), pa.string())))
    return RunKeys(found.group_by(keys).aggregate([]), target, record, changes, counted)


def scoped_report(table: TableSettings, settings: LoaderSettings, batch_ids: Sequence[str],
                  touched: RunKeys | None = None) -> tuple[Scd2Violations | None, HistoryDifference] | None:
    """The invariants (scd2; None for scd1) and the difference of the keys ``batch_ids`` recorded change rows
    of, or None when this module does not answer for the table (see the module docstring). ``touched``: those
    keys, when the caller read them already (``touched_keys``)."""
    scd2 = table.is_scd2
    if not table.keeps_changes or table.extract_mode is ExtractMode.FULL or table.flags_deletions or not batch_ids:
        return None
    touched = touched if touched is not None else touched_keys(table, settings, batch_ids)
    if touched is None or touched.keys.num_rows > MAX_KEYS:
        return None
    target, changes, counted = touched.target, touched.changes, touched.counted
    schema = pa.schema(target.schema().to_arrow())
    record_names = set(pa.schema(touched.record.schema().to_arrow()).names)
    if any(pa.types.is_nested(f.type) for f in schema):
        return None
    keys = list(table.primary_keys)
    start, end, current = table.scd2_output_columns
    own = (*AUDIT_COLUMNS, start, end, current) if scd2 else AUDIT_COLUMNS
    data = [f.name for f in schema if f.name not in own]
    if not set(data) <= record_names:
        return None
    wanted = set(zip(*(touched.keys[k].to_pylist() for k in keys), strict=True))
    if not wanted:
        return (Scd2Violations() if scd2 else None), HistoryDifference()
    scope = None
    for index, column in enumerate(keys):
        values = pa.array(sorted({k[index] for k in wanted}), schema.field(column).type)
        scope = ds.field(column).isin(values) if scope is None else scope & ds.field(column).isin(values)
    events = changes.to_table(columns=[*data, RECORD_SEQUENCE, RECORD_FILE_TIME, SOURCE_FILE_COLUMN, RECORD_OP],
                              filter=counted & scope)
    rows = target.to_pyarrow_dataset().to_table(
        columns=[*data, *((start, end, current) if scd2 else ()), SOURCE_FILE_COLUMN], filter=scope)
    key_at = [data.index(k) for k in keys]
    tracked_at = [data.index(c) for c in table.tracking_columns] if scd2 else list(range(len(data)))

    by_key: dict[tuple, list[Event]] = {}
    values_rows = zip(*(events[c].to_pylist() for c in data), strict=True) if events.num_rows else []
    for values, seq, time, path, op in zip(values_rows, events[RECORD_SEQUENCE].to_pylist(),
                                           events[RECORD_FILE_TIME].to_pylist(),
                                           events[SOURCE_FILE_COLUMN].to_pylist(), events[RECORD_OP].to_pylist(),
                                           strict=True):
        key = tuple(values[i] for i in key_at)
        if key in wanted:
            by_key.setdefault(key, []).append(Event(seq, time, path, DELETE if op == DELETE else UPSERT, values,
                                                    tuple(values[i] for i in tracked_at)))
    actual: dict[tuple, list[tuple[Version, Any]]] = {}
    table_values = zip(*(rows[c].to_pylist() for c in data), strict=True) if rows.num_rows else []
    count = rows.num_rows
    for values, first, last, flag, path in zip(
            table_values, *((rows[start].to_pylist(), rows[end].to_pylist(), rows[current].to_pylist()) if scd2
                            else ([None] * count, [None] * count, [True] * count)),
            rows[SOURCE_FILE_COLUMN].to_pylist(), strict=True):
        key = tuple(values[i] for i in key_at)
        if key in wanted:
            actual.setdefault(key, []).append((Version(first, last, bool(flag), values, path), flag))

    difference = HistoryDifference()
    for key in wanted:
        expected = {comparable(v.start): v for v in (history if scd2 else latest)(by_key.get(key, []))}
        seen: set[Any] = set()
        for version, _ in actual.get(key, []):
            at = comparable(version.start)
            if at in seen or at not in expected or not expected[at].same(version):
                difference.unexpected += 1
                _sample(difference.samples, "unexpected", _at(keys, key, version, scd2))
            seen.add(at)
        for at, version in expected.items():
            if not any(comparable(v.start) == at and v.same(version) for v, _ in actual.get(key, [])):
                difference.missing += 1
                _sample(difference.samples, "missing", _at(keys, key, version, scd2))
    return (invariants(actual, keys, deletes_possible(table)) if scd2 else None), difference


def _at(keys: Sequence[str], key: tuple, version: Version, scd2: bool) -> str:
    return f"{_label(keys, key)} from {version.start}" if scd2 else _label(keys, key)


def invariants(actual: dict[tuple, list[tuple[Version, Any]]], keys: Sequence[str], gaps_allowed: bool
               ) -> Scd2Violations:
    """``scd2.violations_of`` over each key's rows (version, the current flag as stored, NULL included)."""
    result = Scd2Violations()
    for key, versions in actual.items():
        label = _label(keys, key)
        ordered = sorted(versions, key=lambda item: (item[0].start is not None, item[0].start))
        currents = sum(1 for _, flag in ordered if flag)
        if currents > 1 or (currents == 0 and not gaps_allowed):
            result.keys_without_one_current += 1
            _sample(result.samples, "keys_without_one_current", label)
        for index, (version, flag) in enumerate(ordered):
            if flag is None or (flag and version.end is not None) or (not flag and version.end is None):
                result.flag_end_disagreements += 1
                _sample(result.samples, "flag_end_disagreements", label)
            following = ordered[index + 1][0].start if index + 1 < len(ordered) else None
            joined = following is not None and version.end is not None and (
                version.end <= following if gaps_allowed else version.end == following)
            if ((following is not None and not joined)
                    or (following is None and version.end is not None and not gaps_allowed)
                    or (version.end is not None and version.end <= version.start)):
                result.interval_breaks += 1
                _sample(result.samples, "interval_breaks", label)
    return result
