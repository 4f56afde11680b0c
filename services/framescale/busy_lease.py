"""The busy-node Lease contract between a node's worker (writer) and the operator (reader).

A worker holds one ``coordination.k8s.io/v1`` Lease per node while it has jobs and renews
it on a heartbeat. The operator treats a node as busy when its Lease says so *and* has
not expired, so a crashed worker cannot keep a node protected forever.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
