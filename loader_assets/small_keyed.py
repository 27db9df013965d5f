"""The small-batch engine for keyed tables (scd2, scd1): a few parquet files of changes, applied with delta-rs.

A 10-row change file into an existing scd2 table costs Spark about 10 s warm (some 80 small jobs: the
validation's join, window and aggregation, the change record's append, the re-threading MERGE; benchmark P10),
and delta-rs does the same MERGE in well under a second. A batch whose result is, by construction, what the
Spark path (``writers/keyed.py``) would commit goes through here instead. The definitions are the ones
``cdc.py``, ``scd2.py`` and ``scd1.py`` state for Spark, restated here over Python values for one batch's keys:

- the batch's rows get their sequence (``scd2_sequence_column``, or the file's modification time), their op (a
  delete when ``delete_condition`` holds, see ``DeleteTest``) and their values;
- each row is annotated against the change record's committed rows of its key (``annotate``): applied before
  (a replay: dropped), a clash, late, ambiguous with the previous row of its key in the batch, or new;
- the table's rows of each of the batch's keys are computed from its events before the batch and with the
  batch's new rows (scd2: its versions, ``history``; scd1: its latest row, ``latest``), and their difference
  (``version_diff``) is applied as one MERGE (scd2: on key and start; scd1: on the key).

A batch takes this path only when nothing in it needs Spark's semantics or Spark's error reporting, so the two
engines cannot disagree on what a table holds or on what fails:

- the append engine's conditions on size, format, expectations, schema evolution and the target's protocol
  (``small_batch._target_refusal``), for the target and for the change record, which both exist;
- the table is scd2 or scd1 with ``extract_mode: incremental``, without deletion versions (``hard_deletes:
  new_record``), and ``delete_condition`` is absent or one comparison this module evaluates exactly as Spark
  does (``DeleteTest``);
- every column name is a plain identifier and no column is nested (struct, list, map);
- the files' columns are the table's source columns with the same types; the change record holds the same
  source columns; the sequence has the type of the record's (and an scd2 table's start column's);
- at most ``MAX_ROWS`` rows;
- no row fails validation (a null key or sequence, an ambiguity, a clash, a late row refused): Spark loads such
  a batch and names the files and keys, as it always does.

Exactly once, as on the Spark path: the record's append carries the record's txn (skipped when the record has
it), then the target's one commit (the MERGE, or an empty commit when the batch only replays applied rows)
carries the batch's txn on the snapshot where it was not yet recorded; a concurrent commit of the same txn
application fails this one (delta-rs checks the app ids a commit carries). The crash window between the two
commits is ``faults.AFTER_CHANGE_RECORD``, recovered as on the Spark path (``changes.ChangeRecord``:
the record's rows of a batch the target never committed do not count, and the next holder deletes them). The
named point ``during_target_write`` is, on this path, the instant the record's data file is written and no
commit is (a file no commit references, as a killed Spark write leaves). After each commit the engine writes
the checkpoint Spark would (``small_batch.checkpoint_like_spark``).

The checks after such a batch read the few keys it touched with delta-rs too (``scoped_history.py``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from loader_assets.batch import ClaimedBatch
from loader_assets.cdc import DELETE, EXTRACT, RECORD_BATCH_SEQ, RECORD_FILE_TIME, RECORD_OP, RECORD_SEQUENCE, UPSERT
from loader_assets.changes import changes_location
from loader_assets.core import faults
from loader_assets.reading import BATCH_ID_COLUMN, LOAD_TIMESTAMP_COLUMN, SOURCE_FILE_COLUMN, ExpectedFile
from loader_assets.settings import (
    CHANGE_RECORD_COLUMNS,
    ExtractMode,
    LateArriving,
    LoaderSettings,
    LoadingStrategy,
    TableSettings,
)
from loader_assets.small_batch import (
    _normalised,
    _target_refusal,
    checkpoint_like_spark,
    commit_data_files,
    input_refusal,
    read_parquet_files,
)
from loader_assets.target import open_target, txn_version

MAX_ROWS = 50_000  # the rows of a batch are annotated and threaded in Python, one key at a time
PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
AUDIT = (SOURCE_FILE_COLUMN, LOAD_TIMESTAMP_COLUMN, BATCH_ID_COLUMN)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INSERT, UPDATE, REMOVE = "insert", "update", "delete"
MERGE_KEY_PREFIX = "__mk_"
ACTION = "__action"


# ------------------------------------------------------------------------------------------- delete_condition
_EQUALS = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=|!=|<>)\s*'([^'\\]*)'\s*$")
_IN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s+IN\s*\(\s*('[^'\\]*'(?:\s*,\s*'[^'\\]*')*)\s*\)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class DeleteTest:
    """A ``delete_condition`` this engine evaluates as Spark does: ``column = 'text'``, ``column != 'text'``
    (or ``<>``), ``column IN ('a', 'b')``, on a string column named with its exact case. A NULL column makes
    each of them NULL in Spark, which ``coalesce(condition, false)`` (``cdc.with_sequence``) makes an upsert;
    so here. Any other condition sends the table's batches to Spark."""

    column: str
    values: frozenset[str]
    negated: bool

    @staticmethod
    def parse(condition: str) -> DeleteTest | None:
        if match := _EQUALS.match(condition):
            return DeleteTest(match.group(1), frozenset({match.group(3)}), match.group(2) != "=")
        if match := _IN.match(condition):
            return DeleteTest(match.group(1), frozenset(re.findall(r"'([^']*)'", match.group(2))), False)
        return None

    def is_delete(self, value: str | None) -> bool:
        if value is None:
            return False
        return (value in self.values) != self.negated


# ------------------------------------------------------------------------------------------- definitions
def comparable(value: Any) -> Any:  # noqa: ANN401
    """A value as Spark's null-safe struct equality compares it: NaN equals NaN (and 0.0 equals -0.0, as in
    Python)."""
    if isinstance(value, float) and math.isnan(value):
        return ("NaN",)
    return value


def _first_nulls(value: Any) -> tuple[bool, Any]:  # noqa: ANN401
    return (value is not None, value)


@dataclass
class Event:
    """One change row of a key: (sequence, file time, file, op) order it, as ``scd2.history_from_events``'s
    window does (ascending, NULLs first)."""

    seq: Any
    file_time: datetime | None
    path: str
    op: str
    values: tuple[Any, ...]
    tracked: tuple[Any, ...]

    def order(self) -> tuple:
        return (_first_nulls(self.seq), _first_nulls(self.file_time), _first_nulls(self.path), self.op)

    def same_change(self, other: Event) -> bool:
        return self.op == other.op and tuple(map(comparable, self.values)) == tuple(map(comparable, other.values))


@dataclass(frozen=True)
class Version:
    start: Any
    end: Any
    current: bool
    values: tuple[Any, ...]
    path: str

    def same(self, other: Version) -> bool:
        return (self.end == other.end and self.current == other.current and self.path == other.path
                and tuple(map(comparable, self.values)) == tuple(map(comparable, other.values)))


def history(events: Sequence[Event]) -> list[Version]:
    """``scd2.history_from_events`` for one key of a table without deletion versions: an upsert starts a
    version when the key is not live or its tracked values differ from the previous event's; a delete of a
    live key ends its current version; a version ends where the next start or end is."""
    marks: list[tuple[Event, bool]] = []  # (event, starts)
    previous: Event | None = None
    for event in sorted(events, key=Event.order):
        starts = event.op == UPSERT and (
            previous is None or previous.op != UPSERT
            or tuple(map(comparable, previous.tracked)) != tuple(map(comparable, event.tracked)))
        ends = event.op == DELETE and previous is not None and previous.op == UPSERT
        if starts or ends:
            marks.append((event, starts))
        previous = event
    versions = []
    for index, (event, starts) in enumerate(marks):
        if not starts:
            continue
        following = marks[index + 1][0].seq if index + 1 < len(marks) else None
        versions.append(Version(event.seq, following, following is None, event.values, event.path))
    return versions


def latest(events: Sequence[Event]) -> list[Version]:
    """``scd1.latest_from_events`` for one key: its latest event (sequence, file time, file, op order) decides:
    an upsert is the key's row (a ``Version`` without start or end), a delete leaves none."""
    if not events:
        return []
    newest = max(events, key=Event.order)
    return [Version(None, None, True, newest.values, newest.path)] if newest.op == UPSERT else []


@dataclass
class Annotated:
    """What ``annotate`` found: the rows to record and apply (``new``), late rows, and the first problem that
    sends the batch to Spark (None when there is none)."""

    new: dict[tuple, list[Event]] = field(default_factory=dict)
    new_rows: int = 0
    late_rows: int = 0
    problem: str | None = None


def annotate(rows: Mapping[tuple, list[Event]], known: Mapping[tuple, list[Event]], refuse_late: bool
             ) -> Annotated:
    """``cdc.annotate`` and ``cdc.summarise`` for the batch's rows of each key (``rows``, in load order) against
    the record's committed events of the key (``known``)."""
    found = Annotated()
    for key, events in rows.items():
        recorded = {_first_nulls(e.seq): e for e in known.get(key, ())}
        last = max((e.seq for e in known.get(key, ())), default=None)
        previous: Event | None = None
        for event in sorted(events, key=lambda e: (e.seq, _first_nulls(e.file_time), e.path)):
            at = recorded.get(_first_nulls(event.seq))
            if at is not None and not at.same_change(event):
                return Annotated(problem="a row clashes with a change row of the record")
            same_seq = previous is not None and previous.seq == event.seq
            if same_seq and not previous.same_change(event):
                return Annotated(problem="two rows of a key have the same sequence and differ")
            if at is None and last is not None and event.seq < last:
                if refuse_late:
                    return Annotated(problem="a late row is refused (late_arriving: refuse)")
                found.late_rows += 1
            if at is None and not same_seq:
                found.new.setdefault(key, []).append(event)
                found.new_rows += 1
            previous = event
    return found


def version_diff(before: Sequence[Version], after: Sequence[Version]) -> list[tuple[str, Version | None, Version]]:
    """``scd2.version_diff`` for one key: (action, the old version matched on start, the version to write)."""
    old = {_first_nulls(v.start): v for v in before}
    new = {_first_nulls(v.start): v for v in after}
    changes: list[tuple[str, Version | None, Version]] = []
    for start, version in new.items():
        if start not in old:
            changes.append((INSERT, None, version))
        elif not old[start].same(version):
            changes.append((UPDATE, old[start], version))
    changes.extend((REMOVE, version, version) for start, version in old.items() if start not in new)
    return changes


# ------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class KeyedSmallBatch:
    """A batch planned for this engine: the record rows to append (None: nothing new), the target's changes
    (None: only replays, an empty commit), rows per file in the record once committed, late rows."""

    record_rows: pa.Table | None
    merge_source: pa.Table | None
    target_columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    updated_columns: tuple[str, ...]
    late_rows: int
    new_rows: int
    earlier_rows: dict[str, int]  # change rows each file has in the record from earlier batches


def table_refusal(table: TableSettings, settings: LoaderSettings) -> str | None:
    """Why none of the table's batches can take this path (None: a batch may)."""
    if table.loading_strategy not in (LoadingStrategy.SCD2, LoadingStrategy.SCD1):
        return f"loading_strategy {table.loading_strategy.value}"
    if table.extract_mode is not ExtractMode.INCREMENTAL:
        return "extract_mode full"
    if table.flags_deletions:
        return "hard_deletes new_record"
    refusal = input_refusal(table, settings)
    if refusal:
        return refusal
    if table.delete_condition and DeleteTest.parse(table.delete_condition) is None:
        return "delete_condition is not one this engine evaluates (column = 'text', != or IN)"
    return None


def counted_changes(committed: int) -> ds.Expression:
    """The change record's rows that count (``changes.ChangeRecord.committed`` and ``change_rows``): rows of
    batches up to the target's txn version ``committed``, extract markers left out (a NULL op is an upsert)."""
    return (ds.field(RECORD_BATCH_SEQ) <= committed) & (
        (ds.field(RECORD_OP) != EXTRACT) | ds.field(RECORD_OP).is_null())


def per_file(paths: pa.ChunkedArray) -> dict[str, int]:
    """How many times each path occurs."""
    counted = pc.value_counts(paths)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))


def plan_small_keyed(table: TableSettings, settings: LoaderSettings, files: Sequence[ExpectedFile],
                    batch: ClaimedBatch) -> KeyedSmallBatch | str:
    """The batch of ``files`` planned for this engine, or why it goes to Spark (see the module docstring)."""
    refusal = table_refusal(table, settings)
    if refusal:
        return refusal
    total = sum(f.size for f in files)
    if total > settings.small_batch_max_bytes:
        return f"{total} bytes is above small_batch_max_bytes ({settings.small_batch_max_bytes})"
    target = open_target(settings.table_path(table.table_name))
    record = open_target(changes_location(settings.target_root, table.table_name))
    if target is None or record is None:
        return "the target or its change record does not exist yet (Spark creates them)"
    for handle in (target, record):
        refusal = _target_refusal(handle)
        if refusal:
            return refusal
    scd2 = table.is_scd2
    start, end, current = table.scd2_output_columns
    schema = pa.schema(target.schema().to_arrow())
    record_schema = pa.schema(record.schema().to_arrow())
    if any(not PLAIN_NAME.match(f.name) or pa.types.is_nested(f.type) for f in (*schema, *record_schema)):
        return "a column name is not a plain identifier, or a column is nested"
    own = {*AUDIT, start, end, current} if scd2 else set(AUDIT)
    data = pa.schema([f for f in schema if f.name not in own])
    if set(schema.names) - set(data.names) != own:
        return "the target's loader columns are not the table's"
    if not {*CHANGE_RECORD_COLUMNS, *AUDIT} <= set(record_schema.names):
        return "the change record lacks columns this engine writes"
    record_data = {f.name: _normalised(f.type) for f in record_schema
                   if f.name not in (*CHANGE_RECORD_COLUMNS, *AUDIT)}
    if record_data.keys() != set(data.names) or any(not record_data[f.name].equals(_normalised(f.type))
                                                     for f in data):
        return "the change record's source columns are not the table's"
    named = {*table.primary_keys, *(table.tracking_columns if scd2 else ()),
             *((table.scd2_sequence_column,) if table.scd2_sequence_column else ())}
    if not named <= set(data.names):  # the settings name a column the table does not have: Spark reports it
        return f"the table has no column {sorted(named - set(data.names))[0]}"
    sequence_type = (data.field(table.scd2_sequence_column).type if table.scd2_sequence_column
                     else pa.timestamp("us", "UTC"))
    if (scd2 and not _normalised(schema.field(start).type).equals(_normalised(sequence_type))) or \
            not _normalised(record_schema.field(RECORD_SEQUENCE).type).equals(_normalised(sequence_type)):
        return "the sequence's type is not the table's start column's"
    delete = DeleteTest.parse(table.delete_condition) if table.delete_condition else None
    if delete is not None and (delete.column not in data.names or
                               not pa.types.is_string(_normalised(data.field(delete.column).type))):
        return f"delete_condition's column {delete.column} is not a string column of the table"
    read = read_parquet_files(files, data)
    if isinstance(read, str):
        return read
    if sum(rows.num_rows for _, rows in read) > MAX_ROWS:
        return f"more than {MAX_ROWS} rows"

    keys = tuple(table.primary_keys)
    names = data.names
    tracked_at = [names.index(c) for c in table.tracking_columns] if scd2 else list(range(len(names)))
    key_at = [names.index(c) for c in keys]
    sequence_at = names.index(table.scd2_sequence_column) if table.scd2_sequence_column else None
    delete_at = names.index(delete.column) if delete else None
    file_times = {path: EPOCH + timedelta(microseconds=int(m)) for path, m in batch.file_times.items()}

    def events_of(values_rows: Sequence[tuple], seqs: Sequence[Any], times: Sequence[datetime | None],
                  paths: Sequence[str], ops: Sequence[str]) -> dict[tuple, list[Event]]:
        by_key: dict[tuple, list[Event]] = {}
        for values, seq, time, path, op in zip(values_rows, seqs, times, paths, ops, strict=True):
            by_key.setdefault(tuple(values[i] for i in key_at), []).append(
                Event(seq, time, path, op, values, tuple(values[i] for i in tracked_at)))
        return by_key

    rows: dict[tuple, list[Event]] = {}
    for path, file_rows in read:
        values_rows = list(zip(*(file_rows[c].to_pylist() for c in names), strict=True)) if file_rows.num_rows \
            else []
        seqs = [v[sequence_at] for v in values_rows] if sequence_at is not None \
            else [file_times[path]] * len(values_rows)
        ops = [DELETE if delete_at is not None and delete.is_delete(v[delete_at]) else UPSERT for v in values_rows]
        for key, events in events_of(values_rows, seqs, [file_times[path]] * len(values_rows),
                                     [path] * len(values_rows), ops).items():
            rows.setdefault(key, []).extend(events)
    if any(None in key for key in rows) or any(e.seq is None for events in rows.values() for e in events):
        return "a row has a null key or a null sequence (Spark names the files)"

    # the record's committed events of the batch's keys (rows of batches the target never committed do not count)
    committed = target.transaction_version(batch.app_id) or 0
    dataset = record.to_pyarrow_dataset()
    counted = counted_changes(committed)
    wanted = counted
    for index, column in enumerate(keys):
        wanted = wanted & ds.field(column).isin(pa.array(sorted({k[index] for k in rows}),
                                                         data.field(column).type))
    found = dataset.to_table(columns=[*names, RECORD_SEQUENCE, RECORD_FILE_TIME, SOURCE_FILE_COLUMN, RECORD_OP],
                             filter=wanted)
    known_values = list(zip(*(found[c].to_pylist() for c in names), strict=True)) if found.num_rows else []
    known = {key: events for key, events in events_of(
        known_values, found[RECORD_SEQUENCE].to_pylist(), found[RECORD_FILE_TIME].to_pylist(),
        found[SOURCE_FILE_COLUMN].to_pylist(), [op or UPSERT for op in found[RECORD_OP].to_pylist()]).items()
        if key in rows}
    refuse_late = scd2 and table.late_arriving is LateArriving.REFUSE
    annotated = annotate(rows, known, refuse_late)
    if annotated.problem:
        return f"{annotated.problem} (Spark names the files and keys)"

    earlier = dataset.to_table(columns=[SOURCE_FILE_COLUMN], filter=counted & ds.field(SOURCE_FILE_COLUMN).isin(
        pa.array([f.path for f in files], pa.string())))
    earlier_rows = per_file(earlier[SOURCE_FILE_COLUMN])

    loaded_at = datetime.now(UTC)
    record_rows = None
    if annotated.new_rows:
        new = [e for events in annotated.new.values() for e in events]
        columns: dict[str, list[Any]] = {name: [e.values[i] for e in new] for i, name in enumerate(names)}
        columns.update({RECORD_SEQUENCE: [e.seq for e in new], RECORD_FILE_TIME: [e.file_time for e in new],
                        RECORD_OP: [e.op for e in new], SOURCE_FILE_COLUMN: [e.path for e in new],
                        BATCH_ID_COLUMN: [batch.batch_id] * len(new), RECORD_BATCH_SEQ: [batch.batch_seq] * len(new),
                        LOAD_TIMESTAMP_COLUMN: [loaded_at] * len(new)})
        if set(columns) != set(record_schema.names):
            return "the change record's columns are not the ones this engine writes"
        record_rows = pa.Table.from_arrays([pa.array(columns[f.name], f.type) for f in record_schema],
                                           schema=record_schema)

    merge_source = None
    # scd2: versions matched on (key, start), an update keeps the batch that inserted the version; scd1: rows
    # matched on the key, an update makes the row the batch's (scd2.merge_versions, scd1.merge_rows)
    matched = (*keys, start) if scd2 else keys
    updated = (end, current, *names, SOURCE_FILE_COLUMN) if scd2 else (*names, *AUDIT)
    table_of = history if scd2 else latest
    if annotated.new_rows:
        changes: list[tuple[tuple, str, Version | None, Version]] = []
        for key, new_events in annotated.new.items():
            before = table_of(known.get(key, []))
            after = table_of([*known.get(key, []), *new_events])
            changes.extend((key, action, old, version) for action, old, version in version_diff(before, after))
        columns = {f"{MERGE_KEY_PREFIX}{c}": [None if action == INSERT else key[i] for key, action, _, _ in changes]
                   for i, c in enumerate(keys)}
        columns[ACTION] = [action for _, action, _, _ in changes]
        columns.update({name: [v.values[i] for _, _, _, v in changes] for i, name in enumerate(names)})
        columns.update({SOURCE_FILE_COLUMN: [v.path for _, _, _, v in changes],
                        LOAD_TIMESTAMP_COLUMN: [loaded_at] * len(changes),
                        BATCH_ID_COLUMN: [batch.batch_id] * len(changes)})
        if scd2:
            columns[f"{MERGE_KEY_PREFIX}{start}"] = [None if action == INSERT else old.start
                                                      for _, action, old, _ in changes]
            columns.update({start: [v.start for _, _, _, v in changes], end: [v.end for _, _, _, v in changes],
                            current: [v.current for _, _, _, v in changes]})
        types = {f.name: f.type for f in schema}
        types.update({f"{MERGE_KEY_PREFIX}{c}": types[c] for c in matched})
        types[ACTION] = pa.string()
        merge_source = pa.table({name: pa.array(values, types[name]) for name, values in columns.items()})
    return KeyedSmallBatch(record_rows, merge_source, tuple(schema.names), tuple(matched), updated,
                           annotated.late_rows, annotated.new_rows, earlier_rows)


# ------------------------------------------------------------------------------------------- committing
def commit_small_keyed(batch: ClaimedBatch, plan: KeyedSmallBatch, settings: LoaderSettings) -> dict[str, int] | None:
    """Apply ``plan`` as ``batch``'s commits (see the module docstring): the record's append, then the
    target's one commit. Returns the change rows each file has in the record (what ``row_counts`` gives on the
    Spark path), or None, writing nothing to the target, when the target already recorded the batch's txn.
    Raises when a commit fails; a failed target commit did not land."""
    from deltalake import CommitProperties, Transaction

    target = open_target(batch.target_path)
    if target is None:
        raise RuntimeError(f"the target of table {batch.table_name!r} vanished at {batch.target_path}")
    if (target.transaction_version(batch.app_id) or 0) >= batch.batch_seq:
        return None
    record_path = changes_location(settings.target_root, batch.table_name)
    record_app = f"{batch.app_id}/changes"
    if plan.record_rows is not None and txn_version(record_path, record_app) < batch.batch_seq:
        record = open_target(record_path)
        assert record is not None
        metadata = json.dumps({"batch_id": batch.batch_id, "batch_seq": batch.batch_seq, "table": batch.table_name},
                              sort_keys=True)
        commit_data_files(record, record_path, [plan.record_rows], Transaction(record_app, batch.batch_seq), metadata,
                          faults.DURING_TARGET_WRITE)
    faults.crash_point(faults.AFTER_CHANGE_RECORD)
    transaction = Transaction(batch.app_id, batch.batch_seq)
    if plan.merge_source is None or not plan.merge_source.num_rows:
        # only replays, or rows that change no version: the batch's commit is empty, but there is one
        commit_data_files(target, batch.target_path, [], transaction, batch.user_metadata())
    else:
        properties = CommitProperties(app_transactions=[transaction],
                                      custom_metadata={"userMetadata": batch.user_metadata()})
        condition = " AND ".join(f"t.`{c}` = s.`{MERGE_KEY_PREFIX}{c}`" for c in plan.key_columns)
        (target.merge(plan.merge_source, condition, source_alias="s", target_alias="t",
                      commit_properties=properties)
         .when_matched_update({c: f"s.`{c}`" for c in plan.updated_columns}, predicate=f"s.`{ACTION}` = '{UPDATE}'")
         .when_matched_delete(predicate=f"s.`{ACTION}` = '{REMOVE}'")
         .when_not_matched_insert({c: f"s.`{c}`" for c in plan.target_columns},
                                  predicate=f"s.`{ACTION}` = '{INSERT}'")
         .execute())
        target.update_incremental()
        if (target.transaction_version(batch.app_id) or 0) < batch.batch_seq:
            # a MERGE that changes no row makes no commit: some version to update or delete was not there
            raise RuntimeError(f"the MERGE of batch {batch.batch_id} changed nothing: table {batch.table_name!r} "
                               "does not hold the versions its change record defines")
        checkpoint_like_spark(target, target.metadata().configuration or {})
    counts = dict(plan.earlier_rows)
    if plan.record_rows is not None:
        for path, count in per_file(plan.record_rows[SOURCE_FILE_COLUMN]).items():
            counts[path] = counts.get(path, 0) + count
    return {path: counts.get(path, 0) for path in batch.paths}

