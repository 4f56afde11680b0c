"""Where a slot process starts: tied to its supervisor before anything slow happens.

A slot must never outlive its supervisor (it would take jobs nobody supervises). Linux's
parent-death signal ends it when the supervisor dies, but only once it is asked for, and a
spawned slot spends its first second or more (longer under load) importing boto3, gRPC,
OpenCV and numpy. So this module imports nothing but the standard library and
framescale.lifecycle: the spawned process unpickles its target from here, asks for the
signal at once, then checks that the supervisor did not die before the request took effect
(it would have been reparented), and checks again after the slow imports. The slot's loop
goes on checking before each job (``SlotWorker.orphaned``).
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from framescale import lifecycle

ORPHAN_EXIT_CODE = 3


def orphaned(parent_pid: int) -> bool:
    """True once the process that spawned this one is gone (this one was reparented)."""
    return os.getppid() != parent_pid


def main(  # noqa: PLR0917 - multiprocessing hands a process its arguments by position
    parent_pid: int,
    settings_data: dict[str, Any],
    slot: int,
    dead_letter_queue_url: str,
    events: Connection,
    gate: Any,  # framescale.worker.gate.SlotGate (that module imports only the standard library)
) -> None:
    lifecycle.die_with_parent(signal.SIGKILL)
    if orphaned(parent_pid):
        os._exit(ORPHAN_EXIT_CODE)  # the supervisor died before the signal was armed
    from framescale.worker.service import slot_main  # the slow imports

    if orphaned(parent_pid):
        os._exit(ORPHAN_EXIT_CODE)
    slot_main(settings_data, slot, dead_letter_queue_url, events, gate, parent_pid=parent_pid)
