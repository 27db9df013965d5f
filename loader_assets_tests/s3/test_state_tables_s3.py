"""The loader's own state tables (tracker, lock, event log) on ``s3://`` through delta-rs, against a real
S3-compatible server (moto's server mode). No Spark.

delta-rs 1.x commits to S3 with a conditional put (``If-None-Match: *`` on the commit file): of two writers of
the same version, the store lets exactly one create it. The lock's exactly-one-winner rule rests on that, so the
server's own behaviour is pinned first, then the lock is raced by real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import botocore.exceptions
import pytest
import yaml

from loader_assets.core.discovery import list_source_files
from loader_assets.core.errors import LockHeldError, LockLostError
from loader_assets.core.partitions import partition_keys_for
from loader_assets.resources.lock import DeltaLockResource, lock_stale_reason
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.settings import load_settings

pytestmark = pytest.mark.s3

RACER = """
import json, os, sys, time
from loader_assets.resources.lock import TableLock, Lease
lock = TableLock(sys.argv[1], "t", 60, json.loads(sys.argv[2]))
lock._open_or_create()
print("ready", flush=True)
start = float(sys.stdin.readline())  # the same instant for every racer, sent once all are ready
while time.time() < start:
    pass
outcome = lock.try_acquire("run-%d" % os.getpid())
print(json.dumps({"won": isinstance(outcome, Lease)}), flush=True)
sys.stdin.read()  # stay alive (a live holder) until every racer has decided: a dead winner would be stale
os._exit(0)
"""


def s3_settings(tmp_path, s3, **state_storage):
    """Settings read from a YAML file the way a deployment writes it: paths and endpoint, no credentials."""
    raw = {
        "target_root": s3.uri("lake"),
        "checkpoint_path": s3.uri("checkpoints"),
        "state_storage": {"provider": "s3", "region": "us-east-1", **state_storage},
        "tables": [{"table_name": "events", "source_path": s3.uri("landing/events"), "file_format": "parquet"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_settings(path), path


def test_the_server_refuses_a_second_create_with_if_none_match(s3):
    """Pins the store's behaviour the commits rely on: a PutObject with ``If-None-Match: *`` of a key that exists
    fails with 412 and leaves the first object in place (a server ignoring the header would overwrite it)."""
    client = s3.server.client()
    client.put_object(Bucket=s3.name, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client.put_object(Bucket=s3.name, Key="k", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=s3.name, Key="k")["Body"].read() == b"first"


def test_tracker_round_trip_and_event_log_on_s3(tmp_path, s3):
    """A tracker under ``s3://.../checkpoints`` is created, registers files listed from an ``s3://`` landing
    zone, claims, completes and fails them, and an event appended to the log reads back; the objects are in the
    bucket (not on local disk), and the config file that got there holds no credential."""
    settings, config_path = s3_settings(tmp_path, s3, endpoint=s3.server.endpoint)
    for name in ("a.parquet", "b.parquet", "c.parquet"):
        s3.put(f"landing/events/{name}", b"x" * 10)
    listing = list_source_files(settings.table("events").source_path)
    assert listing.num_rows == 3
    keys = partition_keys_for(listing["file_modified_time"], "day", "2024-01-01")

    tracker = DeltaTrackerResource.from_settings(settings).for_table("events")
    assert tracker.path == s3.uri("checkpoints/file_processing_tracker/events")
    assert not tracker.exists()
    tracker.create(baseline_txn=0)
    assert tracker.exists()
    assert tracker.register(listing, keys).new_files == 3
    assert tracker.register(listing, keys).new_files == 0  # idempotent against the store too
    a, b, c = listing["file_path"].to_pylist()
    assert a == s3.uri("landing/events/a.parquet")
    tracker.claim([a, b], "b1", 1, "run-1")
    tracker.complete({a: 10}, "b1", 1)
    tracker.fail({b: "boom"})
    assert tracker.status_counts() == {"pending": 1, "processing": 0, "completed": 1, "failed": 1, "skipped": 0}
    rows = {r["file_path"]: r for r in tracker.read().to_pylist()}
    assert (rows[a]["row_count"], rows[a]["target_version"]) == (10, 1)
    assert rows[a]["fingerprint"] == f"10:{listing['file_modified_time'][0].value}"
    assert tracker.max_batch_seq() == 1

    assert tracker.events.record([{"file_path": c, "event": "skip", "detail": "operator said so"}]) == 1
    events = tracker.events.read([c]).to_pylist()
    assert [(e["event"], e["detail"]) for e in events] == [("skip", "operator said so")]

    stored = s3.keys("checkpoints/")
    assert any(k.startswith("checkpoints/file_processing_tracker/events/_delta_log/") for k in stored)
    assert any(k.startswith("checkpoints/file_events/events/_delta_log/") for k in stored)
    config_text = config_path.read_text()
    assert s3.server.secret_access_key not in config_text and s3.server.access_key_id not in config_text


def test_state_tables_find_the_endpoint_in_the_environment(tmp_path, s3):
    """With ``state_storage: {provider: s3}`` and nothing else, delta-rs takes endpoint, region, credentials and
    ``AWS_ALLOW_HTTP`` from the environment: the tracker is written to the server."""
    settings, _ = s3_settings(tmp_path, s3)
    tracker = DeltaTrackerResource.from_settings(settings).for_table("events")
    tracker.create(baseline_txn=0)
    assert tracker.status_counts()["pending"] == 0
    assert any(k.startswith("checkpoints/file_processing_tracker/events/_delta_log/0") for k in s3.keys())


def test_lock_acquire_release_and_expired_takeover_on_s3(tmp_path, s3):
    """The lease lock on S3: a second acquirer is refused while the holder lives, a lease that ran out is taken
    over, the old holder learns it lost the lock, and its release does not free the new holder's lock."""
    settings, _ = s3_settings(tmp_path, s3)
    locks = DeltaLockResource(checkpoint_path=settings.checkpoint_path, lease_seconds=1.0,
                              storage=settings.state_storage)
    lock = locks.for_table("events")
    first = lock.acquire("run-1", wait_seconds=0, heartbeat=False)
    assert lock.read().owner_id == first.owner_id
    with pytest.raises(LockHeldError, match="table 'events' is locked by PID"):
        lock.acquire("run-2", wait_seconds=0.2, heartbeat=False)
    time.sleep(1.2)
    assert "lease expired" in lock_stale_reason(lock.read(), None)
    second = lock.acquire("run-2", wait_seconds=0, heartbeat=False)
    with pytest.raises(LockLostError, match="lost the lock of table 'events'"):
        first.ensure_held()
    first.release()
    assert lock.read().owner_id == second.owner_id
    second.release()
    assert not lock.read().held
    assert any(k.startswith("checkpoints/locks/events/_delta_log/") for k in s3.keys())


def race(lock_path: str, options: dict[str, str], racers: int = 4) -> list[bool]:
    """Start ``racers`` processes that open the lock; once all are ready, each tries to acquire it once at the
    same instant (sent to all of them). Returns who won."""
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, lock_path, json.dumps(options)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(racers)
    ]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * racers
        start = time.time() + 0.5
        for p in procs:
            p.stdin.write(f"{start}\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline())["won"] for p in procs]
    finally:
        for p in procs:
            p.communicate(timeout=60)
    return results


def test_four_racing_processes_exactly_one_wins_on_s3(tmp_path, s3):
    """Four real processes try to take the same free lock on S3 at the same instant, five rounds: each round
    exactly one wins. delta-rs's conditional put of the commit file is what decides (no DynamoDB, no setting)."""
    settings, _ = s3_settings(tmp_path, s3)
    locks = DeltaLockResource(checkpoint_path=settings.checkpoint_path, storage=settings.state_storage)
    winners = []
    for trial in range(5):
        lock = locks.for_table(f"t{trial}")
        lock._open_or_create()
        results = race(lock.path, lock.options)
        winners.append(sum(results))
        assert lock.read().held
    assert winners == [1, 1, 1, 1, 1]
