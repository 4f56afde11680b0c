"""When a pipeline's reconcile pass is due, and when busy Leases change. In memory, no I/O.

kopf timers have one interval for every object, but each VideoPipeline has its own
``pollIntervalSeconds``; so a short timer ticks for each pipeline and ``PipelineClock``
says whether this tick should do a pass: the poll interval has elapsed, the spec changed, a
busy Lease flipped (busy/idle/deleted), or a busy Lease is due to expire.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime


class Due:
    FIRST = "first pass"
    POLL = "poll interval"
    SPEC = "spec changed"
    LEASES = "busy Leases changed"
    EXPIRY = "a busy Lease expired"


@dataclass
class PipelineClock:
    """Per-pipeline memory between ticks (lost on restart, which only means an early pass)."""

    last_run: float | None = None
    last_audit: float | None = None
    last_generation: int | None = None
    lease_epoch: int = -1
    next_expiry: datetime | None = None
    failures: int = 0

    def backoff(self, base: float, cap: float = 300.0) -> float:
        """Delay before retrying after the latest of ``failures`` retryable failures in a row."""
        return min(cap, base * 2 ** max(0, self.failures - 1))

    def due(
        self,
        *,
        monotonic: float,
        now: datetime,
        poll_interval: float,
        generation: int | None,
        lease_epoch: int,
    ) -> str | None:
        """Why a pass is due now, or None."""
        if self.last_run is None:
            return Due.FIRST
        if generation != self.last_generation:
            return Due.SPEC
        if lease_epoch != self.lease_epoch:
            return Due.LEASES
        if self.next_expiry is not None and now >= self.next_expiry:
            return Due.EXPIRY
        if monotonic - self.last_run >= poll_interval:
            return Due.POLL
        return None

    def audit_due(self, *, monotonic: float, audit_interval: float) -> bool:
        return self.last_audit is None or monotonic - self.last_audit >= audit_interval

    def ran(
        self,
        *,
        monotonic: float,
        generation: int | None,
        lease_epoch: int,
        next_expiry: datetime | None,
        audited: bool,
    ) -> None:
        self.last_run = monotonic
        self.last_generation = generation
        self.lease_epoch = lease_epoch
        self.next_expiry = next_expiry
        if audited:
            self.last_audit = monotonic


class LeaseWatch:
    """Counts changes of any busy Lease's busy state; renewals of a busy Lease are not changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[tuple[str, str], bool] = {}
        self.epoch = 0

    def observe(self, namespace: str, name: str, busy: bool | None) -> bool:
        """Record a Lease's state (None: deleted); True when it changed."""
        key = (namespace, name)
        with self._lock:
            previous = self._busy.get(key)
            if busy is None:
                self._busy.pop(key, None)
            else:
                self._busy[key] = busy
            changed = bool(previous) != bool(busy)  # idle, deleted and unknown all mean not busy
            if changed:
                self.epoch += 1
            return changed
