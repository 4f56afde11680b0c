"""Busy-node protection: which instances and Nodes to protect or release, decided without I/O.

A node is busy while its worker's Lease says so and has not expired (``framescale.busy_lease``).
For each busy node in the pipeline's Auto Scaling group the operator wants, all at once:

* Auto Scaling instance scale-in protection (what actually keeps the group from picking it),
* EC2 ``DisableApiTermination``,
* the Node annotations that Cluster Autoscaler and Karpenter honour, plus our own marker
  annotation naming the pipeline, so that we only ever remove annotations we put there.

Everything else in the group is released. The order of the actuators keeps a crash between
two calls healable: protect scale-in first and termination second; release termination first
and scale-in last. So "EC2 flag on" implies "scale-in flag on", and the scale-in flag (which a
group description shows for free) tells the next pass which instances to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from framescale import busy_lease, names

PROTECTED_BY_ANNOTATION = "framescale.io/protected-by"
NODE_PROTECTION_ANNOTATIONS = (
    names.CLUSTER_AUTOSCALER_SCALE_DOWN_DISABLED,
    names.KARPENTER_DO_NOT_DISRUPT,
)
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
IN_SERVICE_STATES = frozenset({"InService", "Pending", "Pending:Wait", "Pending:Proceed"})


def instance_id_from_provider_id(provider_id: str | None) -> str | None:
    """``aws:///us-east-1a/i-0123456789abcdef0`` -> ``i-0123456789abcdef0``; None when not an EC2 node."""
    if not provider_id or not provider_id.startswith("aws://"):
        return None
    candidate = provider_id.rstrip("/").rsplit("/", 1)[-1]
    return candidate if _INSTANCE_ID.match(candidate) else None


@dataclass(frozen=True)
class NodeRecord:
    """What the operator keeps about a Node (from its watch)."""

    name: str
    provider_id: str | None
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def instance_id(self) -> str | None:
        return instance_id_from_provider_id(self.provider_id)

    def protected_by(self) -> str | None:
        return self.annotations.get(PROTECTED_BY_ANNOTATION)

    def fully_annotated(self, owner: str) -> bool:
        return self.protected_by() == owner and all(
            self.annotations.get(key) == "true" for key in NODE_PROTECTION_ANNOTATIONS
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeRecord:
        metadata = body.get("metadata") or {}
        spec = body.get("spec") or {}
        return cls(
            name=str(metadata.get("name", "")),
            provider_id=spec.get("providerID"),
            annotations=dict(metadata.get("annotations") or {}),
            labels=dict(metadata.get("labels") or {}),
        )


@dataclass(frozen=True)
class GroupInstance:
    """One instance of the Auto Scaling group as its description shows it."""

    instance_id: str
    lifecycle_state: str
    protected_from_scale_in: bool

    @property
    def in_service(self) -> bool:
        return self.lifecycle_state in IN_SERVICE_STATES


@dataclass(frozen=True)
class BusyNode:
    node_name: str
    instance_id: str | None
    expires_at: datetime | None
    active_jobs: int


@dataclass(frozen=True)
class ProtectionPlan:
    """What to change; empty lists mean the world already matches."""

    busy: tuple[BusyNode, ...]
    protect_scale_in: tuple[str, ...] = ()
    enable_termination_protection: tuple[str, ...] = ()
    disable_termination_protection: tuple[str, ...] = ()
    release_scale_in: tuple[str, ...] = ()
    annotate_nodes: tuple[str, ...] = ()
    unannotate_nodes: tuple[str, ...] = ()

    @property
    def busy_node_names(self) -> list[str]:
        return sorted(node.node_name for node in self.busy)

    @property
    def protected_instances(self) -> list[str]:
        """The group's instances that are (after this plan) protected because they are busy."""
        return sorted({node.instance_id for node in self.busy if node.instance_id})

    @property
    def busy_in_group(self) -> int:
        return len(self.protected_instances)

    @property
    def changes(self) -> bool:
        return any(
            (
                self.protect_scale_in,
                self.enable_termination_protection,
                self.disable_termination_protection,
                self.release_scale_in,
                self.annotate_nodes,
                self.unannotate_nodes,
            )
        )

    def next_expiry(self) -> datetime | None:
        """When the earliest busy Lease lapses unless renewed: the latest moment to look again."""
        times = [node.expires_at for node in self.busy if node.expires_at is not None]
        return min(times) if times else None


def busy_nodes(
    leases: Iterable[Mapping[str, Any]],
    now: datetime,
    *,
    pipeline: str,
) -> dict[str, busy_lease.LeaseView]:
    """Busy, unexpired Leases by node name; a Lease labelled for another pipeline is not ours."""
    result: dict[str, busy_lease.LeaseView] = {}
    for lease in leases:
        labels = (lease.get("metadata") or {}).get("labels") or {}
        owner = labels.get(names.LEASE_PIPELINE_LABEL)
        if owner and owner != pipeline:
            continue
        view = busy_lease.read_lease(dict(lease), now)
        if view is not None and view.busy:
            result[view.node_name] = view
    return result


def plan(
    *,
    owner: str,
    busy: Mapping[str, busy_lease.LeaseView],
    nodes: Mapping[str, NodeRecord],
    instances: Iterable[GroupInstance],
    termination_protected: Mapping[str, bool],
) -> ProtectionPlan:
    """Compare what should be protected with what is.

    ``owner`` is ``namespace/name`` of the VideoPipeline. ``termination_protected`` holds the
    EC2 flag for the instances it was read for (busy ones, ASG-protected ones, and every
    instance on a full audit); an instance missing from it is taken to be unprotected.
    """
    group = {instance.instance_id: instance for instance in instances}
    busy_records: list[BusyNode] = []
    wanted: set[str] = set()
    for node_name, view in sorted(busy.items()):
        record = nodes.get(node_name)
        instance_id = record.instance_id if record is not None else None
        in_group = instance_id is not None and instance_id in group and group[instance_id].in_service
        busy_records.append(
            BusyNode(
                node_name=node_name,
                instance_id=instance_id if in_group else None,
                expires_at=view.expires_at,
                active_jobs=view.active_jobs,
            )
        )
        if in_group and instance_id is not None:
            wanted.add(instance_id)

    protect_scale_in = sorted(i for i in wanted if not group[i].protected_from_scale_in)
    enable_termination = sorted(i for i in wanted if not termination_protected.get(i, False))
    release_scale_in = sorted(
        i for i, inst in group.items() if inst.protected_from_scale_in and inst.in_service and i not in wanted
    )
    disable_termination = sorted(
        i for i, on in termination_protected.items() if on and i in group and group[i].in_service and i not in wanted
    )
    # An instance released from scale-in is also released from termination protection, even if
    # its EC2 flag was not read: the call is idempotent and the scale-in flag says we may have set it.
    disable_termination = sorted(set(disable_termination) | set(release_scale_in))

    protected_nodes = {record.node_name for record in busy_records if record.instance_id is not None}
    annotate = sorted(name for name in protected_nodes if not nodes[name].fully_annotated(owner))
    unannotate = sorted(
        record.name
        for record in nodes.values()
        if record.protected_by() == owner and record.name not in protected_nodes
    )
    return ProtectionPlan(
        busy=tuple(busy_records),
        protect_scale_in=tuple(protect_scale_in),
        enable_termination_protection=tuple(enable_termination),
        disable_termination_protection=tuple(disable_termination),
        release_scale_in=tuple(release_scale_in),
        annotate_nodes=tuple(annotate),
        unannotate_nodes=tuple(unannotate),
    )


def node_annotation_patch(owner: str, protect: bool) -> dict[str, Any]:
    """The merge patch that sets or removes our Node annotations."""
    if protect:
        values: dict[str, str | None] = dict.fromkeys(NODE_PROTECTION_ANNOTATIONS, "true")
        values[PROTECTED_BY_ANNOTATION] = owner
    else:
        values = dict.fromkeys((*NODE_PROTECTION_ANNOTATIONS, PROTECTED_BY_ANNOTATION), None)
    return {"metadata": {"annotations": values}}
