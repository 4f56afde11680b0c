"""When a pipeline's reconcile pass is due, and when busy Leases change. In memory, no I/O.

kopf timers have one interval for every object, but each VideoPipeline has its own
``pollIntervalSeconds``; so a short timer ticks for each pipeline and ``PipelineClock``
says whether this tick should do a pass, and which halves it runs:

* the scaling half (read the queue, size the group) when the poll interval has elapsed, the
  spec changed, or its retry after a retryable failure is due;
* the protection half (busy Leases -> instance and Node protection) on every pass, so also
  when a busy Lease flipped (busy/idle/deleted), is due to expire, every protection resync
  interval, or when its own retry is due.

Each half backs off on its own: a throttled queue read delays the next queue read, never the
release of an expired Lease's node. The timer itself is never paused (a ``TemporaryError``
would make kopf sleep through Lease changes), so the retry delay lives here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from framescale import busy_lease
from framescale.backoff import doubled

MAX_BACKOFF_SECONDS = 300.0


class Due:
    FIRST = "first pass"
    SPEC = "spec changed"
    POLL = "poll interval"
    RETRY = "retry after a failure"
    LEASES = "busy Leases changed"
    EXPIRY = "a busy Lease expired"
    RESYNC = "protection resync"


@dataclass(frozen=True)
class Pass:
    """Why a pass is due, and whether it reads the queue and sizes the group (else: protection only)."""

    why: str
    scale: bool


def backoff(base_delay: float, failures: int) -> float:
    """The delay after ``failures`` retryable failures in a row: doubling from ``base_delay``, capped."""
    return doubled(base_delay, failures - 1, MAX_BACKOFF_SECONDS)


def poll_interval(spec: Mapping[str, Any], default: float) -> float:
    """The spec's pollIntervalSeconds, or ``default`` when it is absent or unusable (the pass reports it)."""
    value = (spec.get("autoscaling") or {}).get("pollIntervalSeconds")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return default
    return float(value)


@dataclass
class Cadence:
    """One half of the pass: when it last ran, and its backoff after retryable failures in a row."""

    last_run: float | None = None
    failures: int = 0
    retry_at: float | None = None

    def due(self, monotonic: float, interval: float) -> str | None:
        if self.last_run is None:
            return Due.FIRST
        if self.retry_at is not None:  # backing off: the retry time replaces the interval
            return Due.RETRY if monotonic >= self.retry_at else None
        return Due.POLL if monotonic - self.last_run >= interval else None

    def ran(self, monotonic: float, *, retry: bool, base_delay: float) -> float | None:
        """Record a run; after a retryable failure, the delay before the retry (doubling, capped)."""
        self.last_run = monotonic
        if not retry:
            self.failures, self.retry_at = 0, None
            return None
        self.failures += 1
        delay = backoff(base_delay, self.failures)
        self.retry_at = monotonic + delay
        return delay


@dataclass
class PipelineClock:
    """Per-pipeline memory between ticks (lost on restart, which only means an early pass)."""

    scaling: Cadence = field(default_factory=Cadence)
    protection: Cadence = field(default_factory=Cadence)
    generation: int | None = None
    lease_epoch: int = -1
    next_expiry: datetime | None = None

    def due(
        self,
        *,
        monotonic: float,
        now: datetime,
        poll_interval: float,
        resync_interval: float,
        generation: int | None,
        lease_epoch: int,
    ) -> Pass | None:
        """The pass due now, or None."""
        if self.scaling.last_run is None:
            return Pass(Due.FIRST, scale=True)
        if generation != self.generation:
            return Pass(Due.SPEC, scale=True)
        why = self.scaling.due(monotonic, poll_interval)
        if why is not None:
            return Pass(why, scale=True)
        if lease_epoch != self.lease_epoch:
            return Pass(Due.LEASES, scale=False)
        if self.next_expiry is not None and now >= self.next_expiry:
            return Pass(Due.EXPIRY, scale=False)
        why = self.protection.due(monotonic, resync_interval)
        if why is not None:
            return Pass(Due.RESYNC if why == Due.POLL else why, scale=False)
        return None

    def ran(
        self,
        due: Pass,
        *,
        monotonic: float,
        generation: int | None,
        lease_epoch: int,
        next_expiry: datetime | None,
        scaling_retry: bool,
        protection_retry: bool,
        base_delay: float,
    ) -> float | None:
        """Record a pass; returns the delay before the earliest retry it scheduled, if any."""
        delays = [self.protection.ran(monotonic, retry=protection_retry, base_delay=base_delay)]
        if due.scale:
            delays.append(self.scaling.ran(monotonic, retry=scaling_retry, base_delay=base_delay))
        self.generation = generation
        self.lease_epoch = lease_epoch
        self.next_expiry = next_expiry
        scheduled = [delay for delay in delays if delay is not None]
        return min(scheduled) if scheduled else None


def lease_signature(record: busy_lease.LeaseRecord) -> tuple[Any, ...]:
    """What the plan reads of a Lease, renewals aside: a change of it calls for a pass."""
    return (
        record.busy,
        record.state,
        record.admitted_by,
        record.drain_request,
        record.drain_reply,
    )


class LeaseWatch:
    """Counts changes of what the plan reads on any Lease (``lease_signature``: busy/idle, worker
    state, admission, a drain request or reply); renewals are not changes. A bool works as a
    signature too (busy or not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[tuple[str, str], Any] = {}
        self.epoch = 0

    def observe(self, namespace: str, name: str, signature: Any) -> bool:
        """Record a Lease's state (None: deleted); True when it changed."""
        key = (namespace, name)
        with self._lock:
            previous = self._busy.get(key)
            if signature is None:
                self._busy.pop(key, None)
            else:
                self._busy[key] = signature
            # Idle, deleted and unknown all mean nothing to act on: only a real change counts.
            changed = (previous or None) != (signature or None)
            if changed:
                self.epoch += 1
            return changed
