"""Screenshots of the Dagster UI over the demo's tables, for the README (headless Chromium).

Run after ``./dev demo`` (which loads the sample data into ``data/`` and records its runs in ``.dagster_home``)::

    .venv/bin/python docs/images/capture.py

``--failed-partition`` instead loads a small lake of its own in a temporary directory (two days of good files, one
corrupt file on the second day) and takes ``asset-partition-failed.png``: the partition view with the bad day
failed and the good day materialized (docs/ARCHITECTURE.md, "A partition with a failed file shows failed").

It starts ``dagster-webserver`` on a free port of 127.0.0.1 over the same ``DAGSTER_HOME`` and config, and writes
``docs/images/<page>.png`` for each page below with Debian's ``chromium`` (``apt-get install chromium``).
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "asset-overview": "/assets/transactions",
    "asset-partitions": "/assets/transactions?view=partitions",
    "asset-checks": "/assets/transactions?view=checks",
    "scd2-overview": "/assets/customers",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failed_partition_lake(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A lake with a corrupt file on one of two days, loaded once: (environment, pages)."""
    import time

    import dagster as dg
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loader_assets.api import run_pipeline
    from loader_assets.settings import load_settings

    landing = root / "landing" / "events"
    landing.mkdir(parents=True)
    noon = (int(time.time()) // 86400 - 1) * 86400 + 43200
    for day, names in ((1, ["a", "b"]), (2, ["c", "d", "corrupt"])):
        for name in names:
            path = landing / f"day{day}_{name}.parquet"
            if name == "corrupt":
                path.write_bytes(b"PAR1 not a parquet file PAR1")
            else:
                pq.write_table(pa.table({"id": [1, 2, 3], "name": ["x", "y", "z"]}), path)
            os.utime(path, (noon - (2 - day) * 86400,) * 2)
    config = root / "config.yaml"
    config.write_text(f"target_root: {root / 'lake'}\ncheckpoint_path: {root / 'checkpoints'}\n"
                      f"tables:\n  - {{table_name: events, source_path: {landing}, file_format: parquet}}\n")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_pipeline(load_settings(str(config)), instance=instance)
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOADER_ASSETS_CONFIG": str(config)}
    return env, {"asset-partition-failed": "/assets/events?view=partitions"}


def main() -> int:
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(ROOT / ".dagster_home")),
           "LOADER_ASSETS_CONFIG": os.environ.get("LOADER_ASSETS_CONFIG", str(ROOT / "configs" / "local.yaml"))}
    pages = PAGES
    if "--failed-partition" in sys.argv:
        import tempfile

        env, pages = failed_partition_lake(Path(tempfile.mkdtemp(prefix="capture-failed-")))
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
         "-w", str(ROOT / "workspace.yaml")], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                time.sleep(1)
        # the UI's one-time "Join the Dagster community" dialog would cover the page: mark it seen
        request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                         data=json.dumps({"query": "mutation { setNuxSeen }"}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).read()
        for name, page in pages.items():
            out = ROOT / "docs" / "images" / f"{name}.png"
            subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--window-size=1600,1000", "--virtual-time-budget=20000", f"--screenshot={out}",
                            f"http://127.0.0.1:{port}{page}"], check=True, capture_output=True, timeout=180)
            print(f"wrote {out.relative_to(ROOT)}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
