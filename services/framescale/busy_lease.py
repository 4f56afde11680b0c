"""The node Lease contract between a node's worker (writer) and the operator (reader).

Version 2, the drain handshake (``LeaseRecord``, ``LeaseLiveness``, the ``*_patch`` builders):

* The worker on each node holds one ``coordination.k8s.io/v1`` Lease for as long as it runs,
  busy or idle, and renews it every third of ``leaseDurationSeconds``. Its annotations say how
  many jobs it has in hand (``active-jobs``) and what it is doing (``worker-state``, a
  ``WorkerState``). A worker that has not renewed for longer than it may (its own monotonic
  clock) takes no new job: "no live Lease" then really means "no job starts on this node".
* Liveness is judged on the reader's clock only: the operator notes, on its own monotonic
  clock, when it last saw ``renewTime`` (or the holder) change (``LeaseLiveness``), the way
  client-go's leader election does. The two machines' clocks are never compared, so a worker
  clock minutes off changes nothing.
* Admission: a worker takes jobs only once the operator has seen its Lease and written
  ``admitted-by`` (the owning pipeline) on it, and only while no drain request stands. So an
  instance the operator chose while it had no Lease yet (booting, or never joined) never starts
  a job, however late its worker comes up: the operator never admits an instance it is removing.
* To take a node out, the operator writes ``drain-request`` (a fresh token), ``drain-mode`` and
  ``drain-requested-by`` on the Lease. The worker stops receiving on every slot, hands back at
  once any message a long poll returns after that, and answers in ``drain-reply``
  (``respond_to_drain``):
  - mode ``if-idle`` (the operator's own scale-in choice): ``"<token> drained"`` when no slot
    had a job, or ``"<token> refused"`` when one had (it then goes on working as before);
  - mode ``finish`` (a termination the operator did not choose, a pipeline being deleted): it
    takes no new job, finishes what it has, then answers ``"<token> drained"``.
  Once it answered "drained" it stays drained, taking nothing, while the request stands. The
  operator terminates (or completes a lifecycle action for) an instance only after a live Lease
  says "drained" with its own token; withdrawing the request (``withdraw_drain_patch``) lets the
  worker take jobs again. A worker that starts and finds a request on its Lease honours it
  before it takes any job.
* Each side merge-patches only its own annotation keys, so neither overwrites the other.

Version 1 (``lease_body``/``read_lease`` with ``expires_at``) compared ``renewTime`` with the
reader's clock; it stays until both sides have moved to version 2.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from framescale import names

MAX_NAME_LENGTH = 253


def lease_name(node_name: str) -> str:
    """A valid Lease name for ``node_name``; long names are shortened with a stable hash."""
    name = f"{names.LEASE_NAME_PREFIX}{node_name}".lower()
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(node_name.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME_LENGTH - 11]}-{digest}"


def format_micro_time(moment: datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def lease_body(
    *,
    node_name: str,
    namespace: str,
    holder: str,
    active_jobs: int,
    duration_seconds: int,
    now: datetime,
    pipeline: str | None = None,
    acquired: datetime | None = None,
) -> dict[str, Any]:
    """The Lease object a worker writes (create or replace)."""
    labels = {names.LEASE_COMPONENT_LABEL: names.LEASE_COMPONENT_VALUE}
    if pipeline:
        labels[names.LEASE_PIPELINE_LABEL] = pipeline
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(node_name),
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                names.LEASE_NODE_ANNOTATION: node_name,
                names.LEASE_ACTIVE_JOBS_ANNOTATION: str(max(0, active_jobs)),
            },
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": int(duration_seconds),
            "acquireTime": format_micro_time(acquired or now),
            "renewTime": format_micro_time(now),
        },
    }


@dataclass(frozen=True)
class LeaseView:
    """What the operator reads from one Lease."""

    node_name: str
    busy: bool
    expires_at: datetime | None
    active_jobs: int


def read_lease(lease: dict[str, Any], now: datetime) -> LeaseView | None:
    """Interpret a Lease; ``None`` when it is not a framescale busy-node Lease."""
    metadata = lease.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(names.LEASE_COMPONENT_LABEL) != names.LEASE_COMPONENT_VALUE:
        return None
    annotations = metadata.get("annotations") or {}
    node_name = annotations.get(names.LEASE_NODE_ANNOTATION)
    if not node_name:
        return None
    spec = lease.get("spec") or {}
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    try:
        active = int(annotations.get(names.LEASE_ACTIVE_JOBS_ANNOTATION, "0"))
    except (TypeError, ValueError):
        active = 0
    if renewed is None or not isinstance(duration, int) or duration <= 0:
        return LeaseView(node_name=node_name, busy=False, expires_at=None, active_jobs=active)
    expires_at = renewed + timedelta(seconds=duration)
    busy = active > 0 and now < expires_at
    return LeaseView(node_name=node_name, busy=busy, expires_at=expires_at, active_jobs=active)


# ---------------------------------------------------------------------------- version 2


class WorkerState(StrEnum):
    """What the worker on a node is doing, as it writes it in ``worker-state``."""

    STARTING = "starting"  # up, not yet sure of its Lease: takes no job
    IDLE = "idle"  # taking jobs, none in hand
    BUSY = "busy"  # at least one job in hand
    DRAINING = "draining"  # a finish request stands: takes no new job, finishes those in hand
    DRAINED = "drained"  # answered a drain request "drained": no job in hand, none will start
    STOPPING = "stopping"  # shutting down (SIGTERM): takes no new job, hands back what it must


class DrainVerdict(StrEnum):
    DRAINED = "drained"
    REFUSED = "refused"


class DrainMode(StrEnum):
    IF_IDLE = "if-idle"  # refuse when a job is in hand (the operator then picks another node)
    FINISH = "finish"  # take nothing new, finish what is in hand, then answer drained


def respond_to_drain(mode: DrainMode, active_jobs: int) -> DrainVerdict | None:
    """The worker's answer once every slot is fenced (none can start a job) and ``active_jobs``
    jobs are still in hand; None: no answer yet (finishing)."""
    if active_jobs <= 0:
        return DrainVerdict.DRAINED
    return DrainVerdict.REFUSED if mode == DrainMode.IF_IDLE else None


@dataclass(frozen=True)
class DrainReply:
    token: str
    verdict: DrainVerdict

    def render(self) -> str:
        return f"{self.token} {self.verdict.value}"

    @classmethod
    def parse(cls, value: str | None) -> DrainReply | None:
        if not value:
            return None
        token, _, verdict = value.strip().partition(" ")
        try:
            return cls(token=token, verdict=DrainVerdict(verdict)) if token else None
        except ValueError:
            return None


def new_drain_token() -> str:
    """A token no earlier request has used: a reply names the request it answers."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class LeaseRecord:
    """One node Lease as either side reads it; no clock involved (see ``LeaseLiveness``)."""

    name: str
    namespace: str
    node_name: str
    pipeline: str | None
    holder: str
    duration_seconds: int | None
    renew_time: str | None  # as written: only its changes matter to the reader
    active_jobs: int
    state: WorkerState | None  # None: a version-1 writer, or a value this reader does not know
    admitted_by: str | None
    drain_request: str | None
    drain_mode: DrainMode  # of the standing request (if-idle when unset or unknown)
    drain_requested_by: str | None
    drain_reply: DrainReply | None

    @property
    def busy(self) -> bool:
        """The worker says it has a job in hand (whether the Lease is live is the reader's call)."""
        return self.active_jobs > 0 or self.state == WorkerState.BUSY

    @property
    def renewal_marker(self) -> tuple[str, str | None]:
        """What changes at each renewal: a new value means the worker was alive to write it."""
        return (self.holder, self.renew_time)

    def drained_for(self, token: str) -> bool:
        """The worker answered this very request "drained", and says it is still drained and idle."""
        return (
            self.drain_request == token
            and self.drain_reply == DrainReply(token, DrainVerdict.DRAINED)
            and self.state == WorkerState.DRAINED
            and self.active_jobs == 0
        )

    def refused(self, token: str) -> bool:
        return self.drain_request == token and self.drain_reply == DrainReply(token, DrainVerdict.REFUSED)

    @property
    def may_take_jobs(self) -> bool:
        """The Lease lets its worker start a job: admitted, no drain request, not stopping. (The
        worker also needs to have renewed it recently, on its own clock.)"""
        return bool(self.admitted_by) and self.drain_request is None and self.state != WorkerState.STOPPING


def parse_lease(lease: Mapping[str, Any]) -> LeaseRecord | None:
    """Interpret a Lease; ``None`` when it is not a framescale node Lease."""
    metadata = lease.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(names.LEASE_COMPONENT_LABEL) != names.LEASE_COMPONENT_VALUE:
        return None
    annotations = metadata.get("annotations") or {}
    node_name = annotations.get(names.LEASE_NODE_ANNOTATION)
    if not node_name:
        return None
    spec = lease.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    try:
        active = max(0, int(annotations.get(names.LEASE_ACTIVE_JOBS_ANNOTATION, "0")))
    except (TypeError, ValueError):
        active = 0
    try:
        state: WorkerState | None = WorkerState(annotations.get(names.LEASE_STATE_ANNOTATION, ""))
    except ValueError:
        state = None
    renew = spec.get("renewTime") or spec.get("acquireTime")
    try:
        mode = DrainMode(annotations.get(names.LEASE_DRAIN_MODE_ANNOTATION) or DrainMode.IF_IDLE.value)
    except ValueError:
        mode = DrainMode.IF_IDLE
    return LeaseRecord(
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "")),
        node_name=str(node_name),
        pipeline=labels.get(names.LEASE_PIPELINE_LABEL),
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=duration
        if isinstance(duration, int) and not isinstance(duration, bool) and duration > 0
        else None,
        renew_time=str(renew) if renew is not None else None,
        active_jobs=active,
        state=state,
        admitted_by=annotations.get(names.LEASE_ADMITTED_BY_ANNOTATION) or None,
        drain_request=annotations.get(names.LEASE_DRAIN_REQUEST_ANNOTATION) or None,
        drain_mode=mode,
        drain_requested_by=annotations.get(names.LEASE_DRAIN_REQUESTED_BY_ANNOTATION) or None,
        drain_reply=DrainReply.parse(annotations.get(names.LEASE_DRAIN_REPLY_ANNOTATION)),
    )


def worker_patch(
    *,
    node_name: str,
    namespace: str,
    holder: str,
    duration_seconds: int,
    now: datetime,
    active_jobs: int,
    state: WorkerState,
    pipeline: str | None = None,
    acquired: datetime | None = None,
    drain_reply: DrainReply | None = None,
) -> dict[str, Any]:
    """The worker's renewal: a merge patch of only the worker's own keys (also a valid body to
    create the Lease with). ``drain_reply`` None leaves an earlier reply where it is."""
    body = lease_body(
        node_name=node_name,
        namespace=namespace,
        holder=holder,
        active_jobs=active_jobs,
        duration_seconds=duration_seconds,
        now=now,
        pipeline=pipeline,
        acquired=acquired,
    )
    annotations = body["metadata"]["annotations"]
    annotations[names.LEASE_STATE_ANNOTATION] = state.value
    if drain_reply is not None:
        annotations[names.LEASE_DRAIN_REPLY_ANNOTATION] = drain_reply.render()
    return body


def admit_patch(owner: str) -> dict[str, Any]:
    """The operator admits the node's worker (``owner``: the pipeline, ``namespace/name``)."""
    return {"metadata": {"annotations": {names.LEASE_ADMITTED_BY_ANNOTATION: owner}}}


def drain_request_patch(token: str, requested_by: str, mode: DrainMode = DrainMode.IF_IDLE) -> dict[str, Any]:
    """The operator's request that the node's worker drain (a merge patch of the operator's keys)."""
    return {
        "metadata": {
            "annotations": {
                names.LEASE_DRAIN_REQUEST_ANNOTATION: token,
                names.LEASE_DRAIN_MODE_ANNOTATION: mode.value,
                names.LEASE_DRAIN_REQUESTED_BY_ANNOTATION: requested_by,
            }
        }
    }


def withdraw_drain_patch() -> dict[str, Any]:
    """The operator takes its request back: the worker may take jobs again."""
    return {
        "metadata": {
            "annotations": {
                names.LEASE_DRAIN_REQUEST_ANNOTATION: None,
                names.LEASE_DRAIN_MODE_ANNOTATION: None,
                names.LEASE_DRAIN_REQUESTED_BY_ANNOTATION: None,
            }
        }
    }


class LeaseLiveness:
    """When each Lease was last seen renewed, on this process's own monotonic clock.

    A Lease is live while less than its ``leaseDurationSeconds`` has passed since its renewal
    marker (holder, ``renewTime``) was last seen to change. A Lease first seen counts as renewed
    then: after a restart of the reader, a dead worker's node is judged dead one full duration
    later, never sooner. Thread-safe (kopf's watch and the reconcile threads both call it).
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[tuple[str, str | None], float]] = {}
        self._lock = threading.Lock()

    def observe(self, record: LeaseRecord, monotonic: float) -> None:
        key = (record.namespace, record.name)
        with self._lock:
            previous = self._seen.get(key)
            if previous is None or previous[0] != record.renewal_marker:
                self._seen[key] = (record.renewal_marker, monotonic)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._seen.pop((namespace, name), None)

    def last_renewed(self, record: LeaseRecord) -> float | None:
        """The monotonic time this Lease's current renewal was first seen (None: never observed)."""
        with self._lock:
            seen = self._seen.get((record.namespace, record.name))
        if seen is None or seen[0] != record.renewal_marker:
            return None
        return seen[1]

    def expires_at(self, record: LeaseRecord) -> float | None:
        """The monotonic time at which the Lease stops being live unless renewed (None: not live)."""
        renewed = self.last_renewed(record)
        if renewed is None or record.duration_seconds is None:
            return None
        return renewed + record.duration_seconds

    def live(self, record: LeaseRecord, monotonic: float) -> bool:
        """Seen renewed within its duration. A record whose renewal was not observed is not live:
        callers observe every record they read before asking."""
        expiry = self.expires_at(record)
        return expiry is not None and monotonic < expiry
