"""A slot never outlives its supervisor, even when the supervisor is killed while the slot starts.

The supervisor (``python -m framescale.worker``, its own process here, so its PID is the slot's
parent) is SIGKILLed 0, 0.25 and 0.5 s after its first slot appears: the moments at which
slots used to survive as orphans (PID 1 their parent) and go on taking jobs unsupervised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framescale import synthetic
from framescale.local import stack as local_stack
from tests.support import client, enqueue, unique, wait_for

pytestmark = [pytest.mark.integration]


def slot_pids(parent: int) -> list[int]:
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return []
    found = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(pid)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its new parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("delay", [0.0, 0.25, 0.5])
def test_slots_die_with_a_supervisor_killed_as_they_start(
    aws_env: dict[str, str], model_server, tmp_path: Path, delay: float
) -> None:
    stack = local_stack.provision(unique("orphans"))
    enqueue(stack, {"video": f"s3://{stack.input_bucket}/none.mp4", "job_id": "bait"})
    env = {**os.environ, **aws_env}
    env.update(
        stack.worker_env(
            FRAMESCALE_WORKER_MODEL_SERVER=model_server.grpc_target,
            FRAMESCALE_WORKER_MODEL_NAME="synthetic",
            FRAMESCALE_WORKER_LABELS=json.dumps(synthetic.LABELS),
            FRAMESCALE_WORKER_SLOTS="2",
            FRAMESCALE_WORKER_WAIT_TIME_SECONDS="1",
            FRAMESCALE_WORKER_HEALTH_PORT="0",
            FRAMESCALE_WORKER_WORK_DIR=str(tmp_path / "work"),
        )
    )
    log = (tmp_path / "worker.log").open("wb")
    supervisor = subprocess.Popen([sys.executable, "-m", "framescale.worker"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        slots: list[int] = []
        while not slots and supervisor.poll() is None and time.monotonic() < deadline:
            slots = slot_pids(supervisor.pid)
            time.sleep(0.002)
        assert slots, f"no slot started; the worker's log:\n{(tmp_path / 'worker.log').read_text()[-2000:]}"
        time.sleep(delay)
        slots = sorted(set(slots) | set(slot_pids(supervisor.pid)))
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(10)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        log.close()
    survivors = lambda: [pid for pid in slots if running(pid)]  # noqa: E731
    wait_for(
        lambda: not survivors(), timeout=30, what=f"slots {survivors()} to die with their supervisor", interval=0.05
    )
    # No orphan took the message: it is still there for a supervised slot.
    assert local_stack.queue_depth(client("sqs"), stack.queue_url) == (1, 0)
