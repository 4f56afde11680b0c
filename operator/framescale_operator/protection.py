"""Busy-node protection: which instances and Nodes to protect or release, decided without I/O.

A node is busy while its worker's Lease says so and has not expired (``framescale.busy_lease``).
For each busy node in the pipeline's Auto Scaling group the operator wants, all at once:

* Auto Scaling instance scale-in protection (what actually keeps the group from picking it),
* EC2 ``DisableApiTermination``,
* the Node annotations that Cluster Autoscaler and Karpenter honour, plus our own marker
  annotations naming the pipeline and which of those two we added, so that we only ever
  remove annotations we put there (one a person set before stays when we release the node).

The operator only ever undoes what it did itself. People, the group's
``NewInstancesProtectedFromScaleIn`` and other VideoPipelines on the same group set the same
flags; so each flag framescale turns on carries an EC2 tag naming the pipeline
(``SCALE_IN_MARKER``, ``TERMINATION_MARKER``), and a flag is released only where that tag
names this pipeline. A flag that was already on is someone else's: it counts as protection,
but is neither tagged nor released.

The order of the calls keeps a crash between two of them healable: the tag goes on before its
flag and comes off after it, so "flag set by us" always implies "tag present", and a tag whose
flag is already off is only removed. Scale-in protection is released last.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from framescale import busy_lease, names

PROTECTED_BY_ANNOTATION = "framescale.io/protected-by"
# Which of NODE_PROTECTION_ANNOTATIONS the operator added (comma-separated; empty: none, they
# were already there). Only those are removed on release.
ADDED_ANNOTATIONS_ANNOTATION = "framescale.io/added-annotations"
# EC2 instance tags: the pipeline (namespace/name) that turned the flag on. Defined in
# framescale.names, as the operator's IAM policy (framescale.iam) names them too.
SCALE_IN_MARKER = names.SCALE_IN_MARKER_TAG
TERMINATION_MARKER = names.TERMINATION_MARKER_TAG
MARKER_TAGS = names.PROTECTION_MARKER_TAGS
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
    health_status: str = "Healthy"

    @property
    def in_service(self) -> bool:
        return self.lifecycle_state in IN_SERVICE_STATES

    @property
    def healthy(self) -> bool:
        return self.health_status == "Healthy"


@dataclass(frozen=True)
class Markers:
    """Which pipeline (``namespace/name``) turned each protection flag of an instance on."""

    scale_in: str | None = None
    termination: str | None = None


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
    mark_scale_in: tuple[str, ...] = ()
    protect_scale_in: tuple[str, ...] = ()
    mark_termination: tuple[str, ...] = ()
    protect_termination: tuple[str, ...] = ()
    release_termination: tuple[str, ...] = ()  # flag off, then our tag off
    release_scale_in: tuple[str, ...] = ()
    unmark_scale_in: tuple[str, ...] = ()
    annotate_nodes: tuple[str, ...] = ()
    unannotate_nodes: tuple[str, ...] = ()

    @property
    def busy_node_names(self) -> list[str]:
        return sorted(node.node_name for node in self.busy)

    @property
    def protected_instances(self) -> list[str]:
        """The group's instances that are (after this plan) protected because they are busy."""
        return instances_of(self.busy)

    @property
    def changes(self) -> bool:
        return any(
            (
                self.mark_scale_in,
                self.protect_scale_in,
                self.mark_termination,
                self.protect_termination,
                self.release_termination,
                self.release_scale_in,
                self.unmark_scale_in,
                self.annotate_nodes,
                self.unannotate_nodes,
            )
        )


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


def instances_of(busy: Iterable[BusyNode]) -> list[str]:
    """The busy nodes' instances that are in service in the group (sorted)."""
    return sorted({node.instance_id for node in busy if node.instance_id})


def next_expiry(busy: Iterable[BusyNode]) -> datetime | None:
    """When the earliest busy Lease lapses unless renewed: the latest moment to look again."""
    times = [node.expires_at for node in busy if node.expires_at is not None]
    return min(times) if times else None


def busy_records(
    busy: Mapping[str, busy_lease.LeaseView],
    nodes: Mapping[str, NodeRecord],
    instances: Iterable[GroupInstance],
) -> tuple[BusyNode, ...]:
    """Every busy node, with its instance id when that instance is in service in the group."""
    in_service = {instance.instance_id for instance in instances if instance.in_service}
    records = []
    for node_name, view in sorted(busy.items()):
        record = nodes.get(node_name)
        instance_id = record.instance_id if record is not None else None
        records.append(
            BusyNode(
                node_name=node_name,
                instance_id=instance_id if instance_id in in_service else None,
                expires_at=view.expires_at,
                active_jobs=view.active_jobs,
            )
        )
    return tuple(records)


def plan(
    *,
    owner: str,
    busy: tuple[BusyNode, ...],
    nodes: Mapping[str, NodeRecord],
    instances: Iterable[GroupInstance],
    termination_protected: Mapping[str, bool],
    markers: Mapping[str, Markers],
    scale_in_keep: Collection[str] | None = None,
) -> ProtectionPlan:
    """Compare what should be protected with what is.

    ``owner`` is ``namespace/name`` of the VideoPipeline; ``busy`` comes from ``busy_records``.
    ``termination_protected`` holds the EC2 flag of the busy instances (one missing is taken to
    be off); ``markers`` the framescale tags of the group's instances (one missing has none).

    Scale-in protection: while the pipeline manages the group (``scale_in_keep`` None) every
    instance of it is protected, busy or idle, so that the group itself never picks a victim;
    each carries our marker (an instance the group launched protected is adopted: marked).
    While the pipeline is being deleted, ``scale_in_keep`` names the instances that stay
    protected (busy, not yet drained); our protection of the others is released.
    """
    group = {instance.instance_id: instance for instance in instances if instance.in_service}
    busy_ids = {node.instance_id for node in busy if node.instance_id is not None}
    keep = set(group) if scale_in_keep is None else {i for i in scale_in_keep if i in group} | busy_ids
    mark = {instance_id: markers.get(instance_id, Markers()) for instance_id in group}

    protect_scale_in = sorted(i for i in keep if not group[i].protected_from_scale_in)
    enable_termination = sorted(i for i in busy_ids if not termination_protected.get(i, False))
    # Release only what our tags say we set. The EC2 flag of an idle instance is not read: turning
    # it off is idempotent, and its tag comes off right after, so this happens once.
    ours_scale_in = sorted(i for i in group if i not in keep and mark[i].scale_in == owner)
    ours_termination = sorted(i for i in group if i not in busy_ids and mark[i].termination == owner)

    protected_nodes = {node.node_name for node in busy if node.instance_id is not None}
    annotate = sorted(name for name in protected_nodes if not nodes[name].fully_annotated(owner))
    unannotate = sorted(
        record.name
        for record in nodes.values()
        if record.protected_by() == owner and record.name not in protected_nodes
    )
    return ProtectionPlan(
        busy=busy,
        # Managing: every instance is adopted (marked as ours). Deleting: only what we turn on now.
        mark_scale_in=tuple(
            sorted(i for i in (keep if scale_in_keep is None else protect_scale_in) if mark[i].scale_in != owner)
        ),
        protect_scale_in=tuple(protect_scale_in),
        mark_termination=tuple(i for i in enable_termination if mark[i].termination != owner),
        protect_termination=tuple(enable_termination),
        release_termination=tuple(ours_termination),
        release_scale_in=tuple(i for i in ours_scale_in if group[i].protected_from_scale_in),
        unmark_scale_in=tuple(ours_scale_in),
        annotate_nodes=tuple(annotate),
        unannotate_nodes=tuple(unannotate),
    )


def node_annotation_patch(record: NodeRecord | None, owner: str, protect: bool) -> dict[str, Any]:
    """The merge patch that sets or removes our Node annotations, given what the Node has now."""
    current = record.annotations if record is not None else {}
    if protect:
        added = set(_added_annotations(current) or ()) if current.get(PROTECTED_BY_ANNOTATION) == owner else set()
        values: dict[str, str | None] = {PROTECTED_BY_ANNOTATION: owner}
        for key in NODE_PROTECTION_ANNOTATIONS:
            if current.get(key) != "true":
                values[key] = "true"
                added.add(key)
        values[ADDED_ANNOTATIONS_ANNOTATION] = ",".join(sorted(added))
    else:
        # A Node protected before the record existed: all of them were ours.
        ours = _added_annotations(current)
        keys = NODE_PROTECTION_ANNOTATIONS if ours is None else ours
        values = dict.fromkeys((*keys, PROTECTED_BY_ANNOTATION, ADDED_ANNOTATIONS_ANNOTATION), None)
    return {"metadata": {"annotations": values}}


def _added_annotations(annotations: Mapping[str, str]) -> tuple[str, ...] | None:
    """The protection annotations we recorded as added by us; None when there is no record."""
    recorded = annotations.get(ADDED_ANNOTATIONS_ANNOTATION)
    if recorded is None:
        return None
    return tuple(key for key in recorded.split(",") if key in NODE_PROTECTION_ANNOTATIONS)
