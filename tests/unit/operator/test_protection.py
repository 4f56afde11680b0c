"""Busy-node protection planning: which instances and Nodes to protect or release."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from framescale import busy_lease, names
from framescale_operator.protection import (
    ADDED_ANNOTATIONS_ANNOTATION,
    PROTECTED_BY_ANNOTATION,
    GroupInstance,
    Markers,
    NodeRecord,
    ProtectionPlan,
    busy_nodes,
    busy_records,
    instance_id_from_provider_id,
    next_expiry,
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
OURS = Markers(scale_in=OWNER, termination=OWNER)


def make_plan(
    busy: list[str],
    instances: list[GroupInstance],
    *,
    termination: dict[str, bool] | None = None,
    markers: dict[str, Markers] | None = None,
    nodes: dict[str, NodeRecord] | None = None,
    keep: tuple[str, ...] | None = (),
) -> ProtectionPlan:
    """The plan for these busy nodes (names; each with a fresh busy Lease) over this group.
    ``keep`` () is the deleting pipeline's plan with only the busy nodes kept (release what is
    idle); None the managing pipeline's (every instance protected from scale-in)."""
    nodes = NODES if nodes is None else nodes
    views = busy_nodes([lease(name) for name in busy], NOW, pipeline="detector")
    return plan(
        owner=OWNER,
        busy=busy_records(views, nodes, instances),
        nodes=nodes,
        instances=instances,
        termination_protected=termination or {},
        markers=markers or {},
        scale_in_keep=keep,
    )


def test_a_managed_group_has_every_instance_protected_from_scale_in_and_adopted() -> None:
    result = make_plan(
        ["na"],
        [inst(A), inst(B, protected=True), inst(C, protected=True)],
        markers={C: Markers(scale_in=OWNER)},
        keep=None,
    )
    assert result.mark_scale_in == (A, B)  # B was launched protected by the group: adopted, marked
    assert result.protect_scale_in == (A,)
    assert result.protect_termination == (A,)  # termination protection only for the busy one
    assert result.release_scale_in == result.unmark_scale_in == ()
    assert result.release_termination == ()
    idle = make_plan([], [inst(A, protected=True)], markers={A: OURS}, termination={A: True}, keep=None)
    assert idle.release_scale_in == () and idle.unmark_scale_in == ()  # idle, but never released while managed
    assert idle.release_termination == (A,)


def test_a_deleting_pipeline_keeps_what_it_is_told_to_keep() -> None:
    result = make_plan([], [inst(A, protected=True), inst(B, protected=True)], markers={A: OURS, B: OURS}, keep=(A,))
    assert result.release_scale_in == (B,)
    assert result.unmark_scale_in == (B,)


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


def test_expiry_is_renew_time_plus_duration_not_acquire_time() -> None:
    """A Lease held for an hour and renewed just now is busy; one renewed too long ago is not."""
    held_long = busy_lease.lease_body(
        node_name="na",
        namespace="jobs",
        holder="w",
        active_jobs=1,
        duration_seconds=30,
        now=NOW - timedelta(seconds=5),
        acquired=NOW - timedelta(hours=1),
    )
    lapsed = busy_lease.lease_body(
        node_name="nb",
        namespace="jobs",
        holder="w",
        active_jobs=1,
        duration_seconds=30,
        now=NOW - timedelta(seconds=31),
        acquired=NOW - timedelta(seconds=40),
    )
    busy = busy_nodes([held_long, lapsed], NOW, pipeline="detector")
    assert sorted(busy) == ["na"]
    assert busy["na"].expires_at == NOW + timedelta(seconds=25)
    assert next_expiry(busy_records(busy, NODES, [inst(A)])) == NOW + timedelta(seconds=25)


def test_a_busy_node_is_fully_protected_and_marked_as_ours() -> None:
    result = make_plan(["na"], [inst(A), inst(B)])
    assert result.mark_scale_in == (A,)
    assert result.protect_scale_in == (A,)
    assert result.mark_termination == (A,)
    assert result.protect_termination == (A,)
    assert result.annotate_nodes == ("na",)
    assert result.release_scale_in == result.unmark_scale_in == result.release_termination == ()
    assert result.unannotate_nodes == ()
    assert result.protected_instances == [A]
    assert result.busy_node_names == ["na"]


def test_nothing_to_do_when_the_world_already_matches() -> None:
    result = make_plan(
        ["na"],
        [inst(A, protected=True), inst(B)],
        termination={A: True},
        markers={A: OURS},
        nodes={**NODES, "na": node("na", A, PROTECTED)},
    )
    assert not result.changes
    assert result.protected_instances == [A]


def test_an_idle_node_is_fully_released() -> None:
    result = make_plan(
        [],
        [inst(A, protected=True), inst(B)],
        markers={A: OURS},
        nodes={**NODES, "na": node("na", A, PROTECTED)},
    )
    assert result.release_termination == (A,)  # not read: turning it off is idempotent
    assert result.release_scale_in == (A,)
    assert result.unmark_scale_in == (A,)
    assert result.unannotate_nodes == ("na",)
    assert result.protected_instances == []


@dataclass(frozen=True)
class Owned:
    name: str
    busy: bool
    scale_in: bool  # the group's flag
    termination: bool  # the EC2 flag
    markers: Markers
    expected: dict[str, tuple[str, ...]]


THEIRS = Markers(scale_in="jobs/other", termination="jobs/other")
OWNED = [
    Owned("idle, protected by a person: left alone", False, True, True, Markers(), {}),
    Owned("idle, protected by another pipeline: left alone", False, True, True, THEIRS, {}),
    Owned(
        "idle, scale-in ours, termination a person's",
        False,
        True,
        True,
        Markers(scale_in=OWNER),
        {"release_scale_in": (A,), "unmark_scale_in": (A,)},
    ),
    Owned(
        "idle, termination ours, scale-in a person's",
        False,
        True,
        True,
        Markers(termination=OWNER),
        {"release_termination": (A,)},
    ),
    Owned("busy and already protected by someone else: nothing to add", True, True, True, Markers(), {}),
    Owned(
        "busy, only scale-in someone else's: add and mark termination",
        True,
        True,
        False,
        Markers(),
        {"mark_termination": (A,), "protect_termination": (A,)},
    ),
    Owned(
        "busy, another pipeline's tag but the flag off: ours now",
        True,
        False,
        False,
        THEIRS,
        {"mark_scale_in": (A,), "protect_scale_in": (A,), "mark_termination": (A,), "protect_termination": (A,)},
    ),
    Owned(
        "crash after tagging, before the flags: set them, tags are there",
        True,
        False,
        False,
        OURS,
        {"protect_scale_in": (A,), "protect_termination": (A,)},
    ),
    Owned(
        "crash after clearing the flags, before the tags: only untag",
        False,
        False,
        False,
        OURS,
        {"release_termination": (A,), "unmark_scale_in": (A,)},
    ),
]
INSTANCE_FIELDS = (
    "mark_scale_in",
    "protect_scale_in",
    "mark_termination",
    "protect_termination",
    "release_termination",
    "release_scale_in",
    "unmark_scale_in",
)


@pytest.mark.parametrize("case", OWNED, ids=[case.name for case in OWNED])
def test_only_what_this_pipeline_set_is_released(case: Owned) -> None:
    annotated = {**NODES, "na": node("na", A, PROTECTED)}  # the Node side is not under test here
    result = make_plan(
        ["na"] if case.busy else [],
        [inst(A, protected=case.scale_in)],
        termination={A: case.termination},
        markers={A: case.markers},
        nodes=annotated if case.busy else NODES,
    )
    assert {name: getattr(result, name) for name in INSTANCE_FIELDS} == {
        name: case.expected.get(name, ()) for name in INSTANCE_FIELDS
    }
    assert result.protected_instances == ([A] if case.busy else [])


def test_other_peoples_annotations_are_left_alone() -> None:
    """A node someone else marked do-not-disrupt (no marker of ours) is not ours to clear."""
    theirs = {names.KARPENTER_DO_NOT_DISRUPT: "true"}
    other_pipeline = {**PROTECTED, PROTECTED_BY_ANNOTATION: "jobs/other"}
    result = make_plan([], [inst(A), inst(B)], nodes={"na": node("na", A, theirs), "nb": node("nb", B, other_pipeline)})
    assert result.unannotate_nodes == ()


def test_busy_nodes_outside_the_group_are_not_protected_or_counted() -> None:
    result = make_plan(
        ["na", "nz"], [inst(B)], nodes={"na": node("na", A), "nz": NodeRecord(name="nz", provider_id=None)}
    )
    assert not result.changes
    assert result.busy_node_names == ["na", "nz"]
    assert result.protected_instances == []


def test_instances_on_their_way_out_are_left_alone() -> None:
    result = make_plan(
        ["na"],
        [inst(A, state="Terminating"), inst(B, protected=True, state="Terminating:Wait")],
        termination={B: True},
        markers={B: OURS},
    )
    assert not result.changes


def _annotations_after(before: dict[str, str], protect: bool) -> dict[str, str]:
    """Apply the merge patch as the API server would."""
    record = NodeRecord(name="n1", provider_id=None, annotations=before)
    patch = node_annotation_patch(record, OWNER, protect=protect)["metadata"]["annotations"]
    after = dict(before)
    for key, value in patch.items():
        if value is None:
            after.pop(key, None)
        else:
            after[key] = value
    return after


def test_node_annotation_patch_sets_all_and_removes_what_it_added() -> None:
    protected = _annotations_after({"team": "vision"}, protect=True)
    assert {key: protected[key] for key in PROTECTED} == PROTECTED
    assert NodeRecord(name="n1", provider_id=None, annotations=protected).fully_annotated(OWNER)
    assert _annotations_after(protected, protect=False) == {"team": "vision"}


def test_release_leaves_an_annotation_someone_else_set_before() -> None:
    theirs = {names.KARPENTER_DO_NOT_DISRUPT: "true"}
    protected = _annotations_after(theirs, protect=True)
    assert {key: protected[key] for key in PROTECTED} == PROTECTED
    assert protected[ADDED_ANNOTATIONS_ANNOTATION] == names.CLUSTER_AUTOSCALER_SCALE_DOWN_DISABLED
    assert _annotations_after(protected, protect=False) == theirs


def test_reannotating_keeps_the_record_of_what_was_added() -> None:
    protected = _annotations_after({}, protect=True)
    # Someone removes one of ours; the next pass puts it back and still owns both.
    protected.pop(names.KARPENTER_DO_NOT_DISRUPT)
    again = _annotations_after(protected, protect=True)
    assert set(again[ADDED_ANNOTATIONS_ANNOTATION].split(",")) == {
        names.KARPENTER_DO_NOT_DISRUPT,
        names.CLUSTER_AUTOSCALER_SCALE_DOWN_DISABLED,
    }
    assert _annotations_after(again, protect=False) == {}


def test_a_node_protected_without_the_record_is_fully_released() -> None:
    # Protected by a version that kept no record of what it added: all of it was ours.
    assert _annotations_after(dict(PROTECTED), protect=False) == {}


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
