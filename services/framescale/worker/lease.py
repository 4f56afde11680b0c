"""The busy-node Lease: held and renewed while this node has jobs, left to lapse when idle.

The Lease contract lives in framescale.busy_lease (shared with the operator). The worker
needs only create and patch on Leases in its own namespace.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from framescale import busy_lease, kubeconfig

log = logging.getLogger(__name__)


def kubernetes_coordination_api() -> Any:
    """CoordinationV1Api from in-cluster config, else the local kubeconfig."""
    from kubernetes import client

    kubeconfig.load()
    return client.CoordinationV1Api()


class BusyLease:
    """Tracks the node's active job count and mirrors it into the Lease.

    ``set_active(n)`` is called on every job start and finish; a background thread renews
    the Lease every third of its duration while n > 0. When n drops to 0 the Lease is
    written once with active-jobs 0 (so the operator can unprotect at once) and then left
    to expire.
    """

    def __init__(
        self,
        api: Any,
        *,
        node_name: str,
        namespace: str,
        holder: str,
        duration_seconds: int,
        pipeline: str | None = None,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.namespace = namespace
        self.holder = holder
        self.duration_seconds = duration_seconds
        self.pipeline = pipeline
        self.name = busy_lease.lease_name(node_name)
        self.active = 0
        self.acquired: datetime | None = None
        self.writes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-lease", daemon=True)

    def start(self) -> BusyLease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def set_active(self, count: int) -> None:
        with self._lock:
            changed = (count > 0) != (self.active > 0) or count != self.active
            self.active = max(0, count)
        if changed:
            self._wake.set()

    def _run(self) -> None:
        period = self.duration_seconds / 3.0
        announced_idle = True  # nothing to say until the first job starts
        while not self._stop.is_set():
            with self._lock:
                active = self.active
            if active > 0 or not announced_idle:
                try:
                    self.write(active)
                    announced_idle = active == 0
                except Exception as error:
                    log.warning(
                        "busy lease not written; will retry", extra={"error": str(error), "node": self.node_name}
                    )
            # Renew while busy (or until "idle" is written); otherwise sleep until a job starts.
            self._wake.wait(period if active > 0 or not announced_idle else None)
            self._wake.clear()

    def write(self, active: int) -> None:
        now = datetime.now(UTC)
        if active > 0 and self.acquired is None:
            self.acquired = now
        body = busy_lease.lease_body(
            node_name=self.node_name,
            namespace=self.namespace,
            holder=self.holder,
            active_jobs=active,
            duration_seconds=self.duration_seconds,
            now=now,
            pipeline=self.pipeline,
            acquired=self.acquired,
        )
        if active == 0:
            self.acquired = None
        from kubernetes.client.exceptions import ApiException

        try:
            # A merge patch: no read-modify-write race, and only Lease get/create/patch needed.
            self.api.patch_namespaced_lease(
                self.name, self.namespace, body, _content_type="application/merge-patch+json"
            )
        except ApiException as error:
            if error.status != 404:
                raise
            self.api.create_namespaced_lease(self.namespace, body)
        self.writes += 1
