"""The Lease keeper: holds this node's Lease for as long as the worker runs, and drives the gate.

The contract is framescale.busy_lease (version 2, the drain handshake); the job-start fence is
framescale.worker.gate. The keeper is one thread of the supervisor (or of a fake node) that, every
``poll_seconds``:

1. reads the node's Lease (the operator's keys: ``admitted-by``, ``drain-request``, its mode);
2. answers a drain request it has not answered yet: it closes the gate (the fence, which counts
   the jobs in hand and lets none start that the count misses), then ``respond_to_drain``:
   ``if-idle`` is answered "drained" when the count is 0, else "refused" and the gate reopens;
   ``finish`` waits, the gate shut, until the count is 0 and then answers "drained". Once
   drained it stays so while the request stands; a withdrawn request reopens the gate;
3. renews the Lease (a merge patch of the worker's own keys; create on 404) every third of its
   duration, and at once when what it says changes (jobs in hand, state, a reply);
4. opens the gate, when the Lease admits this node and no request stands (or one was refused),
   only until ``last successful renewal + duration - margin`` on the monotonic clock. The slots
   check that moment themselves, so a keeper that cannot renew, or stalls, stops new jobs by
   itself before the operator may judge the Lease dead.

The wall clock is only written (``renewTime``, ``acquireTime``), never compared with anything: the
operator judges liveness by when it saw ``renewTime`` change, on its own clock.

The worker needs get, create and patch on Leases in its own namespace, nothing else.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from framescale import busy_lease, kubeconfig
from framescale.busy_lease import DrainReply, DrainVerdict, LeaseRecord, WorkerState
from framescale.worker.gate import JobGate

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
API_TIMEOUT_SECONDS = 5.0


def renewal_margin(duration_seconds: float) -> float:
    """How long before its Lease could lapse the gate shuts: room for a job start in flight and
    for the operator reading the Lease a little early, never less than a second."""
    return max(1.0, duration_seconds / 10.0)


class LeaseMissing(Exception):
    """The Lease does not exist (a patch answered 404)."""


class LeaseApi(Protocol):
    """The three Lease calls the keeper makes, on plain dicts (the Lease as JSON)."""

    def read(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The Lease, or None when there is none."""
        ...

    def patch(self, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch it and return it as stored; ``LeaseMissing`` when there is none."""
        ...

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...


class KubeLeaseApi:
    """``LeaseApi`` over the kubernetes package's CoordinationV1Api; answers read as JSON, so the
    keeper sees the Lease exactly as the API server stores it."""

    def __init__(self, coordination: Any, timeout: float = API_TIMEOUT_SECONDS) -> None:
        self.coordination = coordination
        self.timeout = timeout

    @classmethod
    def from_kubeconfig(cls, path: str | None = None) -> KubeLeaseApi:
        """Its own client: in-cluster config (path None), else the kubeconfig at ``path`` (or
        kubectl's). Each fake node of a test gets its own."""
        from kubernetes import client, config

        configuration = client.Configuration()
        if path is None:
            kubeconfig.load(configuration)
        else:
            config.load_kube_config(config_file=path, client_configuration=configuration)
        return cls(client.CoordinationV1Api(client.ApiClient(configuration)))

    def _call(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        response = getattr(self.coordination, method)(
            *args, _preload_content=False, _request_timeout=self.timeout, **kwargs
        )
        return dict(json.loads(response.data))

    def read(self, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call("read_namespaced_lease", name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch(self, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call("patch_namespaced_lease", name, namespace, body, _content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                raise LeaseMissing(name) from None
            raise

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("create_namespaced_lease", namespace, body)


def kubernetes_lease_api() -> KubeLeaseApi:
    """The Lease API from in-cluster config, else the local kubeconfig."""
    return KubeLeaseApi.from_kubeconfig()


@dataclass(frozen=True)
class LeaseIdentity:
    """Whose Lease this is."""

    node_name: str
    namespace: str
    holder: str  # the pod's name: the Lease's holderIdentity
    pipeline: str | None = None

    @property
    def lease_name(self) -> str:
        return busy_lease.lease_name(self.node_name)


class KeeperMetrics(Protocol):
    """The keeper's two counters (framescale.worker.metrics.WorkerMetrics has them)."""

    def drain_answered(self, verdict: DrainVerdict) -> None: ...

    def lease_renew_failed(self) -> None: ...


class _NoMetrics:
    def drain_answered(self, verdict: DrainVerdict) -> None:
        pass

    def lease_renew_failed(self) -> None:
        pass


@dataclass(frozen=True)
class _Said:
    """What a renewal wrote (a change of any of it is written at once)."""

    active_jobs: int
    state: WorkerState
    reply: DrainReply | None


class LeaseKeeper:
    def __init__(
        self,
        api: LeaseApi,
        gate: JobGate,
        identity: LeaseIdentity,
        *,
        duration_seconds: float,
        poll_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: KeeperMetrics | None = None,
        on_answer: Callable[[DrainReply, int], None] | None = None,
    ) -> None:
        """``monotonic`` must be the clock the gate's slots check (CLOCK_MONOTONIC in production);
        ``wall`` only stamps what the Lease says. ``on_answer(reply, jobs_in_hand)`` hears each
        drain answer as it is decided (fake nodes record them)."""
        self.api = api
        self.gate = gate
        self.identity = identity
        self.duration_seconds = duration_seconds
        self.poll_seconds = poll_seconds
        self.monotonic = monotonic
        self.wall = wall
        self.metrics = metrics or _NoMetrics()
        self.on_answer = on_answer
        self.margin = renewal_margin(duration_seconds)
        self.record: LeaseRecord | None = None  # the Lease as last read or written
        self.state = WorkerState.STARTING
        self.renewed_at: float | None = None  # monotonic time a successful renewal was sent
        self.renewals = 0
        self.renew_failures = 0
        self.answers: list[DrainReply] = []  # every reply decided, in order (tests, fake nodes)
        self._answered: dict[str, DrainVerdict] = {}  # replies to the request standing now
        self._reply: DrainReply | None = None  # decided, not yet written
        self._said: _Said | None = None
        self._acquired: datetime | None = None
        self._stopping = False
        self._lock = threading.Lock()  # one tick at a time (the thread, and stop())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life

    def start(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._run, name=f"lease-keeper-{self.identity.node_name}", daemon=True)
        self._thread.start()
        return self

    def poke(self) -> None:
        """A job started or finished: say so now rather than at the next poll."""
        self._wake.set()

    def begin_stopping(self) -> None:
        """Shutting down: the gate stays shut from now on and the Lease says "stopping"."""
        self._stopping = True
        self.gate.shut()
        self._wake.set()

    def stop(self, final_tick: bool = True) -> None:
        """End the thread; with ``final_tick`` write the Lease once more ("stopping", the jobs left)."""
        self.begin_stopping()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=API_TIMEOUT_SECONDS * 3)
        if final_tick:
            self.tick()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # never let the keeper die: the gate would then lapse shut for good
                log.exception("lease keeper pass failed; trying again", extra={"node": self.identity.node_name})
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    # ------------------------------------------------------------------ one pass

    def tick(self) -> None:
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        self._read()
        may_open = self._decide()
        self._renew()
        if may_open and self.renewed_at is not None and not self._stopping:
            self.gate.open(until=self.renewed_at + self.duration_seconds - self.margin)
        elif not may_open:
            self.gate.shut()

    def _read(self) -> None:
        try:
            body = self.api.read(self.identity.lease_name, self.identity.namespace)
        except Exception as error:
            # Decide on what was last seen; the gate lapses shut by itself if this goes on.
            log.warning("could not read the node Lease", extra={"error": str(error), "node": self.identity.node_name})
            return
        self.record = busy_lease.parse_lease(body) if body is not None else None

    def _decide(self) -> bool:
        """Answer a standing drain request and set ``state``; whether the gate may open."""
        if self._stopping:
            self.state = WorkerState.STOPPING
            return False
        record = self.record
        request = record.drain_request if record is not None else None
        admitted = record is not None and bool(record.admitted_by)
        if request is None:
            if self._answered:
                log.info("drain request withdrawn; taking jobs again", extra={"node": self.identity.node_name})
            self._answered.clear()
            return self._working(admitted)
        assert record is not None
        answered = self._answered.get(request)
        if answered is DrainVerdict.DRAINED:
            self.state = WorkerState.DRAINED  # stays drained while the request stands
            return False
        if answered is DrainVerdict.REFUSED:
            return self._working(admitted)
        # A request not answered yet: the fence first, so that the count misses no job start.
        in_hand = self.gate.close()
        if in_hand is None:  # a dead slot's lock: nothing can be concluded until it is reset
            return False
        verdict = busy_lease.respond_to_drain(record.drain_mode, in_hand)
        if verdict is None:  # finish: no new job, wait for those in hand
            self.state = WorkerState.DRAINING
            return False
        self._answered = {request: verdict}
        self._reply = DrainReply(request, verdict)
        self.answers.append(self._reply)
        self.metrics.drain_answered(verdict)
        if self.on_answer is not None:
            self.on_answer(self._reply, in_hand)
        log.info(
            "drain request answered",
            extra={"node": self.identity.node_name, "verdict": verdict.value, "mode": record.drain_mode.value},
        )
        if verdict is DrainVerdict.DRAINED:
            self.state = WorkerState.DRAINED
            return False
        return self._working(admitted)

    def _working(self, admitted: bool) -> bool:
        if not admitted:
            self.state = WorkerState.STARTING
            return False
        self.state = WorkerState.BUSY if self.gate.jobs_in_hand() else WorkerState.IDLE
        return True

    def _renew(self) -> None:
        active = 0 if self.state is WorkerState.DRAINED else self.gate.jobs_in_hand()
        said = _Said(active, self.state, self._reply or (self._said.reply if self._said else None))
        now = self.monotonic()
        due = self.renewed_at is None or now >= self.renewed_at + self.duration_seconds / 3.0
        if not due and said == self._said:
            return
        wall = self.wall()
        body = busy_lease.worker_patch(
            node_name=self.identity.node_name,
            namespace=self.identity.namespace,
            holder=self.identity.holder,
            duration_seconds=max(1, round(self.duration_seconds)),
            now=wall,
            active_jobs=active,
            state=self.state,
            pipeline=self.identity.pipeline,
            acquired=self._acquired or wall,
            drain_reply=self._reply,
        )
        try:
            try:
                stored = self.api.patch(self.identity.lease_name, self.identity.namespace, body)
            except LeaseMissing:
                stored = self.api.create(self.identity.namespace, body)
        except Exception as error:
            self.renew_failures += 1
            self.metrics.lease_renew_failed()
            log.warning(
                "could not renew the node Lease; no new job starts once it could lapse",
                extra={"error": str(error), "node": self.identity.node_name},
            )
            return
        self.renewed_at = now  # sent no later than this: the reader sees it no earlier
        self.renewals += 1
        self._acquired = self._acquired or wall
        self._said = said
        self._reply = None
        self.record = busy_lease.parse_lease(stored) or self.record
