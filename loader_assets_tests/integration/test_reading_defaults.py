"""Reader defaults that match what landing zones hold (README "Reading files"): csv with a header row and RFC 4180
quoting, as Python's ``csv`` module and pyarrow write it; json lines, or one JSON array when configured."""

import csv
import io
import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from loader_assets.api import run_pipeline
from loader_assets.resources.tracker import DeltaTrackerResource

pytestmark = pytest.mark.spark

# a comma, a doubled quote, a newline inside a quoted field, an empty string and a plain value
TEXTS = ['plain', 'with, comma', 'say "hi"', 'two\nlines', '']


def _table(name, file_format, read_options=None):
    table = {"table_name": name, "source_path": f"landing/{name}", "file_format": file_format}
    if read_options is not None:
        table["read_options"] = read_options
    return table


def _rows(spark, settings, table, columns):
    frame = spark.read.format("delta").load(settings.table_path(table))
    return sorted(tuple(row) for row in frame.select(*columns).collect()), frame.columns


def _statuses(settings, table):
    tracker = DeltaTrackerResource(checkpoint_path=settings.checkpoint_path).for_table(table)
    return {r["file_path"].rsplit("/", 1)[-1]: (r["status"], r["row_count"], r["error_message"])
            for r in tracker.read().to_pylist()}


def test_csv_from_pythons_csv_module_and_pyarrow_loads_exactly_with_no_read_options(spark, lake, instance):
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # excel dialect: doubles quotes, quotes fields holding , " or a newline
    writer.writerow(["id", "text"])
    writer.writerows([[i, text] for i, text in enumerate(TEXTS, start=1)])
    lake.write_bytes("notes", "python.csv", buffer.getvalue().encode(), days_ago=1)
    sink = io.BytesIO()
    pacsv.write_csv(pa.table({"id": pa.array([11, 12, 13], pa.int64()),
                              "text": ['"quoted" start', 'a\r\nb', 'x,y']}), sink)
    lake.write_bytes("notes", "pyarrow.csv", sink.getvalue(), days_ago=1)
    settings = lake.config(tables=[_table("notes", "csv")])

    summary = run_pipeline(settings, instance=instance, run_checks=False)

    assert summary.total_files_failed == 0, _statuses(settings, "notes")
    rows, columns = _rows(spark, settings, "notes", ["id", "text"])
    assert columns[:2] == ["id", "text"]  # the header row named the columns; it is not a data row
    # an empty unquoted field reads as NULL (Spark's csv reader and pandas agree; set nullValue/emptyValue
    # in read_options to change it)
    expected = [(str(i), text or None) for i, text in enumerate(TEXTS, start=1)]
    expected += [("11", '"quoted" start'), ("12", "a\r\nb"), ("13", "x,y")]
    assert rows == sorted(expected)
    assert {name: status[:2] for name, status in _statuses(settings, "notes").items()} == {
        "python.csv": ("completed", 5), "pyarrow.csv": ("completed", 3)}


def test_a_read_option_overrides_the_default_whatever_its_case(spark, lake, instance):
    lake.write_bytes("raw", "a.csv", b"1,one\n2,two\n", days_ago=1)
    settings = lake.config(tables=[_table("raw", "csv", {"HEADER": False})])

    run_pipeline(settings, instance=instance, run_checks=False)

    rows, columns = _rows(spark, settings, "raw", ["_c0", "_c1"])
    assert columns[:2] == ["_c0", "_c1"] and rows == [("1", "one"), ("2", "two")]


def test_a_quoted_csv_row_with_an_extra_field_still_fails_its_file_alone(spark, lake, instance):
    lake.write_bytes("notes", "good.csv", b'id,text\n1,"a ""b"""\n', days_ago=1)
    lake.write_bytes("notes", "bad.csv", b'id,text\n2,"c"\n3,"d",extra\n', days_ago=1)
    settings = lake.config(tables=[_table("notes", "csv")])

    run_pipeline(settings, instance=instance, run_checks=False)

    statuses = _statuses(settings, "notes")
    assert statuses["good.csv"][:2] == ("completed", 1)
    assert statuses["bad.csv"][0] == "failed" and "malformed" in statuses["bad.csv"][2]
    assert _rows(spark, settings, "notes", ["id", "text"])[0] == [("1", 'a "b"')]


def test_json_lines_by_default_and_one_array_with_multiline(spark, lake, instance):
    records = [{"id": 1, "text": "a"}, {"id": 2, "text": "b\nc"}]
    lake.write_bytes("events", "lines.json", "\n".join(json.dumps(r) for r in records).encode(), days_ago=1)
    lake.write_bytes("arrays", "array.json", json.dumps(records, indent=2).encode(), days_ago=1)
    settings = lake.config(tables=[_table("events", "json"), _table("arrays", "json", {"multiLine": True})])

    run_pipeline(settings, instance=instance, run_checks=False)

    for table in ("events", "arrays"):
        assert _rows(spark, settings, table, ["id", "text"])[0] == [(1, "a"), (2, "b\nc")], table
