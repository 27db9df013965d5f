import json
from pathlib import Path

import pytest

from loader_assets.core.errors import ConfigError
from loader_assets.settings import load_settings

PROJECT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_local_config_loads_and_resolves_paths_against_its_directory():
    settings = load_settings(PROJECT / "configs" / "local.yaml")
    assert settings.target_root == str(PROJECT / "data" / "lake")
    assert settings.tables[0].source_path == str(PROJECT / "data" / "landing" / "transactions")
    assert settings.table_path("transactions") == str(PROJECT / "data" / "lake" / "transactions")
    assert settings.tables[1].read_options == {"header": "true", "inferSchema": "false"}


def test_seed_guide_json_style_loads():
    settings = load_settings(PROJECT / "configs" / "seed-style.json")
    assert [t.table_name for t in settings.tables] == ["transactions"]
    assert settings.retry_attempts == 3 and settings.timeout_minutes == 60


def test_object_store_uris_are_not_resolved(tmp_path):
    path = write(tmp_path, json.dumps({
        "target_root": "s3://bucket/lake", "checkpoint_path": "ckpt",
        "tables": [{"table_name": "t", "source_path": "s3://bucket/in", "file_format": "csv"}]}), "c.json")
    settings = load_settings(path)
    assert settings.target_root == "s3://bucket/lake"
    assert settings.tables[0].source_path == "s3://bucket/in"
    assert settings.checkpoint_path == str(tmp_path / "ckpt")


@pytest.mark.parametrize(
    ("table_yaml", "expected"),
    [
        ("file_format: xml", "tables.0.file_format: Input should be 'parquet', 'csv' or 'json'"),
        ("file_format: csv\n    loading_strategy: scd2", "loading_strategy scd2 requires primary_keys"),
        ("file_format: csv\n    primary_keys: [id]", "primary_keys only apply to loading_strategy scd2"),
        ("file_format: csv\n    colour: blue", "tables.0.colour: Extra inputs are not permitted"),
        ("file_format: csv\n    partitioning: {granularity: week}", "tables.0.partitioning.granularity"),
        ("file_format: csv\n    partitioning: {start: yesterday}", "start must look like 2024-01-01"),
    ],
)
def test_bad_table_fields_are_named(tmp_path, table_yaml, expected):
    path = write(tmp_path, f"""
target_root: lake
checkpoint_path: ckpt
tables:
  - table_name: t
    source_path: in
    {table_yaml}
""")
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_bad_top_level_fields_are_named(tmp_path):
    path = write(tmp_path, "target_root: lake\ncheckpoint_path: c\nretry_attempts: -1\ntables: []\n")
    message = str(pytest.raises(ConfigError, load_settings, path).value)
    assert "retry_attempts: Input should be greater than or equal to 0" in message
    assert "tables: List should have at least 1 item" in message


def test_duplicate_and_invalid_table_names(tmp_path):
    path = write(tmp_path, """
target_root: lake
checkpoint_path: ckpt
tables:
  - {table_name: t, source_path: a, file_format: csv}
  - {table_name: t, source_path: b, file_format: csv}
""")
    assert "appears more than once" in str(pytest.raises(ConfigError, load_settings, path).value)
    path = write(tmp_path, "target_root: l\ncheckpoint_path: c\ntables: [{table_name: 'bad name', source_path: a, "
                           "file_format: csv}]\n")
    assert "table_name 'bad name' must start with a letter" in str(pytest.raises(ConfigError, load_settings, path).value)


def test_unreadable_and_unparsable_files(tmp_path):
    assert "cannot read config" in str(pytest.raises(ConfigError, load_settings, tmp_path / "nope.yaml").value)
    path = write(tmp_path, "tables: [unclosed")
    assert "cannot parse config" in str(pytest.raises(ConfigError, load_settings, path).value)


def test_unknown_table_lookup_lists_known_names():
    settings = load_settings(PROJECT / "configs" / "local.yaml")
    message = str(pytest.raises(ConfigError, settings.table, "nope").value)
    assert "unknown table 'nope'" in message and "transactions, page_views, customers" in message


SCD2_BASE = """
target_root: lake
checkpoint_path: ckpt
tables:
  - table_name: customers
    source_path: in
    file_format: csv
    loading_strategy: scd2
"""


def test_seed_guide_scd2_configuration_loads():
    customers = load_settings(PROJECT / "configs" / "local.yaml").table("customers")
    assert customers.is_scd2 and customers.primary_keys == ["customer_id"]
    assert customers.tracking_columns == ["name", "email"] and customers.scd2_sequence_column == "updated_at"
    assert customers.scd2_output_columns == ("effective_date", "end_date", "is_current")
    assert customers.required_columns() == ["customer_id", "name", "email", "updated_at"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("    tracking_columns: [name]", "requires primary_keys"),
        ("    primary_keys: [id]", "requires tracking_columns"),
        ("    primary_keys: [id, id]\n    tracking_columns: [name]", "primary_keys lists a column twice"),
        ("    primary_keys: [id]\n    tracking_columns: [name, id]", "must not include primary keys: ['id']"),
        ("    primary_keys: [id]\n    tracking_columns: [name]\n    scd2_end_date_column: effective_date",
         "effective, end, current (and deleted) columns must differ"),
        ("    primary_keys: [id]\n    tracking_columns: [is_current]",
         "['is_current'] named both as a source column and as an scd2 output column"),
        ("    primary_keys: [id]\n    tracking_columns: [name]\n    scd2_sequence_column: id",
         "scd2_sequence_column must not be a primary key"),
    ],
)
def test_scd2_configuration_is_validated_when_loading(tmp_path, fields, expected):
    path = write(tmp_path, SCD2_BASE + fields + "\n")
    message = str(pytest.raises(ConfigError, load_settings, path).value)
    assert expected in message and "table 'customers'" in message


@pytest.mark.parametrize(
    ("strategy", "fields", "expected"),
    [
        ("append", "    delete_condition: op = 'D'", "delete_condition only apply to loading_strategy scd2 or scd1"),
        ("append", "    extract_mode: full", "extract_mode only apply to loading_strategy scd2 or scd1"),
        ("scd1", "    tracking_columns: [name]", "requires primary_keys"),
        ("scd1", "    primary_keys: [id]\n    tracking_columns: [name]", "tracking_columns only apply to scd2"),
        ("scd1", "    primary_keys: [id]\n    extract_mode: full\n    hard_deletes: new_record",
         "hard_deletes new_record keeps history: use scd2"),
        ("scd2", "    primary_keys: [id]\n    tracking_columns: [name]\n    hard_deletes: invalidate",
         "hard_deletes invalidate needs extract_mode full or a delete_condition"),
        ("scd2", "    primary_keys: [id]\n    tracking_columns: [name]\n    extract_mode: full\n"
                 "    hard_deletes: new_record\n    scd2_deleted_flag_column: is_current",
         "the scd2 effective, end, current (and deleted) columns must differ"),
        ("scd2", "    primary_keys: [id]\n    tracking_columns: [name]\n    late_arriving: later",
         "late_arriving"),
    ],
)
def test_change_data_capture_options_are_validated(tmp_path, strategy, fields, expected):
    text = SCD2_BASE.replace("loading_strategy: scd2", f"loading_strategy: {strategy}") + fields + "\n"
    message = str(pytest.raises(ConfigError, load_settings, write(tmp_path, text)).value)
    assert expected in message


def test_change_data_capture_defaults_and_reserved_columns(tmp_path):
    table = load_settings(write(tmp_path, SCD2_BASE + "    primary_keys: [id]\n    tracking_columns: [name]\n"
                                "    extract_mode: full\n    hard_deletes: new_record\n")).table("customers")
    assert table.late_arriving.value == "rethread" and table.flags_deletions and table.keeps_changes
    assert {"is_deleted", "_change_op", "_change_sequence", "effective_date"} <= table.loader_columns()
    scd1 = load_settings(write(tmp_path, SCD2_BASE.replace("loading_strategy: scd2", "loading_strategy: scd1")
                               + "    primary_keys: [id]\n    delete_condition: op = 'D'\n", "s.yaml"))
    table = scd1.table("customers")
    assert table.is_scd1 and table.keeps_changes and not table.flags_deletions
    assert "effective_date" not in table.loader_columns() and "_change_op" in table.loader_columns()


def test_reader_defaults_sit_under_the_read_options_whatever_their_case(tmp_path):
    settings = load_settings(write(tmp_path, """
target_root: l
checkpoint_path: c
tables:
  - {table_name: plain, source_path: a, file_format: csv}
  - {table_name: raw, source_path: b, file_format: csv, read_options: {HEADER: false, multiline: false, sep: ";"}}
  - {table_name: lines, source_path: c, file_format: json}
  - {table_name: cols, source_path: d, file_format: parquet, read_options: {mergeSchema: true}}
"""))
    plain, raw, lines, cols = settings.tables
    assert plain.spark_read_options == {"header": "true", "quote": '"', "escape": '"', "multiLine": "true"}
    assert raw.spark_read_options == {"quote": '"', "escape": '"', "HEADER": "false", "multiline": "false",
                                      "sep": ";"}
    assert lines.spark_read_options == {}
    assert cols.spark_read_options == {"mergeSchema": "true"}
