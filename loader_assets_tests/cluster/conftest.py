"""The cluster tier: a real Spark standalone cluster (one master, two workers) started from pip pyspark's
``bin/spark-class``, with the loader's CLI as the driver in a process of its own.

Everything binds to 127.0.0.1 on free ports. Each worker offers one core and 1 GiB, so an application gets one
executor (a ``CoarseGrainedExecutorBackend`` JVM, a child of its worker) on each worker. Every daemon runs in a
process group of its own, which holds its executors too: killing a worker's group is the loss of a node. The
workers' directories (executor logs, the jars executors fetched from the driver) live under the session's temp
directory, not in the pyspark package. At the end every group is stopped and the tier asserts that no master,
worker or executor JVM is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyspark
import pytest

from loader_assets_tests.connect.conftest import stop_group
from loader_assets_tests.deployments import free_port

SPARK_HOME = Path(pyspark.__file__).parent
EXECUTOR = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


def processes() -> list[dict]:
    """Every process of the machine: pid, parent, process group, command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        found.append({"pid": int(entry.name), "ppid": int(fields[1]), "pgid": int(fields[2]), "cmdline": cmdline})
    return found


def executor_processes(app_id: str | None = None) -> list[dict]:
    """The executor JVMs on this machine (of application ``app_id`` if given)."""
    return [p for p in processes() if EXECUTOR in p["cmdline"]
            and (app_id is None or f"--app-id {app_id} " in p["cmdline"] + " ")]


@dataclass
class Cluster:
    url: str  # spark://127.0.0.1:<port>
    webui: str  # the master's web UI, whose /json/ lists workers and applications
    root: Path
    env: dict[str, str]
    master: subprocess.Popen | None = None
    workers: list[subprocess.Popen | None] = field(default_factory=lambda: [None, None])

    # ------------------------------------------------------------------------------------------ processes
    def _daemon(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "a") as out:
            return subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)

    def start_master(self) -> None:
        port, ui = self.url.rsplit(":", 1)[1], self.webui.rsplit(":", 1)[1]
        self.master = self._daemon("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                              "--port", port, "--webui-port", ui])

    def start_worker(self, index: int) -> None:
        work = self.root / f"worker-{index}"
        work.mkdir(exist_ok=True)
        self.workers[index] = self._daemon(f"worker-{index}", [
            "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", str(free_port()),
            "--webui-port", str(free_port()), "--cores", "1", "--memory", "1g", "--work-dir", str(work), self.url])

    def kill_worker(self, index: int) -> list[int]:
        """SIGKILL worker ``index``'s process group: its JVM and the executor JVMs it launched, at once (a lost
        node). Returns the pids of the executors it had."""
        worker = self.workers[index]
        assert worker is not None and worker.poll() is None, f"worker {index} is not running"
        executors = [p["pid"] for p in executor_processes() if p["ppid"] == worker.pid]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(p["pgid"] == worker.pid for p in processes()):
            assert time.monotonic() < deadline, f"processes of worker {index}'s group survived SIGKILL"
            time.sleep(0.2)
        self.workers[index] = None
        return executors

    def stop(self) -> None:
        for process in [*self.workers, self.master]:
            if process is not None:
                stop_group(process)

    # ------------------------------------------------------------------------------------------ master state
    def state(self) -> dict:
        return json.loads(urllib.request.urlopen(f"{self.webui}/json/", timeout=10).read())

    def alive_workers(self) -> int:
        return sum(1 for w in self.state()["workers"] if w["state"] == "ALIVE")

    def wait_until_ready(self, timeout: float = 180) -> None:
        """Until the master lists two ALIVE workers and runs no application (what an earlier test's driver left
        has been removed), and no executor JVM is left."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.state()
                ready = (sum(1 for w in state["workers"] if w["state"] == "ALIVE") == 2
                         and not state["activeapps"] and not executor_processes())
            except (OSError, ValueError):  # not listening yet, or its UI serves a page before the JSON
                ready = False
            if ready:
                return
            for name, process in [("master", self.master), ("worker-0", self.workers[0]),
                                  ("worker-1", self.workers[1])]:
                if process is not None and process.poll() is not None:
                    pytest.fail(f"the {name} exited:\n{(self.root / f'{name}.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the cluster did not become ready: {self.state() if self.master else None}")
            time.sleep(0.5)

    def executor_dirs(self, app_id: str) -> list[Path]:
        """The working directories of ``app_id``'s executors on the workers (the jars they fetched, their logs)."""
        return sorted(d for w in self.root.glob("worker-*") for d in (w / app_id).glob("*") if d.is_dir())


def spark_env(root: Path) -> dict[str, str]:
    conf = root / "conf"  # empty: nothing from a machine-wide Spark install applies
    conf.mkdir(exist_ok=True)
    return {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_CONF_DIR": str(conf),
            "SPARK_LOG_DIR": str(root / "logs"), "SPARK_PID_DIR": str(root), "PYSPARK_PYTHON": sys.executable,
            "SPARK_NO_DAEMONIZE": "1"}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running standalone cluster: a master and two workers (1 core, 1 GiB each), all on 127.0.0.1."""
    root = tmp_path_factory.mktemp("cluster")
    assert not executor_processes(), "an executor JVM from elsewhere runs on this machine; the tier cannot tell"
    instance = Cluster(f"spark://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}", root, spark_env(root))
    groups: list[int] = []
    try:
        instance.start_master()
        groups.append(instance.master.pid)
        instance.start_worker(0)
        instance.start_worker(1)
        instance.wait_until_ready()
        yield instance
    finally:
        groups += [w.pid for w in instance.workers if w is not None]
        instance.stop()
        time.sleep(1)
        left = [p for p in processes() if p["pgid"] in groups or EXECUTOR in p["cmdline"]]
        assert not left, f"the cluster left processes behind: {left}"


@pytest.fixture
def ready_cluster(cluster: Cluster) -> Cluster:
    """The session's cluster, with both workers alive and idle (a test that killed a worker restarts it)."""
    cluster.wait_until_ready()
    return cluster
