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
