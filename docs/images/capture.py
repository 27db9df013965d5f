"""Screenshots of the Dagster UI over the demo's tables, for the README (headless Chromium).

Run after ``./dev demo`` (which loads the sample data into ``data/`` and records its runs in ``.dagster_home``)::

    .venv/bin/python docs/images/capture.py

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


def main() -> int:
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(ROOT / ".dagster_home")),
           "LOADER_ASSETS_CONFIG": os.environ.get("LOADER_ASSETS_CONFIG", str(ROOT / "configs" / "local.yaml"))}
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
        for name, page in PAGES.items():
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
