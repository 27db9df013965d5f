"""A pure-Python model of what the contract says the tables hold (docs/CONTRACT.md), for the model-based test.

No Spark, no Delta, no loader code: the model knows only the files that were written to the landing zones and the
operator commands that were given, and computes from them what the two tables must hold after a clean run:

- ``events`` (append): every file's rows exactly once, for the version of the file that last loaded. A file
  loads when it is in the source, not skipped, and valid; a re-delivered version replaces the rows of the
  version before; a corrupt version fails and leaves the rows of the version before in place; a removed file
  keeps the rows it had. reset-state forgets; the next run reloads what is in the source, replacing rows.
- ``customers`` (scd2, late rows re-threaded): the history defined by the set of change rows applied, whatever
  order they came in (``cdc.history``): per key, in sequence order, the runs of equal tracked values (``name``),
  each version carrying the starting row's values. A file's rows apply when the file loads; rows already applied
  (a replay, a copy of a file) apply nothing new.

It also predicts what ``validate-consistency`` must report at a quiescent point: the files whose rows the table
holds but the tracker cannot know about (after reset-state) until ``fix-inconsistencies`` records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loader_assets_tests.model.cdc import UPSERT, Event, history

APPEND, SCD2 = "events", "customers"
TABLES = (APPEND, SCD2)

AppendRow = tuple[int, str]  # (id, name)
ChangeRow = tuple[int, str, str, int]  # (customer_id, name, tier, sequence)


@dataclass(frozen=True)
class Content:
    """A version of a file: its rows, or None for a corrupt file."""

    rows: tuple[tuple, ...] | None

    @property
    def valid(self) -> bool:
        return self.rows is not None


@dataclass
class ModelFile:
    table: str
    path: str
    mtime: int  # creation order: runs load files in (mtime, path) order
    content: Content
    present: bool = True
    loaded: Content | None = None  # append: the version whose rows the table holds
    skipped: bool = False
    rows_recorded: bool = False  # the tracker records that the table holds this file's rows


@dataclass
class Model:
    retry_attempts: int
    files: dict[str, ModelFile] = field(default_factory=dict)
    applied: dict[tuple[int, int], ChangeRow] = field(default_factory=dict)  # (key, seq) -> change row (scd2)
    owner: dict[tuple[int, int], str] = field(default_factory=dict)  # (key, seq) -> file that applied it first

    # ------------------------------------------------------------------------------------------- the source
    def write(self, table: str, path: str, mtime: int, content: Content) -> None:
        """A new file, or a new version of a file (re-delivered, or back after being removed)."""
        current = self.files.get(path)
        if current is None:
            self.files[path] = ModelFile(table, path, mtime, content)
            return
        current.content, current.mtime, current.present = content, mtime, True
        current.skipped = False  # a new version is loaded whatever happened to the one before

    def remove(self, path: str) -> None:
        self.files[path].present = False

    # ------------------------------------------------------------------------------------------- commands
    def run(self) -> None:
        """A clean run of every table until nothing is left to load."""
        for f in sorted(self.files.values(), key=lambda f: (f.mtime, f.path)):
            if not f.present or f.skipped or not f.content.valid:
                continue
            if f.table == APPEND:
                if f.loaded != f.content or not f.rows_recorded:
                    self._load(f)
                continue
            if f.loaded == f.content and f.rows_recorded:
                continue  # completed: a run does not look at it again
            self._load(f)

    def loaded_by_killed_run(self, paths: list[str]) -> None:
        """A run that was killed (or finished before its kill) committed the batches of ``paths``, in that order:
        their current versions are loaded as a run loads them. The model cannot foresee which batches a kill
        lets through, so the test reads them from the world (``World.committed_since``); what the run left
        uncommitted is loaded by the next run, as ``run`` says. Without this, an operator command between the
        kill and the next run (a ``reprocess`` and a ``skip`` of a file the killed run loaded) would leave the
        model without rows the table rightly keeps."""
        for path in paths:
            self._load(self.files[path])

    def _load(self, f: ModelFile) -> None:
        if f.table == SCD2:
            for row in f.content.rows or ():
                key = (row[0], row[3])
                if key not in self.applied:
                    self.applied[key], self.owner[key] = row, f.path
        f.loaded, f.rows_recorded = f.content, True

    def skip(self, path: str) -> None:
        self.files[path].skipped = True

    def reprocess(self, path: str) -> None:
        self.files[path].skipped = False

    def reset(self, tables: tuple[str, ...]) -> None:
        """The trackers of ``tables`` forget everything (skips included); the tables keep their rows."""
        for f in self.files.values():
            if f.table in tables:
                f.skipped = False
                f.rows_recorded = False

    def fix(self, held: dict[str, str]) -> None:
        """fix-inconsistencies records the rows the tracker did not know of for the files no run will reload:
        those not in the source, and those the tracker holds as failed or skipped (``held``: the tracker's
        statuses once the command is done; a run reloads the others, replacing their rows)."""
        for path in self.untracked():
            if not self.files[path].present or held.get(path) in ("failed", "skipped"):
                self.files[path].rows_recorded = True

    # ------------------------------------------------------------------------------------------- expectations
    def has_rows(self, f: ModelFile) -> bool:
        if f.table == APPEND:
            return f.loaded is not None and bool(f.loaded.rows)
        return f.path in self.owner.values()

    def untracked(self) -> set[str]:
        """Files whose rows the table holds while the tracker does not record them (a clean run reloads those
        still in the source and loadable)."""
        return {f.path for f in self.files.values() if self.has_rows(f) and not f.rows_recorded}

    def expected_append_rows(self) -> list[tuple[int, str, str]]:
        rows = [(i, name, f.path) for f in self.files.values() if f.table == APPEND and f.loaded is not None
                for i, name in f.loaded.rows or ()]
        return sorted(rows)

    def expected_history(self) -> list[tuple[int, str, str, int, int | None, bool]]:
        """(customer_id, name, tier, start, end, current) per version, by the definition."""
        events = [Event(cid, seq, 0, "", UPSERT, (name, tier)) for cid, name, tier, seq in self.applied.values()]
        return sorted(((v.key, v.values[0], v.values[1], v.start, v.end, v.current) for v in history(events)),
                      key=repr)

    def expected_status(self, f: ModelFile) -> str | None:
        """The tracker status a file present in the source must have after a clean run (None: not checked)."""
        if not f.present:
            return None
        if f.skipped:
            return "skipped"
        if not f.content.valid:
            return "failed"
        return "completed"

    def bad_files(self) -> set[str]:
        """Files that may be failed beyond retries at a quiescent point: corrupt, or gone."""
        return {f.path for f in self.files.values()
                if not f.present or not f.content.valid or self.expected_status(f) == "failed"}
