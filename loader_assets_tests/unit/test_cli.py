import json
import subprocess
import sys

import pytest

from loader_assets.cli import EXIT_USAGE, main


def test_usage_and_config_errors_exit_2(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == EXIT_USAGE
    assert "cannot read config" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("target_root: l\ncheckpoint_path: c\ntables: [{table_name: t, source_path: s, file_format: xml}]\n")
    assert main(["status", "--config", str(bad)]) == EXIT_USAGE
    assert "tables.0.file_format" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse: --config is required
        main(["run"])
    assert exit_.value.code == EXIT_USAGE
    assert "the following arguments are required: --config" in capsys.readouterr().err


def test_unknown_table_is_a_usage_error(lake, capsys):
    lake.config()
    assert main(["run", "--config", str(lake.config_path), "--table", "nope"]) == EXIT_USAGE
    assert "unknown table 'nope'; configured tables: events" in capsys.readouterr().err


def test_status_of_a_fresh_project_as_json_via_the_console_module(lake):
    lake.config()
    out = subprocess.run([sys.executable, "-m", "loader_assets", "status", "--config", str(lake.config_path),
                          "--json"], capture_output=True, text=True, check=True).stdout
    status = json.loads(out)
    assert status == [{"table_name": "events", "lock": None, "lock_stale_reason": None,
                       "status_counts": {"pending": 0, "processing": 0, "completed": 0, "failed": 0,
                                                         "skipped": 0}}]
