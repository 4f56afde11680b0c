"""Busy-node protection planning: which instances and Nodes to protect or release."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from framescale import busy_lease, names
from framescale_operator.protection import (
    PROTECTED_BY_ANNOTATION,
    GroupInstance,
    NodeRecord,
    busy_nodes,
    instance_id_from_provider_id,
    node_annotation_patch,
    plan,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
OWNER = "jobs/detector"
PROTECTED = {
    names.CLUSTER_AUTOSCALER_SCALE_DOWN_DISABLED: "true",
    names.KARPENTER_DO_NOT_DISRUPT: "true",
    PROTECTED_BY_ANNOTATION: OWNER,
}


def lease(node: str, *, jobs: int = 1, renewed: datetime = NOW, duration: int = 30, pipeline: str | None = None):
    return busy_lease.lease_body(
        node_name=node,
        namespace="jobs",
        holder=f"w-{node}",
        active_jobs=jobs,
        duration_seconds=duration,
        now=renewed,
        pipeline=pipeline,
    )


def node(name: str, instance: str, annotations: dict[str, str] | None = None) -> NodeRecord:
    return NodeRecord(name=name, provider_id=f"aws:///us-east-1a/{instance}", annotations=annotations or {})


def inst(instance_id: str, protected: bool = False, state: str = "InService") -> GroupInstance:
    return GroupInstance(instance_id=instance_id, lifecycle_state=state, protected_from_scale_in=protected)


A, B, C = "i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"
NODES = {"na": node("na", A), "nb": node("nb", B), "nc": node("nc", C)}


@pytest.mark.parametrize(
    ("provider_id", "expected"),
    [
        ("aws:///us-east-1a/i-0123456789abcdef0", "i-0123456789abcdef0"),
        ("aws:///eu-west-1b/i-12345678", "i-12345678"),
        ("aws:///us-east-1a/i-0123456789abcdef0/", "i-0123456789abcdef0"),
        ("gce://project/zone/instance", None),
        ("aws:///us-east-1a/not-an-instance", None),
        ("kind://docker/kind/kind-worker", None),
        ("", None),
        (None, None),
    ],
)
def test_instance_id_from_provider_id(provider_id: str | None, expected: str | None) -> None:
    assert instance_id_from_provider_id(provider_id) == expected


def test_busy_nodes_reads_only_unexpired_busy_leases_of_this_pipeline() -> None:
    leases = [
        lease("na"),
        lease("nb", jobs=0),  # idle
        lease("nc", renewed=NOW - timedelta(seconds=31)),  # expired
        lease("nd", pipeline="other"),  # another pipeline's worker
        lease("ne", pipeline="detector"),
        {"metadata": {"name": "kube-node-lease-x", "labels": {}}, "spec": {}},  # not ours
    ]
    busy = busy_nodes(leases, NOW, pipeline="detector")
    assert sorted(busy) == ["na", "ne"]


def test_a_busy_node_is_fully_protected() -> None:
    result = plan(
        owner=OWNER,
        busy=busy_nodes([lease("na")], NOW, pipeline="detector"),
        nodes=NODES,
        instances=[inst(A), inst(B)],
        termination_protected={},
    )
    assert result.protect_scale_in == (A,)
    assert result.enable_termination_protection == (A,)
    assert result.annotate_nodes == ("na",)
    assert result.release_scale_in == ()
    assert result.disable_termination_protection == ()
    assert result.unannotate_nodes == ()
    assert result.protected_instances == [A]
    assert result.busy_node_names == ["na"]
    assert result.busy_in_group == 1
    assert result.next_expiry() == NOW + timedelta(seconds=30)


def test_nothing_to_do_when_the_world_already_matches() -> None:
    nodes = {**NODES, "na": node("na", A, PROTECTED)}
    result = plan(
        owner=OWNER,
        busy=busy_nodes([lease("na")], NOW, pipeline="detector"),
        nodes=nodes,
        instances=[inst(A, protected=True), inst(B)],
        termination_protected={A: True},
    )
    assert not result.changes
    assert result.protected_instances == [A]


def test_an_idle_node_is_fully_released() -> None:
    nodes = {**NODES, "na": node("na", A, PROTECTED)}
    result = plan(
        owner=OWNER,
        busy={},
        nodes=nodes,
        instances=[inst(A, protected=True), inst(B)],
        termination_protected={A: True},
    )
    assert result.release_scale_in == (A,)
    assert result.disable_termination_protection == (A,)
    assert result.unannotate_nodes == ("na",)
    assert result.protected_instances == []


def test_release_covers_the_termination_flag_even_unread() -> None:
    """Scale-in protection marks an instance we may have protected: release both."""
    result = plan(owner=OWNER, busy={}, nodes=NODES, instances=[inst(A, protected=True)], termination_protected={})
    assert result.disable_termination_protection == (A,)


def test_a_termination_flag_left_by_a_crash_is_healed() -> None:
    """Crash between the two release calls: EC2 flag on, scale-in flag already off."""
    result = plan(owner=OWNER, busy={}, nodes=NODES, instances=[inst(A)], termination_protected={A: True})
    assert result.disable_termination_protection == (A,)
    assert result.release_scale_in == ()


def test_half_protected_busy_instance_gets_the_missing_half() -> None:
    result = plan(
        owner=OWNER,
        busy=busy_nodes([lease("na")], NOW, pipeline="detector"),
        nodes={**NODES, "na": node("na", A, PROTECTED)},
        instances=[inst(A, protected=True)],
        termination_protected={A: False},
    )
    assert result.protect_scale_in == ()
    assert result.enable_termination_protection == (A,)
    assert result.annotate_nodes == ()


def test_other_peoples_annotations_are_left_alone() -> None:
    """A node someone else marked do-not-disrupt (no marker of ours) is not ours to clear."""
    theirs = {names.KARPENTER_DO_NOT_DISRUPT: "true"}
    other_pipeline = {**PROTECTED, PROTECTED_BY_ANNOTATION: "jobs/other"}
    result = plan(
        owner=OWNER,
        busy={},
        nodes={"na": node("na", A, theirs), "nb": node("nb", B, other_pipeline)},
        instances=[inst(A), inst(B)],
        termination_protected={},
    )
    assert result.unannotate_nodes == ()


def test_busy_nodes_outside_the_group_are_not_protected_or_counted() -> None:
    result = plan(
        owner=OWNER,
        busy=busy_nodes([lease("na"), lease("nz")], NOW, pipeline="detector"),
        nodes={"na": node("na", A), "nz": NodeRecord(name="nz", provider_id=None)},
        instances=[inst(B)],
        termination_protected={},
    )
    assert not result.changes
    assert result.busy_node_names == ["na", "nz"]
    assert result.protected_instances == []
    assert result.busy_in_group == 0


def test_instances_on_their_way_out_are_left_alone() -> None:
    result = plan(
        owner=OWNER,
        busy=busy_nodes([lease("na")], NOW, pipeline="detector"),
        nodes=NODES,
        instances=[inst(A, state="Terminating"), inst(B, protected=True, state="Terminating:Wait")],
        termination_protected={B: True},
    )
    assert not result.changes


def test_node_annotation_patch_sets_and_removes_all_three() -> None:
    on = node_annotation_patch(OWNER, protect=True)["metadata"]["annotations"]
    off = node_annotation_patch(OWNER, protect=False)["metadata"]["annotations"]
    assert on == PROTECTED
    assert off == dict.fromkeys(PROTECTED)


def test_node_record_from_a_node_body() -> None:
    record = NodeRecord.from_body(
        {
            "metadata": {"name": "n1", "labels": {"a": "b"}, "annotations": PROTECTED},
            "spec": {"providerID": f"aws:///us-east-1a/{A}"},
        }
    )
    assert record.instance_id == A
    assert record.fully_annotated(OWNER)
    assert not record.fully_annotated("jobs/other")
