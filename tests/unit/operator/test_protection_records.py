"""What protection planning reads from the cluster, exactly: a Node's record, busy nodes with and
without a Node or an expiry, and the annotation patch for a Node nobody has seen or someone else protects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from framescale import busy_lease
from framescale_operator.protection import (
    ADDED_ANNOTATIONS_ANNOTATION,
    NODE_PROTECTION_ANNOTATIONS,
    PROTECTED_BY_ANNOTATION,
    BusyNode,
    GroupInstance,
    NodeRecord,
    busy_records,
    next_expiry,
    node_annotation_patch,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
INSTANCE = "i-0123456789abcdef0"
OWNER = "default/pipeline"


def test_a_node_record_keeps_the_name_labels_annotations_and_provider_it_was_given() -> None:
    body = {
        "metadata": {"name": "node-a", "labels": {"pool": "gpu"}, "annotations": {"note": "x"}},
        "spec": {"providerID": f"aws:///us-east-1a/{INSTANCE}"},
    }
    record = NodeRecord.from_body(body)
    assert (record.name, record.labels, record.annotations) == ("node-a", {"pool": "gpu"}, {"note": "x"})
    assert record.instance_id == INSTANCE


def test_a_node_record_of_a_bare_body_is_empty_not_missing() -> None:
    record = NodeRecord.from_body({})
    assert (record.name, record.labels, record.annotations, record.instance_id) == ("", {}, {}, None)


def test_busy_nodes_carry_their_jobs_and_an_instance_only_when_one_is_known_in_service() -> None:
    busy = {
        "node-a": busy_lease.LeaseView("node-a", True, NOW + timedelta(seconds=30), 2),
        "node-b": busy_lease.LeaseView("node-b", True, None, 1),  # no Node seen for it
    }
    nodes = {
        "node-a": NodeRecord.from_body({"metadata": {"name": "node-a"}, "spec": {"providerID": f"aws:///z/{INSTANCE}"}})
    }
    instances = [GroupInstance(INSTANCE, "InService", True)]
    assert busy_records(busy, nodes, instances) == (
        BusyNode("node-a", INSTANCE, NOW + timedelta(seconds=30), 2),
        BusyNode("node-b", None, None, 1),
    )


def test_no_busy_lease_with_an_expiry_means_no_time_to_look_again() -> None:
    assert next_expiry([]) is None
    assert next_expiry([BusyNode("n", None, None, 1)]) is None
    soon, later = NOW + timedelta(seconds=5), NOW + timedelta(seconds=50)
    assert next_expiry([BusyNode("a", None, later, 1), BusyNode("b", None, soon, 1)]) == soon


def test_protecting_a_node_without_a_record_adds_every_annotation() -> None:
    patch = node_annotation_patch(None, OWNER, protect=True)
    assert patch == {
        "metadata": {
            "annotations": {
                PROTECTED_BY_ANNOTATION: OWNER,
                **dict.fromkeys(NODE_PROTECTION_ANNOTATIONS, "true"),
                ADDED_ANNOTATIONS_ANNOTATION: ",".join(sorted(NODE_PROTECTION_ANNOTATIONS)),
            }
        }
    }


def test_annotations_another_pipeline_added_are_not_claimed_as_ours() -> None:
    first, *_ = NODE_PROTECTION_ANNOTATIONS
    theirs = NodeRecord(
        name="node-a",
        provider_id=None,
        annotations={PROTECTED_BY_ANNOTATION: "other/pipeline", first: "true", ADDED_ANNOTATIONS_ANNOTATION: first},
        labels={},
    )
    values = node_annotation_patch(theirs, OWNER, protect=True)["metadata"]["annotations"]
    # The one already there stays theirs: releasing ours later must not remove it.
    assert values[ADDED_ANNOTATIONS_ANNOTATION] == ",".join(sorted(set(NODE_PROTECTION_ANNOTATIONS) - {first}))


def test_a_provider_id_whose_last_part_is_not_an_instance_id_names_no_instance() -> None:
    for provider_id in (f"aws:///us-east-1a/{INSTANCE}X", f"aws:///us-east-1a/{INSTANCE}X/"):
        assert NodeRecord("n", provider_id).instance_id is None
    assert NodeRecord("n", f"aws:///us-east-1a/{INSTANCE}/").instance_id == INSTANCE
