"""The CLI against S3 without Spark: credentials come from the environment only, and neither an answer nor an
error shows them. Real moto server, real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.s3


def cli(tmp_path, bucket: str, *args: str) -> tuple[int, str, str]:
    raw = {"target_root": f"s3://{bucket}/lake", "checkpoint_path": f"s3://{bucket}/checkpoints",
           "state_storage": {"provider": "s3"},
           "tables": [{"table_name": "events", "source_path": f"s3://{bucket}/landing/events",
                       "file_format": "parquet"}]}
    config = tmp_path / f"{bucket}.yaml"
    config.write_text(yaml.safe_dump(raw))
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "loader_assets", *args, "--config", str(config)],
                          env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_status_and_an_empty_run_work_from_the_environment_and_show_no_credential(tmp_path, s3):
    """``status`` and a ``run`` with nothing to load read the state on S3 (lock table, tracker) with credentials
    and endpoint taken from the environment; ``status`` and ``run`` against a bucket that does not exist fail with one
    line naming the bucket (no traceback). No output holds the access key id or the secret key."""
    code, out, err = cli(tmp_path, s3.name, "status", "--json")
    assert code == 0, err
    outputs = [out, err]
    assert [t["table_name"] for t in json.loads(out)] == ["events"]
    code, out, err = cli(tmp_path, s3.name, "run", "--json")
    outputs += [out, err]
    assert code == 0, err
    summary = json.loads(out)
    assert summary["spark_session_started"] is False and summary["total_files_discovered"] == 0

    for command in ("status", "run"):
        code, out, err = cli(tmp_path, "no-such-bucket-here", command, "--json")
        outputs += [out, err]
        assert code == 1 and "no-such-bucket-here" in err and "NoSuchBucket" in err, err
        assert "loader-assets: storage error:" in err and "Traceback" not in err, err
    assert any("events" in text for text in outputs)  # the outputs searched below are the commands' answers
    for text in outputs:
        assert s3.server.secret_access_key not in text and s3.server.access_key_id not in text


def test_the_readme_s3_settings_are_valid_and_are_the_ones_the_end_to_end_test_uses(tmp_path):
    """The README's "Object storage" config loads as settings, holds no credential field, and its Spark confs
    are the keys (and, but for the endpoint, the values) that the end-to-end test runs Spark with."""
    import re
    from pathlib import Path

    from loader_assets.settings import load_settings
    from loader_assets_tests.s3.test_end_to_end_s3 import s3a_conf

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Object storage", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    (tmp_path / "config.yaml").write_text(block)
    settings = load_settings(tmp_path / "config.yaml")
    assert settings.state_storage.provider == "s3"
    assert settings.state_storage.access_key_id is None and settings.state_storage.secret_access_key is None
    tested = s3a_conf("http://minio.internal:9000")
    assert dict(settings.spark.conf) == tested


def test_a_small_append_into_an_s3_table_commits_with_delta_rs_and_no_jvm(tmp_path, s3):
    """The small-batch engine on an object store: a table on S3 (created here with delta-rs, as another tool
    would, in the loader's column layout) takes a batch of two parquet files through ``loader-assets run``
    with no Spark session: data files written through pyarrow's S3 file system, one commit through delta-rs
    carrying the batch's txn and userMetadata, per-file counts read back from the log by the post-load check."""
    import io
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    empty = pa.table({"id": pa.array([], pa.int64()), "name": pa.array([], pa.string()),
                      "_source_file": pa.array([], pa.string()),
                      "_load_timestamp": pa.array([], pa.timestamp("us", tz="UTC")),
                      "_batch_id": pa.array([], pa.string())})
    write_deltalake(s3.uri("lake/events"), empty)
    files = {}
    for name, ids in (("a.parquet", [1, 2, 3]), ("b.parquet", [4, 5])):
        sink = io.BytesIO()
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "name": [f"n{i}" for i in ids]}), sink)
        files[s3.put(f"landing/events/{name}", sink.getvalue())] = ids
    before = datetime.now(UTC)
    code, out, err = cli(tmp_path, s3.name, "run", "--json")
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["spark_session_started"] is False
    assert (summary["total_files_processed"], summary["total_rows_loaded"]) == (2, 5)
    table = DeltaTable(s3.uri("lake/events"))
    rows = sorted((r["id"], r["name"], r["_source_file"]) for r in table.to_pyarrow_table().to_pylist())
    assert rows == sorted((i, f"n{i}", path) for path, ids in files.items() for i in ids)
    stamped = table.to_pyarrow_table().to_pylist()
    assert len({r["_batch_id"] for r in stamped}) == 1 and all(r["_load_timestamp"] >= before for r in stamped)
    commit = table.history(1)[0]
    assert "delta-rs" in str(commit.get("engineInfo"))
    meta = json.loads(commit["userMetadata"])
    assert meta["batch_id"] == stamped[0]["_batch_id"] and meta["files"] == 2
    assert table.transaction_version("loader_assets/events") == meta["batch_seq"]
    tracker = DeltaTable(s3.uri("checkpoints/file_processing_tracker/events")).to_pyarrow_table().to_pylist()
    assert {r["file_path"]: (r["status"], r["row_count"]) for r in tracker} == {
        path: ("completed", len(ids)) for path, ids in files.items()}
    assert len(pa.table(table.get_add_actions(flatten=True))) == 2  # one data file per source file
    assert s3.server.secret_access_key not in out + err
