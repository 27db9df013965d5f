"""The connect tier: a real Spark Connect server with Delta, started by ``loader-assets spark-connect-server``.

One server per test session (its JVM start is the tier's main cost); every client is a process of its own,
because a Spark Connect session switches the whole Python process to Connect mode (pyspark sets
``SPARK_CONNECT_MODE_ENABLED``), which the test process's local session must not see. The server listens on
127.0.0.1 on a free port and is stopped, with its process group, at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from loader_assets_tests.conftest import TEST_SPARK_CONF
from loader_assets_tests.deployments import free_port

READY = "Spark Connect server with Delta listening"


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left after 30 s: no JVM outlives the tier."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            time.sleep(0.5)
        except subprocess.TimeoutExpired:
            continue
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return


@dataclass(frozen=True)
class ConnectServer:
    url: str  # sc://127.0.0.1:<port>
    ui: str  # the server's Spark UI, whose REST API says which jobs run

    def _get(self, path: str, patience: float = 120) -> Any:
        """A GET of the UI's REST API. The server's JVM can leave its UI unanswered for many seconds while it
        runs a job on a busy machine (a CI run saw a 10-second read time out), so a timeout is retried until
        ``patience`` runs out."""
        deadline = time.monotonic() + patience
        while True:
            try:
                with urllib.request.urlopen(f"{self.ui}/api/v1/{path}", timeout=30) as response:
                    return json.loads(response.read())
            except (TimeoutError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _app(self) -> str:
        return self._get("applications")[0]["id"]

    def running_statements(self) -> list[str]:
        """The descriptions of the SQL executions running on the server."""
        executions = self._get(f"applications/{self._app()}/sql?details=false&length=1000")
        return [e.get("description") or "" for e in executions if e.get("status") == "RUNNING"]

    def wait_until_idle(self, timeout: float = 300) -> None:
        """Until the server has run no job for two seconds (what a killed client left running has ended)."""
        app = self._app()
        quiet, deadline = 0, time.monotonic() + timeout
        while quiet < 4:
            assert time.monotonic() < deadline, "the Spark Connect server stayed busy"
            quiet = 0 if self._get(f"applications/{app}/jobs?status=running") else quiet + 1
            time.sleep(0.5)


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """A running Spark Connect server with Delta (local[2], the test confs, its UI on for its REST API)."""
    root = tmp_path_factory.mktemp("connect_server")
    port, ui_port = free_port(), free_port()
    config = root / "server.yaml"
    config.write_text(yaml.safe_dump({
        "target_root": str(root / "lake"), "checkpoint_path": str(root / "checkpoints"),
        "spark": {"master": "local[2]", "remote": f"sc://127.0.0.1:{port}",
                  "conf": {**TEST_SPARK_CONF, "spark.driver.memory": "2g", "spark.ui.enabled": "true",
                           "spark.driver.extraJavaOptions": "",  # a long-lived server: the default JIT
                           "spark.ui.port": str(ui_port),
                           # the REST API lists the retained executions on each poll: the newest few hundred
                           # hold every running one, and keep each answer small on a busy server
                           "spark.sql.ui.retainedExecutions": "200"}},
        "tables": [{"table_name": "unused", "source_path": str(root / "landing"), "file_format": "parquet"}],
    }))
    log = root / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "loader_assets", "spark-connect-server",
                                    "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + 300
    while READY not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_group(process)
            pytest.fail(f"the Spark Connect server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield ConnectServer(f"sc://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}")
    finally:
        stop_group(process)
        assert process.poll() is not None, "the Spark Connect server outlived the tier"


def run_client(url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``loader_assets_tests.connect.client`` in a new process (see the module docstring for why)."""
    return subprocess.run([sys.executable, "-m", "loader_assets_tests.connect.client", url, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[2])
