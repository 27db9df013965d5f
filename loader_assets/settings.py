"""Loader settings: the seed guide's configuration, validated once when definitions load.

A config file is YAML (``configs/local.yaml``) or JSON (the seed guide's ``config.json``). Relative paths in it
resolve against the directory of the config file, so a config works from any working directory.

Every model is frozen and rejects unknown fields, so a typo fails loudly with the field's name instead of being
ignored. ``load_settings`` turns pydantic's errors into one :class:`~loader_assets.core.errors.ConfigError` whose
message names the file and each bad field.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from dagster_deltalake import AzureConfig, GcsConfig, LocalConfig, S3Config
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loader_assets.core.errors import ConfigError

AUDIT_COLUMNS = ("_source_file", "_load_timestamp", "_batch_id")
# the change record's own columns (changes.py): a row's sequence, its file's time, the batch that recorded it, and
# what the row is (upsert, delete, or the marker of a full extract)
CHANGE_RECORD_COLUMNS = ("_change_sequence", "_change_file_time", "_change_batch_seq", "_change_op")

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FileFormat(str, Enum):
    """Source file formats the Spark reader is asked to read."""

    PARQUET = "parquet"
    CSV = "csv"
    JSON = "json"


class LoadingStrategy(str, Enum):
    """How a batch of files becomes one Delta commit on the target table."""

    APPEND = "append"
    SCD2 = "scd2"
    SCD1 = "scd1"


class LateArriving(str, Enum):
    """An scd2 change older than its key's newest applied change."""

    RETHREAD = "rethread"  # the history is recomputed: it depends on the set of change rows, not their order
    REFUSE = "refuse"  # the file fails, naming file and key


class ExtractMode(str, Enum):
    """What a file of an scd2 or scd1 table is."""

    INCREMENTAL = "incremental"  # changes: rows to apply (and, with delete_condition, deletes)
    FULL = "full"  # the whole source at the file's sequence: keys absent from it are deleted there


class HardDeletes(str, Enum):
    """How a key absent from a full extract is treated (dbt snapshots' ``hard_deletes``)."""

    IGNORE = "ignore"  # nothing happens: its current version stays current
    INVALIDATE = "invalidate"  # its current version is closed at the extract's sequence; no current row
    NEW_RECORD = "new_record"  # a deletion version starts there, flagged by scd2_deleted_flag_column


class OnFileChange(str, Enum):
    """What to do when a known file's fingerprint (size + modification time) changes in the source."""

    RELOAD = "reload"  # load the new version; it replaces the old version's rows (append) or applies as changes
    IGNORE = "ignore"  # keep what was loaded; record the change
    FAIL = "fail"  # mark the file failed, not retried, until an operator reprocesses or skips it


class DuplicateContent(str, Enum):
    """What to do with a new file whose content (sha256) equals an already loaded file's."""

    LOAD = "load"  # a file is identified by its path: identical content at a new path loads again
    SKIP = "skip"  # mark it skipped, naming the file it duplicates


class BadRecords(str, Enum):
    """CSV and JSON rows the reader cannot parse (wrong field count, broken JSON, a value of the wrong type)."""

    FAIL = "fail"  # the file fails, naming how many rows are malformed and the first one
    QUARANTINE = "quarantine"  # good rows load; bad rows go to the table's quarantine Delta table, counted


class OnFailedFile(str, Enum):
    """How a run in which files of a partition failed shows in Dagster (their good files are committed either way)."""

    FAIL_PARTITION = "fail_partition"  # the partition shows failed and the run fails, naming the files and causes
    MATERIALIZE = "materialize"  # the partition shows materialized; the failure is on its event and the checks


class ExpectationAction(str, Enum):
    """What a row that fails an expectation does (DLT's expect / expect_or_drop / expect_or_fail, plus quarantine)."""

    WARN = "warn"  # the row loads; failures are counted
    DROP = "drop"  # the row is left out, counted
    QUARANTINE = "quarantine"  # the row goes to the quarantine table with the expectation's name, counted
    FAIL_FILE = "fail_file"  # the row's file fails, naming the expectation and a failing row


class Expectation(BaseModel):
    """A data-quality rule: ``condition`` is a SQL boolean over the source row; a row fails it when the condition
    is false or NULL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Names the rule in counts, checks (expectation_<name>) and the quarantine.")
    condition: str = Field(description="SQL boolean over the source row, e.g. \"amount >= 0\".")
    action: ExpectationAction = Field(default=ExpectationAction.WARN, description="warn, drop, quarantine or "
                                                                                  "fail_file.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError(f"expectation name {value!r} must start with a letter or underscore and contain only "
                             "letters, digits and underscores (it names an asset check)")
        return value


class SchemaEvolution(str, Enum):
    """A file whose columns differ from the table's (the Auto Loader modes)."""

    FAIL = "fail"  # the file fails, naming the new, missing and retyped columns
    ADD_NEW_COLUMNS = "add_new_columns"  # new columns are added to the table in the batch's commit
    RESCUE = "rescue"  # the table's schema is kept; unknown and mistyped fields go to _rescued_data as JSON


RESCUED_DATA_COLUMN = "_rescued_data"


class PartitionGranularity(str, Enum):
    """Width of the time-window partitions a table's files are grouped into (docs/ARCHITECTURE.md, "Partitions
    and runs")."""

    DAY = "day"
    HOUR = "hour"


def _string_mapping(value: Any) -> Any:
    """YAML gives booleans and numbers; Spark options are strings (``true``, not ``True``)."""
    if isinstance(value, dict):
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartitioningSettings(_Frozen):
    """Time-window partitions over each file's arrival time (its modification time at first discovery)."""

    granularity: PartitionGranularity = Field(
        default=PartitionGranularity.DAY, description="Partition width: day or hour."
    )
    start: str = Field(
        default="2024-01-01",
        description="First partition (YYYY-MM-DD, or YYYY-MM-DD-HH:MM for hourly). Older files go to it.",
    )

    @field_validator("start")
    @classmethod
    def _parse_start(cls, value: str) -> str:
        for fmt in ("%Y-%m-%d", "%Y-%m-%d-%H:%M"):
            try:
                datetime.strptime(value, fmt)
                return value
            except ValueError:
                continue
        raise ValueError(f"start must look like 2024-01-01 (or 2024-01-01-00:00 for hourly), got {value!r}")


class FreshnessSettings(_Frozen):
    """How fresh a table must be. Either limit may be left out."""

    max_lag_minutes: float | None = Field(
        default=None, gt=0,
        description="The newest loaded file may be at most this old (its modification time); WARN past it, "
                    "ERROR past twice it. Also the asset's Dagster freshness policy (warn at it, fail at twice).",
    )
    max_pending_minutes: float | None = Field(
        default=None, gt=0,
        description="No file may wait this long in the landing zone without being loaded (ERROR past it).",
    )


class SparkSettings(_Frozen):
    """The Spark session the target tables are written with. ``conf`` is passed through to the builder."""

    master: str = Field(default="local[*]", description="Spark master URL, e.g. local[*] or spark://host:7077.")
    app_name: str = Field(default="loader-assets", description="Spark application name.")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark confs, passed through.")
    remote: str | None = Field(
        default=None,
        description="Spark Connect URL, e.g. sc://127.0.0.1:15002: runs attach to that server (started with "
                    "`loader-assets spark-connect-server`) instead of starting Spark in their own process; "
                    "master and conf then configure the server.",
    )

    @field_validator("remote")
    @classmethod
    def _connect_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("sc://"):
            raise ValueError(f"spark.remote must be a Spark Connect URL (sc://host:port), not {value!r}")
        return value or None

    _stringify = field_validator("conf", mode="before")(lambda value: _string_mapping(value))


# What a landing zone holds, not Spark's reader defaults: csv files have a header row and RFC 4180 quoting (a
# quote inside a quoted field is doubled, a quoted field may hold a newline), as Python's csv module, pandas,
# pyarrow and spreadsheet exports write them; json files are JSON lines (Spark's default; set multiLine: true
# for a file holding one JSON array or document). The README ("Reading files") documents them.
READ_DEFAULTS: dict[FileFormat, dict[str, str]] = {
    FileFormat.CSV: {"header": "true", "quote": '"', "escape": '"', "multiLine": "true"},
    FileFormat.JSON: {},
}


class TableSettings(_Frozen):
    """One target table: where its files land, how they are read, and how they are loaded."""

    table_name: str = Field(description="Target table name; the Delta table lives at <target_root>/<table_name>.")
    source_path: str = Field(description="Directory the table's files land in, read recursively.")
    file_format: FileFormat = Field(description="parquet, csv or json.")
    read_options: dict[str, str] = Field(
        default_factory=dict,
        description="Options passed to the Spark reader, over the format's defaults (see spark_read_options).",
    )
    loading_strategy: LoadingStrategy = Field(default=LoadingStrategy.APPEND, description="append or scd2.")
    partitioning: PartitioningSettings = Field(default_factory=PartitioningSettings)
    on_file_change: OnFileChange = Field(
        default=OnFileChange.RELOAD,
        description="A loaded file whose size or modification time changed: reload, ignore or fail.",
    )
    duplicate_content: DuplicateContent = Field(
        default=DuplicateContent.LOAD,
        description="A new file with the same content (sha256) as a loaded one: load it, or skip it.",
    )
    bad_records: BadRecords = Field(
        default=BadRecords.FAIL,
        description="Malformed csv/json rows: fail the file, or quarantine the bad rows and load the rest.",
    )
    schema_evolution: SchemaEvolution = Field(
        default=SchemaEvolution.FAIL,
        description="Files whose columns differ from the table's: fail, add_new_columns or rescue.",
    )
    on_failed_file: OnFailedFile = Field(
        default=OnFailedFile.FAIL_PARTITION,
        description=("A file of the run failed: fail_partition (its partition shows failed and the run fails; the "
                     "other partitions and the good files are committed and materialized) or materialize."),
    )
    min_file_age_seconds: float = Field(
        default=0, ge=0,
        description="A file modified less than this many seconds ago is left for a later run (still being written).",
    )
    expectations: list[Expectation] = Field(
        default_factory=list,
        description="Data-quality rules over each source row, checked before the write (see Expectation).",
    )
    freshness: FreshnessSettings | None = Field(
        default=None, description="Freshness limits: a freshness check and a Dagster freshness policy.",
    )

    @field_validator("table_name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError(
                f"table_name {value!r} must start with a letter or underscore and contain only letters, digits "
                "and underscores (it names a Dagster asset, a directory and a Delta txnAppId)"
            )
        return value

    _stringify = field_validator("read_options", mode="before")(lambda value: _string_mapping(value))

    @property
    def spark_read_options(self) -> dict[str, str]:
        """The options the Spark reader gets: the format's defaults (``READ_DEFAULTS``) with ``read_options``
        over them. Spark's option names are case-insensitive, so ``multiline`` overrides ``multiLine``."""
        given = {name.lower() for name in self.read_options}
        defaults = READ_DEFAULTS.get(self.file_format, {})
        return {**{k: v for k, v in defaults.items() if k.lower() not in given}, **self.read_options}

    # SCD2 (seed guide field names) and SCD1. Keys are required for scd2 and scd1, not allowed otherwise.
    primary_keys: list[str] = Field(default_factory=list, description="Columns that identify a row (scd2, scd1).")
    tracking_columns: list[str] = Field(
        default_factory=list, description="Columns whose change makes a new version (scd2); others are carried."
    )
    scd2_effective_date_column: str = Field(default="effective_date", description="Start of a version (scd2).")
    scd2_end_date_column: str = Field(default="end_date", description="End of a version; NULL while current.")
    scd2_current_flag_column: str = Field(default="is_current", description="True on the current version.")
    scd2_sequence_column: str | None = Field(
        default=None,
        description="Source column holding the change time (scd2, scd1); without it, the file's modification time.",
    )
    late_arriving: LateArriving = Field(
        default=LateArriving.RETHREAD,
        description="scd2: a change older than its key's newest applied change re-threads the history, or is refused.",
    )
    delete_condition: str | None = Field(
        default=None,
        description="SQL boolean over the source row that marks a row as a delete of its key (scd2, scd1), "
        "e.g. op = 'D'.",
    )
    extract_mode: ExtractMode = Field(
        default=ExtractMode.INCREMENTAL,
        description="scd2, scd1: each file holds changes (incremental), or the whole source at its sequence (full).",
    )
    hard_deletes: HardDeletes = Field(
        default=HardDeletes.IGNORE,
        description="full extracts: a key absent from an extract is ignored, invalidated (closed), or gets a deletion "
        "version (new_record, scd2). With new_record, every delete is a deletion version.",
    )
    scd2_deleted_flag_column: str = Field(
        default="is_deleted", description="scd2 with hard_deletes new_record: true on deletion versions.",
    )

    @property
    def is_scd2(self) -> bool:
        return self.loading_strategy is LoadingStrategy.SCD2

    @property
    def is_scd1(self) -> bool:
        return self.loading_strategy is LoadingStrategy.SCD1

    @property
    def keeps_changes(self) -> bool:
        """scd2 and scd1 tables apply change rows by key and keep every one applied in the change record."""
        return self.loading_strategy in (LoadingStrategy.SCD2, LoadingStrategy.SCD1)

    @property
    def flags_deletions(self) -> bool:
        """scd2 with hard_deletes new_record: a delete is a version flagged by scd2_deleted_flag_column."""
        return self.is_scd2 and self.hard_deletes is HardDeletes.NEW_RECORD

    @property
    def scd2_output_columns(self) -> tuple[str, str, str]:
        return (self.scd2_effective_date_column, self.scd2_end_date_column, self.scd2_current_flag_column)

    def loader_columns(self) -> set[str]:
        """Columns the loader writes itself: the audit columns, the SCD2 columns and the change record's columns
        of an scd2 table, and ``_rescued_data`` when ``schema_evolution`` is rescue."""
        rescue = (RESCUED_DATA_COLUMN,) if self.schema_evolution is SchemaEvolution.RESCUE else ()
        changes = CHANGE_RECORD_COLUMNS if self.keeps_changes else ()
        scd2 = self.scd2_output_columns if self.is_scd2 else ()
        deleted = (self.scd2_deleted_flag_column,) if self.flags_deletions else ()
        return {*AUDIT_COLUMNS, *scd2, *changes, *deleted, *rescue}

    @model_validator(mode="after")
    def _unique_expectations(self) -> TableSettings:
        names = [e.name for e in self.expectations]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"table {self.table_name!r}: expectations named twice: {twice}")
        return self

    @model_validator(mode="after")
    def _strategy_fields(self) -> TableSettings:
        name = self.table_name
        cdc_fields = ("primary_keys", "scd2_sequence_column", "delete_condition")
        if not self.keeps_changes:
            given = [f for f in (*cdc_fields, "tracking_columns") if getattr(self, f)]
            if self.extract_mode is not ExtractMode.INCREMENTAL:
                given.append("extract_mode")
            if self.hard_deletes is not HardDeletes.IGNORE:
                given.append("hard_deletes")
            if given:
                raise ValueError(f"table {name!r}: {', '.join(given)} only apply to loading_strategy scd2 or scd1")
            return self
        if not self.primary_keys:
            raise ValueError(f"table {name!r}: loading_strategy {self.loading_strategy.value} requires primary_keys")
        if len(set(self.primary_keys)) != len(self.primary_keys):
            raise ValueError(f"table {name!r}: primary_keys lists a column twice: {self.primary_keys}")
        if self.hard_deletes is not HardDeletes.IGNORE and self.extract_mode is not ExtractMode.FULL \
                and not self.delete_condition:
            raise ValueError(f"table {name!r}: hard_deletes {self.hard_deletes.value} needs extract_mode full or a "
                             "delete_condition (there is nothing to delete otherwise)")
        if self.is_scd1:
            if self.tracking_columns:
                raise ValueError(f"table {name!r}: tracking_columns only apply to scd2 (scd1 keeps the latest row)")
            if self.hard_deletes is HardDeletes.NEW_RECORD:
                raise ValueError(f"table {name!r}: hard_deletes new_record keeps history: use scd2")
            if self.scd2_sequence_column in self.primary_keys:
                raise ValueError(f"table {name!r}: scd2_sequence_column must not be a primary key")
            return self
        if not self.tracking_columns:
            raise ValueError(f"table {name!r}: loading_strategy scd2 requires tracking_columns")
        for field_name in ("primary_keys", "tracking_columns"):
            values = getattr(self, field_name)
            if len(set(values)) != len(values):
                raise ValueError(f"table {name!r}: {field_name} lists a column twice: {values}")
        overlap = sorted(set(self.primary_keys) & set(self.tracking_columns))
        if overlap:
            raise ValueError(f"table {name!r}: tracking_columns must not include primary keys: {overlap}")
        outputs = [*self.scd2_output_columns, *([self.scd2_deleted_flag_column] if self.flags_deletions else [])]
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"table {name!r}: the scd2 effective, end, current (and deleted) columns must differ: "
                             f"{outputs}")
        sources = set(self.primary_keys) | set(self.tracking_columns)
        if self.scd2_sequence_column:
            sources.add(self.scd2_sequence_column)
        clash = sorted(sources & set(outputs))
        if clash:
            raise ValueError(
                f"table {name!r}: {clash} named both as a source column and as an scd2 output column "
                "(scd2_effective_date_column, scd2_end_date_column, scd2_current_flag_column)"
            )
        if self.scd2_sequence_column in self.primary_keys:
            raise ValueError(f"table {name!r}: scd2_sequence_column must not be a primary key")
        return self

    def required_columns(self) -> list[str]:
        """Source columns every file must have: keys, tracking columns and the sequence column (scd2, scd1)."""
        columns = [*self.primary_keys, *self.tracking_columns]
        if self.scd2_sequence_column and self.scd2_sequence_column not in columns:
            columns.append(self.scd2_sequence_column)
        return columns


class LoaderSettings(_Frozen):
    """The whole loader: where tables and state live, limits, Spark, and the tables."""

    target_root: str = Field(description="Each table's Delta table is written to <target_root>/<table_name>.")
    checkpoint_path: str = Field(description="Directory of the file tracker and lock tables.")
    retry_attempts: int = Field(default=3, ge=0, description="How many times a failed file is retried.")
    retry_backoff_seconds: float = Field(
        default=30, ge=0,
        description="Wait before a failed file's first retry; doubles with each further failure.",
    )
    retry_backoff_max_seconds: float = Field(default=3600, ge=0, description="Longest wait between retries.")
    timeout_minutes: int = Field(
        default=60, ge=1, description="Lease of a table lock; a holder that stops renewing it is stale after this."
    )
    lock_wait_seconds: int = Field(
        default=600, ge=0, description="How long a run waits for a table lock held by a live run."
    )
    max_files_per_run: int = Field(default=1000, ge=1, description="At most this many files in one batch.")
    small_batch_max_bytes: int = Field(
        default=32 << 20, ge=0,
        description="An append, scd2 or scd1 (incremental) batch of parquet files totalling at most this many bytes, into "
                    "an existing table, is committed with delta-rs in the run's process, without Spark, when nothing "
                    "in it needs Spark (same columns and types as the table, no row that fails validation; "
                    "docs/ARCHITECTURE.md, \"The small-batch engine\" and \"The small-batch engine for keyed "
                    "tables\"). 0 sends every batch to Spark.",
    )
    sensor_interval_seconds: int = Field(
        default=30, ge=1,
        description="Seconds between a table sensor's ticks: how soon a landed file is noticed. Dagster's daemon "
                    "evaluates sensors every 5 s, so the interval is rounded up to a multiple of 5 "
                    "(sensors.dagster_minimum_interval). Each tick lists the landing directory once.",
    )
    sensor_max_runs_per_tick: int = Field(
        default=5, ge=1,
        description="A sensor tick requests runs for at most this many partition ranges; the rest wait a tick.",
    )
    spark: SparkSettings = Field(default_factory=SparkSettings)
    state_storage: Annotated[LocalConfig | S3Config | AzureConfig | GcsConfig, Field(discriminator="provider")] = Field(
        default_factory=LocalConfig,
        description=(
            "Where checkpoint_path's state tables (tracker, lock, event log) are stored, as a dagster-deltalake "
            "storage config: {provider: local} (default), s3, azure or gcs with that store's options. Leave "
            "secrets out: delta-rs reads the store's usual environment variables."
        ),
    )
    tables: list[TableSettings] = Field(min_length=1, description="The target tables.")

    @model_validator(mode="after")
    def _unique_tables(self) -> LoaderSettings:
        seen: set[str] = set()
        for table in self.tables:
            if table.table_name in seen:
                raise ValueError(f"table_name {table.table_name!r} appears more than once in tables")
            seen.add(table.table_name)
        return self

    def table(self, name: str) -> TableSettings:
        """The table named ``name``; raises ConfigError listing the known names otherwise."""
        for table in self.tables:
            if table.table_name == name:
                return table
        known = ", ".join(t.table_name for t in self.tables)
        raise ConfigError(f"unknown table {name!r}; configured tables: {known}")

    def table_path(self, name: str) -> str:
        """Location of the table's Delta table."""
        return table_location(self.target_root, name)

    def quarantine_path(self, name: str) -> str:
        """Location of the table's quarantine Delta table (malformed rows, with bad_records=quarantine)."""
        return quarantine_location(self.target_root, name)

    def retry_delay(self, retry_count: int) -> float:
        """Seconds before a file that failed ``retry_count`` times may be tried again (exponential backoff)."""
        if retry_count <= 0 or self.retry_backoff_seconds == 0:
            return 0.0
        return float(min(self.retry_backoff_max_seconds, self.retry_backoff_seconds * 2 ** (retry_count - 1)))


def table_location(target_root: str, table_name: str) -> str:
    """``<target_root>/<table_name>``: where a table's Delta table lives."""
    return f"{target_root.rstrip('/')}/{table_name}"


def quarantine_location(target_root: str, table_name: str) -> str:
    """``<target_root>/_quarantine/<table_name>``: the malformed rows of a table's files and the rows that failed a
    quarantine expectation."""
    return f"{target_root.rstrip('/')}/_quarantine/{table_name}"


def _is_uri(value: str) -> bool:
    return "://" in value


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve relative local paths against the config file's directory (object-store URIs stay as they are)."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value and not _is_uri(value):
            return str((base / Path(value).expanduser()).resolve())
        return value

    out = dict(raw)
    for key in ("target_root", "checkpoint_path"):
        if key in out:
            out[key] = resolve(out[key])
    tables = out.get("tables")
    if isinstance(tables, list):
        out["tables"] = [
            {**t, "source_path": resolve(t["source_path"])} if isinstance(t, dict) and "source_path" in t else t
            for t in tables
        ]
    return out


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"invalid config {path}:"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {location}: {message}")
    return "\n".join(lines)


def parse_settings(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> LoaderSettings:
    """Validate an already-parsed config mapping; relative paths resolve against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source or base_dir}: the top level must be a mapping")
    try:
        return LoaderSettings.model_validate(_resolve_paths(raw, base_dir))
    except ValidationError as error:
        raise ConfigError(_format_validation_error(source or base_dir, error)) from None


def load_settings(path: str | Path) -> LoaderSettings:
    """Read and validate a YAML or JSON config file. Raises ConfigError naming the file and the bad fields."""
    config_path = Path(path).expanduser().resolve()
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config {config_path}: {error.strerror or error}") from None
    try:
        raw = json.loads(text) if config_path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot parse config {config_path}: {error}") from None
    return parse_settings(raw, config_path.parent, config_path)
