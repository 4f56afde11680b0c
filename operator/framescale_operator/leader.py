"""Leader election over a ``coordination.k8s.io`` Lease: exactly one operator replica acts.

The client-go way (``tools/leaderelection``), in two halves:

* ``Elector`` (pure): given what the Lease says and this process's monotonic clock, decide what
  to do: acquire, renew, or follow. Another holder's Lease counts as expired only when this
  process has seen its ``renewTime`` (or holder) unchanged for ``leaseDurationSeconds`` by its own
  clock, never by comparing timestamps written on another machine. A leader that has not renewed
  successfully for ``renew_deadline`` stops acting (before anyone else may take over, since the
  deadline is shorter than the Lease duration).
* ``LeaderElection`` (wiring): a thread that reads the Lease every ``retry_period`` and writes it
  with the read ``resourceVersion`` as a precondition (a 409 means someone else won the race). On
  a clean stop the leader releases the Lease (empty holder, one-second duration), so the other
  replica takes over at its next try instead of after the Lease duration.

``is_leader()`` is what the handlers ask before a pass: a follower makes no AWS call and writes
nothing to the pipelines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from framescale import busy_lease

log = logging.getLogger(__name__)


class Step(StrEnum):
    ACQUIRE = "acquire"  # no Lease, a released one, or another holder's that expired by our clock
    RENEW = "renew"  # ours
    FOLLOW = "follow"  # another holder's, alive


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of the Lease the election reads."""

    holder: str
    renew_time: str
    duration_seconds: int
    transitions: int
    resource_version: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> LeaseRecord:
        spec = body.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        version = (body.get("metadata") or {}).get("resourceVersion")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            duration_seconds=duration if isinstance(duration, int) and duration > 0 else 0,
            transitions=transitions if isinstance(transitions, int) and transitions >= 0 else 0,
            resource_version=str(version) if version is not None else None,
        )


@dataclass
class Elector:
    """The decision, on this process's monotonic clock."""

    identity: str
    lease_duration: float
    renew_deadline: float
    _seen: tuple[str, str] | None = None  # (holder, renewTime) last observed
    _seen_at: float = 0.0  # when it last changed, by our clock
    _renewed_at: float | None = None  # our last successful acquire/renew

    def step(self, record: LeaseRecord | None, now: float) -> Step:
        if record is None or not record.holder:
            return Step.ACQUIRE
        if record.holder == self.identity:
            return Step.RENEW
        observed = (record.holder, record.renew_time)
        if observed != self._seen:
            self._seen, self._seen_at = observed, now
            return Step.FOLLOW
        duration = record.duration_seconds or self.lease_duration
        return Step.ACQUIRE if now - self._seen_at > duration else Step.FOLLOW

    def succeeded(self, now: float) -> None:
        self._renewed_at = now

    def lost(self) -> None:
        self._renewed_at = None

    def leading(self, now: float) -> bool:
        return self._renewed_at is not None and now - self._renewed_at < self.renew_deadline


def lease_spec(identity: str, duration: int, now: datetime, *, transitions: int, acquired: bool) -> dict[str, Any]:
    stamp = busy_lease.format_micro_time(now)
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": duration,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }
    if acquired:
        spec["acquireTime"] = stamp
    return spec


class LeaseApi(Protocol):
    def read(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create(self, namespace: str, body: dict[str, Any]) -> None: ...

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None: ...


class Conflict(Exception):
    """The Lease changed since it was read (409), or was created meanwhile."""


class LeaderElection:
    """Runs the election in a thread; ``is_leader()`` may be asked from any thread."""

    def __init__(
        self,
        api: LeaseApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: int,
        renew_deadline: float,
        retry_period: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "leader election needs 0 < retryPeriod < renewDeadline < leaseDuration "
                f"(got {retry_period}, {renew_deadline}, {lease_duration})"
            )
        self.api, self.namespace, self.name = api, namespace, name
        self.identity, self.lease_duration, self.retry_period = identity, lease_duration, retry_period
        self.elector = Elector(identity=identity, lease_duration=lease_duration, renew_deadline=renew_deadline)
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._was_leading = False

    def is_leader(self) -> bool:
        with self._lock:
            return self.elector.leading(self.clock())

    def try_once(self) -> None:
        """One read and, if called for, one conditional write."""
        try:
            body = self.api.read(self.namespace, self.name)
        except Exception as error:  # the API is down: keep leading only until the deadline
            log.warning("leader Lease %s/%s not read: %s", self.namespace, self.name, error)
            self._report()
            return
        record = LeaseRecord.from_body(body) if body is not None else None
        with self._lock:
            step = self.elector.step(record, self.clock())
        if step is not Step.FOLLOW:
            try:
                self._write(step, record)
            except Conflict:
                with self._lock:
                    self.elector.lost()
            except Exception as error:  # retried at the next period
                log.warning("leader Lease %s/%s not written: %s", self.namespace, self.name, error)
            else:
                with self._lock:
                    self.elector.succeeded(self.clock())
        elif self._was_leading:
            with self._lock:
                self.elector.lost()
        self._report()

    def _write(self, step: Step, record: LeaseRecord | None) -> None:
        now = datetime.now(UTC)
        if record is None:
            spec = lease_spec(self.identity, self.lease_duration, now, transitions=0, acquired=True)
            self.api.create(
                self.namespace,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": spec,
                },
            )
            return
        acquiring = step is Step.ACQUIRE
        transitions = record.transitions + (1 if acquiring else 0)
        spec = lease_spec(self.identity, self.lease_duration, now, transitions=transitions, acquired=acquiring)
        self.api.patch(
            self.namespace, self.name, {"metadata": {"resourceVersion": record.resource_version}, "spec": spec}
        )

    def _report(self) -> None:
        leading = self.is_leader()
        if leading != self._was_leading:
            log.info("%s leadership of %s/%s", "acquired" if leading else "lost", self.namespace, self.name)
            self._was_leading = leading

    def run(self) -> None:
        while not self._stop.is_set():
            self.try_once()
            self._stop.wait(self.retry_period)

    def start(self) -> LeaderElection:
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop; a leader releases the Lease so the other replica need not wait for it to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.is_leader():
            return
        with self._lock:
            self.elector.lost()
        try:
            body = self.api.read(self.namespace, self.name)
            record = LeaseRecord.from_body(body) if body is not None else None
            if record is not None and record.holder == self.identity:
                spec = {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "renewTime": busy_lease.format_micro_time(datetime.now(UTC)),
                }
                self.api.patch(
                    self.namespace, self.name, {"metadata": {"resourceVersion": record.resource_version}, "spec": spec}
                )
                log.info("released leadership of %s/%s", self.namespace, self.name)
        except Exception as error:  # the other replica then waits out the Lease
            log.warning("leader Lease %s/%s not released: %s", self.namespace, self.name, error)
