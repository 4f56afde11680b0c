"""Helper processes (moto, the model server, workers) never outlive whoever started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framescale.local.processes import ManagedProcess

pytestmark = [pytest.mark.integration]

_PARENT = """
import sys, time
from framescale.local.processes import ManagedProcess
child = ManagedProcess("sleeper", ["sleep", "300"]).start()
print(child.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _command(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]


def test_the_child_is_the_command_itself() -> None:
    child = ManagedProcess("sleeper", ["sleep", "300"]).start()
    try:
        # The guard execs into the command (a moment after start): signals sent to .pid reach it.
        deadline = time.monotonic() + 10
        while _command(child.pid) != b"sleep" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _command(child.pid) == b"sleep"
    finally:
        child.stop()
    assert not _alive(child.pid)


def test_a_parent_killed_outright_takes_its_children_with_it() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child_pid), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
