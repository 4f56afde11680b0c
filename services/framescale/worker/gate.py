"""The job-start fence: whether a slot may start a job, made atomic with the job start.

One ``JobGate`` per worker process tree: a shared "open until" time and, per slot, a lock and
an "in a job" flag. A slot starts a job only through ``SlotGate.try_start``: under its own lock
it checks that the gate is open and marks itself in a job. ``JobGate.close`` (the fence) shuts
the gate, then takes and releases every slot's lock, then counts the slots in a job: a slot that
saw the gate open has marked itself by then and is counted; any other sees it shut. So once
``close`` returns, no job can start that its count leaves out, and the count only goes down
until the gate opens again. That is what lets the Lease keeper answer a drain request
"drained" (``framescale.worker.lease``).

The gate opens only *until* a moment on the monotonic clock (the keeper's last Lease renewal
plus its duration, less a margin): a slot checks that moment itself, so a keeper that stalls or
cannot renew never leaves the gate open past the time the operator may judge its Lease dead.
Linux's CLOCK_MONOTONIC is one clock for every process of the machine.

The same code serves slot processes (``multiprocessing`` primitives, ``JobGate.for_processes``)
and threads in one process (``JobGate.for_threads``: unit tests, and fake nodes run in-process).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

# A live slot holds its lock for a few bytecodes; one that cannot be had this long belongs to a
# slot killed inside its critical section (or stopped): the fence then reports that it could not
# fence yet, and the caller retries once the dead slot's cell was reset.
LOCK_WAIT_SECONDS = 0.5
CLOSED = -math.inf


class Primitives(Protocol):
    """What the gate needs of ``multiprocessing`` (a context) or of the threading shim."""

    def Lock(self) -> Any: ...

    def RawValue(self, typecode: str, value: Any) -> Any: ...


class _Box:
    def __init__(self, value: Any) -> None:
        self.value = value


class _Threads:
    """Thread primitives shaped like a multiprocessing context's."""

    def Lock(self) -> Any:
        return threading.Lock()

    def RawValue(self, typecode: str, value: Any) -> Any:
        return _Box(value)


class SlotGate:
    """One slot's side of the fence. Picklable with a process context: hand it to the slot process
    as a ``Process`` argument."""

    def __init__(self, lock: Any, in_job: Any, open_until: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = lock
        self._in_job = in_job
        self._open_until = open_until
        self._clock = clock

    def is_open(self) -> bool:
        """Jobs may start now (a hint for whether to poll: only ``try_start`` decides)."""
        return bool(self._clock() < self._open_until.value)

    def try_start(self) -> bool:
        """Mark this slot in a job if the gate is open, atomically against ``JobGate.close``."""
        with self._lock:
            if not self._clock() < self._open_until.value:
                return False
            self._in_job.value = 1
            return True

    def finish(self) -> None:
        """The job in hand is settled (deleted, dead-lettered or handed back)."""
        with self._lock:
            self._in_job.value = 0

    @property
    def in_job(self) -> bool:
        return bool(self._in_job.value)


class JobGate:
    """The supervisor's side: open until a moment, close (fence), count the jobs in hand."""

    def __init__(self, slots: int, primitives: Primitives, clock: Callable[[], float] = time.monotonic) -> None:
        self._primitives = primitives
        self._clock = clock
        self._open_until = primitives.RawValue("d", CLOSED)
        self._cells: dict[int, SlotGate] = {}
        self._registry = threading.Lock()  # the supervisor's threads: the keeper and the main loop
        for slot in range(slots):
            self.reset(slot)

    @classmethod
    def for_processes(cls, slots: int, context: Any) -> JobGate:
        """Slots in processes of ``context`` (e.g. ``multiprocessing.get_context("spawn")``)."""
        return cls(slots, context)

    @classmethod
    def for_threads(cls, slots: int, clock: Callable[[], float] = time.monotonic) -> JobGate:
        """Slots as threads of this process (tests, in-process fake nodes)."""
        return cls(slots, _Threads(), clock)

    def slot(self, slot: int) -> SlotGate:
        with self._registry:
            return self._cells[slot]

    def reset(self, slot: int) -> SlotGate:
        """A fresh cell for ``slot``, whose process is gone (or not started yet): it holds no job and
        no lock. Give the returned cell to the slot's next process."""
        cell = SlotGate(self._primitives.Lock(), self._primitives.RawValue("b", 0), self._open_until, clock=self._clock)
        with self._registry:
            self._cells[slot] = cell
        return cell

    def open(self, until: float = math.inf) -> None:
        """Let slots start jobs until ``until`` (monotonic seconds)."""
        self._open_until.value = until

    def shut(self) -> None:
        """Shut the gate without waiting for the slots (from a signal handler; ``close`` fences)."""
        self._open_until.value = CLOSED

    @property
    def is_open(self) -> bool:
        return bool(self._clock() < self._open_until.value)

    @property
    def open_until(self) -> float:
        return float(self._open_until.value)

    def close(self) -> int | None:
        """Fence: shut the gate and wait out every slot's critical section. Returns the jobs in hand,
        a count that no job started afterwards is missing from; None when a slot's lock could not be
        had (a slot killed inside it): then nothing may be concluded yet, try again."""
        self._open_until.value = CLOSED
        with self._registry:
            cells = list(self._cells.values())
        for cell in cells:
            if not cell._lock.acquire(timeout=LOCK_WAIT_SECONDS):
                return None
            cell._lock.release()
        return sum(1 for cell in cells if cell.in_job)

    def jobs_in_hand(self) -> int:
        """Slots in a job now (exact once closed; a moment's view while open)."""
        with self._registry:
            return sum(1 for cell in self._cells.values() if cell.in_job)
