"""The referee itself: it must see what the scenarios say never happens. Without an operator, a
test does by hand what a leaking one would (terminates a busy instance, lets AWS pick a victim)
and the counts must show it; then a job killed that way comes back and is done, exactly once."""

from __future__ import annotations

import time

import pytest

from framescale import busy_lease
from tests.integration.operator.conftest import wait_for
from tests.scenarios import harness

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG_JOBS = harness.NodeTiming(slots=1, job_seconds=(4.0, 4.0), boot_seconds=(0.0, 0.0))


def _admit_all(stack: harness.Stack, namespace: str) -> int:
    """What the operator does for a node it keeps: write admitted-by on its Lease."""
    leases = stack.kube.get(stack.kube.lease_path(namespace)).get("items", [])
    for lease in leases:
        name = lease["metadata"]["name"]
        stack.kube.merge_patch(stack.kube.lease_path(namespace, name), busy_lease.admit_patch(f"{namespace}/p"))
    return len(leases)


@pytest.mark.parametrize("stack", [LONG_JOBS], indirect=True)
def test_the_referee_counts_busy_terminations_aws_chosen_victims_and_exactly_once(stack: harness.Stack) -> None:
    ledger, autoscaling, ec2 = stack.ledger, harness.client("autoscaling"), harness.client("ec2")
    queue = harness.make_queue("referee", visibility_timeout=3)
    group = harness.make_group(
        "referee", harness.GroupSpec(max_size=3, lifecycle_hook=False, protect_new_instances=False)
    )
    stack.fleet.manage(group, namespace="referee", pipeline="p", queue_url=queue)
    autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=2)
    wait_for(lambda: _admit_all(stack, "referee") == 2, "both nodes' Leases, admitted")
    (job,) = harness.send_jobs(queue, ledger, 1, "referee")

    busy = wait_for(lambda: [n for n in stack.fleet.live_nodes() if n.jobs_in_hand()], "a node with the job")[0]
    ec2.terminate_instances(InstanceIds=[busy.instance_id])  # a busy machine dies
    (idle,) = [n for n in stack.fleet.live_nodes() if n is not busy]
    autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=0)  # AWS picks the victim

    found = ledger.violations({group})
    assert [t.instance_id for t in found["terminated_with_a_job"]] == [busy.instance_id]
    assert found["terminated_with_a_job"][0].cause == harness.BY_EC2
    assert found["terminated_with_a_job"][0].jobs_in_hand == (job,)
    # The idle node, and the replacement moto launched for the dead one (as AWS would), if any.
    chosen = found["aws_chose_the_victim"]
    assert idle.instance_id in [t.instance_id for t in chosen]
    assert {t.cause for t in chosen} == {harness.BY_DESIRED_CAPACITY}
    assert busy.instance_id not in [t.instance_id for t in chosen]
    assert found["jobs_killed"] == [job]
    assert found["never_done"] == [job]  # nobody is left to do it
    assert not busy.alive and not idle.alive

    # A new node takes the message once its visibility timeout is over, and does it once.
    autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=1)
    wait_for(stack.fleet.live_nodes, "a new node")
    wait_for(lambda: _admit_all(stack, "referee") and ledger.all_done(), "the killed job done elsewhere", timeout=30)
    time.sleep(0.5)
    assert ledger.done_counts() == {job: 1}
    assert ledger.violations({group})["never_done"] == []
    assert ledger.violations({group})["done_more_than_once"] == []


@pytest.mark.parametrize("stack", [LONG_JOBS], indirect=True)
def test_a_node_answers_a_drain_drained_only_when_idle_and_takes_nothing_after(stack: harness.Stack) -> None:
    """The fake node keeps the handshake the worker keeps: refused while a job is in hand
    (if-idle), drained once idle, and no job starts while the request stands."""
    ledger, autoscaling = stack.ledger, harness.client("autoscaling")
    queue = harness.make_queue("handshake", visibility_timeout=30)
    group = harness.make_group("handshake", harness.GroupSpec(max_size=1, lifecycle_hook=False))
    stack.fleet.manage(group, namespace="handshake", pipeline="p", queue_url=queue)
    autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=1)
    wait_for(lambda: _admit_all(stack, "handshake") == 1, "the node's Lease, admitted")
    (node,) = stack.fleet.live_nodes()
    lease = stack.kube.lease_path("handshake", node.lease_name)

    harness.send_jobs(queue, ledger, 1, "handshake")
    wait_for(node.jobs_in_hand, "the job in hand")
    stack.kube.merge_patch(lease, busy_lease.drain_request_patch("t1", "handshake/p"))
    refused = wait_for(
        lambda: (r := busy_lease.parse_lease(stack.kube.get(lease))) and r.refused("t1") and r, "refused"
    )
    assert refused.busy
    stack.kube.merge_patch(lease, busy_lease.withdraw_drain_patch())
    wait_for(ledger.all_done, "the job done")

    harness.send_jobs(queue, ledger, 1, "after-drain")
    wait_for(lambda: len(ledger.jobs()) == 2, "the second job taken")
    wait_for(ledger.all_done, "the second job done")
    stack.kube.merge_patch(lease, busy_lease.drain_request_patch("t2", "handshake/p"))
    wait_for(lambda: busy_lease.parse_lease(stack.kube.get(lease)).drained_for("t2"), "drained")  # type: ignore[union-attr]
    harness.send_jobs(queue, ledger, 2, "while-drained")
    time.sleep(3)
    assert len(ledger.jobs()) == 2, "a drained node started a job"
    assert all(in_hand == 0 for _, verdict, in_hand in node.drain_answers() if verdict == "drained")
