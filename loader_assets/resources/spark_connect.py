"""A Spark Connect server with Delta, for runs that attach instead of starting Spark (``spark.remote``).

``loader-assets spark-connect-server --config ...`` starts pyspark's own ``SparkConnectServer`` (its jar ships in
the pip package) through ``spark-submit``, with exactly the session a local run would build: the same master,
Delta jars, extensions, defaults and user confs (``spark.spark_config``). Runs then attach in about a second
(docs/ARCHITECTURE.md, "Spark Connect"). The server listens on 127.0.0.1 unless told otherwise: Spark Connect has
no authentication of its own, so exposing it is the deployment's decision (a proxy, a private network).

Crash window this adds (docs/ARCHITECTURE.md, "Spark Connect"): when a client dies in the middle of a write, the
server may still finish that one operation afterwards. Each target commit carries the batch's txn, so the one
that commits second is refused or skipped: the batch still lands once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
DEFAULT_PORT = 15002


def server_command(config: Mapping[str, str], host: str, port: int) -> list[str]:
    """The ``spark-submit`` command line of a Spark Connect server built with ``config`` (a ``spark_config``)."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    confs = {**config, "spark.connect.grpc.binding.address": host, "spark.connect.grpc.binding.port": str(port)}
    master = confs.pop("spark.master")
    args = [str(spark_home / "bin" / "spark-submit"), "--class", SERVER_CLASS, "--master", master]
    for key, value in confs.items():
        args += ["--conf", f"{key}={value}"]
    return args


def server_environment() -> dict[str, str]:
    import pyspark

    spark_home = str(Path(pyspark.__file__).parent)
    return {**os.environ, "SPARK_HOME": spark_home, "PYSPARK_PYTHON": sys.executable}


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once ``host:port`` accepts connections; False if ``process`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def serve(command: Sequence[str], host: str, port: int, timeout: float = 300.0) -> int:
    """Run the server in the foreground: print its URL once it listens, forward SIGINT/SIGTERM to it, and return
    its exit code (1 if it did not come up within ``timeout``)."""
    process = subprocess.Popen(list(command), env=server_environment())

    def forward(signum: int, _frame: FrameType | None) -> None:
        process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if not wait_for_port(host, port, process, timeout):
        if process.poll() is None:
            process.terminate()
        code = process.wait()
        print(f"loader-assets: the Spark Connect server did not come up on {host}:{port} "
              f"(exit code {code})", file=sys.stderr)
        return 1
    print(f"Spark Connect server with Delta listening: set spark.remote: sc://{host}:{port}", flush=True)
    return process.wait()
