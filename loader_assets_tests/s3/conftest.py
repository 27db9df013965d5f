"""The ``s3`` tier: a real S3-compatible server (moto's server mode) on 127.0.0.1, started and stopped here.

``moto_server`` (one per test session, so one per pytest worker) runs ``python -m moto.server`` in its own
process group on a free loopback port, waits until it answers, and at the end stops the whole group and checks
that the process is gone. ``s3`` (per test) creates a fresh bucket and puts the store's settings in the
environment the way a deployment would: random credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``),
``AWS_REGION``, ``AWS_ENDPOINT_URL`` (read by delta-rs, pyarrow and boto3) and ``AWS_ALLOW_HTTP`` (delta-rs:
the server speaks plain http). Nothing here is a mock: the code under test talks HTTP to the server.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    import boto3  # moto depends on it
    import moto  # noqa: F401
    MOTO_MISSING = None
except ImportError as error:  # pragma: no cover - the dev extra installs moto[server]
    MOTO_MISSING = f"the s3 tier needs moto[server] (pip install -e '.[dev]'): {error}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.s3)
            if MOTO_MISSING:
                item.add_marker(pytest.mark.skip(reason=MOTO_MISSING))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)


def _start(log: Path) -> MotoServer:
    port = _free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    server = MotoServer(f"http://127.0.0.1:{port}", process, f"testing-{secrets.token_hex(6)}",
                        secrets.token_hex(20))
    client = server.client()
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            client.list_buckets()
            return server
        except Exception:
            if time.monotonic() > deadline:
                _stop(process)
                raise RuntimeError(f"moto server on port {port} did not answer in 60 s") from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    if MOTO_MISSING:
        pytest.skip(MOTO_MISSING)
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    server = _start(log)
    yield server
    _stop(server.process)
    assert server.process.poll() is not None, "the moto server outlived its fixture"
    with pytest.raises(ProcessLookupError):  # nothing is left in the server's process group either
        os.killpg(server.process.pid, 0)


@dataclass
class Bucket:
    """A fresh bucket on the test server, and the helpers tests use to put landing files in it."""

    server: MotoServer
    name: str

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}".rstrip("/")

    def put(self, key: str, data: bytes) -> str:
        self.server.client().put_object(Bucket=self.name, Key=key, Body=data)
        return self.uri(key)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.server.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture
def s3(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A new bucket, with the server's endpoint and credentials in the environment (as a deployment sets them)."""
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = Bucket(moto_server, f"loader-{uuid.uuid4().hex[:12]}")
    moto_server.client().create_bucket(Bucket=bucket.name)
    return bucket
