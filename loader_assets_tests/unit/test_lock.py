import json
import subprocess
import sys
import time

import pytest

from loader_assets.core.errors import LockHeldError, LockLostError
from loader_assets.resources.lock import DeltaLockResource, LockState, TableLock, lock_stale_reason

RACER = """
import json, os, sys, time
from loader_assets.resources.lock import TableLock, Lease
lock = TableLock(sys.argv[1], "t", 60)
lock._open_or_create()
start = float(sys.argv[2])
while time.time() < start:
    pass
outcome = lock.try_acquire("run-%d" % os.getpid())
print(json.dumps({"won": isinstance(outcome, Lease)}), flush=True)
sys.stdin.read()  # stay alive (a live holder) until every racer has decided: a dead winner would be stale
os._exit(0)
"""


def locks(tmp_path, lease=60.0):
    return DeltaLockResource(checkpoint_path=str(tmp_path), lease_seconds=lease)


def test_acquire_release_and_seed_fields(tmp_path):
    lock = locks(tmp_path).for_table("t")
    assert lock.read() is None
    lease = lock.acquire("run-1", wait_seconds=0, heartbeat=False)
    state = lock.read()
    assert state.held and state.owner_id == lease.owner_id and state.run_id == "run-1"
    seed_fields = state.to_json()
    assert {"pid", "hostname", "acquired_at", "timeout_at", "lock_name"} <= set(seed_fields)
    assert seed_fields["lock_name"] == "loader_assets/t"
    with pytest.raises(LockHeldError, match="table 't' is locked by PID"):
        lock.acquire("run-2", wait_seconds=0.3)
    lease.release()
    assert not lock.read().held
    lock.acquire("run-2", wait_seconds=0, heartbeat=False).release()


def test_dead_holder_on_this_host_is_taken_over(tmp_path):
    lock = locks(tmp_path).for_table("t")
    holder = subprocess.run(
        [sys.executable, "-c", f"from loader_assets.resources.lock import TableLock\n"
         f"TableLock({str(tmp_path / 'locks' / 't')!r}, 't', 3600).acquire('dead', 0, heartbeat=False)\n"
         "import os; os._exit(0)"], check=True)
    assert holder.returncode == 0
    state = lock.read()
    assert state.held and "is gone" in lock_stale_reason(state, None)
    lease = lock.acquire("run-2", wait_seconds=0, heartbeat=False)
    assert lock.read().owner_id == lease.owner_id
    lease.release()


def test_expired_lease_is_taken_over_and_the_old_holder_notices(tmp_path):
    lock = locks(tmp_path, lease=0.5).for_table("t")
    first = lock.acquire("run-1", wait_seconds=0, heartbeat=False)
    time.sleep(0.7)
    assert "lease expired" in lock_stale_reason(lock.read(), None)
    second = lock.acquire("run-2", wait_seconds=0, heartbeat=False)
    with pytest.raises(LockLostError, match="lost the lock of table 't'"):
        first.ensure_held()
    first.release()  # must not free the new holder's lock
    assert lock.read().owner_id == second.owner_id
    second.release()


def test_heartbeat_keeps_a_short_lease_alive(tmp_path):
    lock = locks(tmp_path, lease=1.5).for_table("t")
    lease = lock.acquire("run-1", wait_seconds=0, heartbeat=True)
    time.sleep(3.5)
    assert lock_stale_reason(lock.read(), None) is None
    lease.ensure_held()
    lease.release()


def test_four_racing_processes_exactly_one_wins(tmp_path):
    for trial in range(5):
        path = tmp_path / f"trial{trial}"
        locks(path).for_table("t")._open_or_create()
        start = time.time() + 3.0
        racers = [
            subprocess.Popen([sys.executable, "-c", RACER, str(path / "locks" / "t"), str(start)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        results = [json.loads(r.stdout.readline()) for r in racers]
        for racer in racers:
            racer.communicate(timeout=60)
        assert sum(r["won"] for r in results) == 1, results


def test_free_state_describes_itself():
    state = LockState("loader_assets/t", None, None, None, None, None, None, None, None)
    assert state.describe() == "free" and lock_stale_reason(state, lambda run_id: True) is None
    assert not state.held and state.to_json()["pid"] is None


def test_a_renewal_that_cannot_be_written_is_not_reported_as_one(tmp_path, monkeypatch):
    lock = locks(tmp_path, lease=30).for_table("t")
    lease = lock.acquire("run-1", wait_seconds=0, heartbeat=False)
    before = lease.state.timeout_at
    monkeypatch.setattr(TableLock, "_conditional_write", lambda self, table, state, operation: False)
    assert lock.renew(lease) is False  # every write lost its race: not renewed
    assert lease.state.timeout_at == before and lease.lost_reason is None  # still ours until it runs out
    monkeypatch.undo()
    assert lock.renew(lease) is True and lease.state.timeout_at > before
    lease.release()


def test_a_lease_that_ran_out_without_a_renewal_refuses_to_write(tmp_path):
    lock = locks(tmp_path, lease=0.5).for_table("t")
    lease = lock.acquire("run-1", wait_seconds=0, heartbeat=False)
    lease.ensure_held()
    time.sleep(0.7)  # nobody took it over, but from now on anybody may
    assert lock.read().owner_id == lease.owner_id
    with pytest.raises(LockLostError, match="ran out at .* without a renewal"):
        lease.ensure_held()
    lease.release()


def test_a_holder_whose_dagster_run_ended_is_stale_and_a_damaged_lock_is_reported(tmp_path):
    from loader_assets.core.errors import TrackerError

    lock = locks(tmp_path).for_table("t")
    first = lock.acquire("run-ended", wait_seconds=0, heartbeat=False)  # alive pid, unexpired lease
    with pytest.raises(LockHeldError):
        lock.acquire("run-2", wait_seconds=0, heartbeat=False)
    second = lock.acquire("run-2", wait_seconds=0, heartbeat=False, run_ended=lambda run_id: run_id == "run-ended")
    assert lock.read().owner_id == second.owner_id
    first.release()
    second.release()
    damaged = tmp_path / "locks" / "u"
    damaged.mkdir(parents=True)
    (damaged / "junk.json").write_text("{}")
    with pytest.raises(TrackerError, match="the lock of table 'u' is damaged"):
        locks(tmp_path).for_table("u").acquire("r", wait_seconds=0, heartbeat=False)
