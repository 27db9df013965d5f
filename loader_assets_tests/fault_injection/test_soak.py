"""Randomized soak (marked soak, not in CI): a stream of files, the CLI SIGKILLed at random instants, then the
final table must equal the expected one exactly: no duplicate, no lost row.

    LOADER_ASSETS_SOAK_KILLS=50 LOADER_ASSETS_SOAK_SEED=1 .venv/bin/python -m pytest -m soak -s
"""

import json
import os
import random
import signal
import time

import pytest

from loader_assets_tests.conftest import target_rows
from loader_assets_tests.fault_injection.test_crash_windows import cli, tracker_statuses

pytestmark = [pytest.mark.soak, pytest.mark.spark]


def test_random_kills_over_a_stream_of_files(spark, lake):
    kills_wanted = int(os.environ.get("LOADER_ASSETS_SOAK_KILLS", "50"))
    rng = random.Random(int(os.environ.get("LOADER_ASSETS_SOAK_SEED", "1")))
    settings = lake.config()
    expected, kills, clean_exits, started = [], 0, 0, time.monotonic()
    file_no = 0
    while kills < kills_wanted:
        for _ in range(rng.randint(0, 2)):  # the stream: 0-2 new files per attempt
            ids = list(range(file_no * 10, file_no * 10 + rng.randint(1, 9)))
            path = lake.write_parquet("events", f"f{file_no:04d}.parquet", ids, days_ago=3 - file_no * 0.01)
            expected += [(i, f"n{i}", str(path)) for i in ids]
            file_no += 1
        process = cli(lake, "run", wait=False)
        deadline = time.monotonic() + rng.uniform(2.0, 30.0)
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        else:
            clean_exits += 1
        process.communicate()
    code, out, err = cli(lake, "run", "--json")
    assert code == 0, err[-3000:]
    rows = target_rows(spark, settings, "events")
    assert len(rows) == len(set(rows)), "duplicate rows"
    assert rows == sorted(expected)
    assert {status for status, _ in tracker_statuses(settings).values()} == {"completed"}
    code, out, _ = cli(lake, "validate-consistency")
    assert code == 0, out
    print(json.dumps({"kills": kills, "clean_exits": clean_exits, "files": file_no, "rows": len(rows),
                      "seconds": round(time.monotonic() - started)}))
