"""Run a plan's steps in order against AWS and Kubernetes; stop at the first that fails.

Stopping matters: the plan's order is what keeps a crash safe (protect before anything, a
drain request before its termination), so a step that did not happen must not be followed by
the ones that relied on it. Node annotations are the one exception: they are for Cluster
Autoscaler and Karpenter, the AWS side never waits for them, so a failed Node patch is noted
and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from framescale import busy_lease
from framescale_operator import plan as p
from framescale_operator import protection
from framescale_operator.aws_actuators import AwsApi, AwsError
from framescale_operator.kube import KubeError, LeaseApi, NodeApi


@dataclass
class Result:
    """What ran: the steps done (in order), the one that failed and why, Node patch failures."""

    done: list[p.Step] = field(default_factory=list)
    failed: p.Step | None = None
    error: AwsError | KubeError | None = None
    node_errors: list[KubeError] = field(default_factory=list)

    def did(self, kind: type[p.Step]) -> list[p.Step]:
        return [step for step in self.done if isinstance(step, kind)]


def execute(
    steps: tuple[p.Step, ...],
    *,
    owner: str,
    nodes: dict[str, protection.NodeRecord],
    aws: AwsApi,
    nodes_api: NodeApi,
    leases_api: LeaseApi,
) -> Result:
    result = Result()
    for step in steps:
        try:
            _run(step, owner=owner, nodes=nodes, aws=aws, nodes_api=nodes_api, leases_api=leases_api)
        except KubeError as error:
            if isinstance(step, p.AnnotateNode):
                result.node_errors.append(error)
                continue
            result.failed, result.error = step, error
            return result
        except AwsError as error:
            result.failed, result.error = step, error
            return result
        result.done.append(step)
    return result


def _run(
    step: p.Step,
    *,
    owner: str,
    nodes: dict[str, protection.NodeRecord],
    aws: AwsApi,
    nodes_api: NodeApi,
    leases_api: LeaseApi,
) -> None:
    match step:
        case p.ProtectNewInstances(group=group):
            aws.protect_new_instances(group)
        case p.MarkInstance(instance_id=instance_id, key=key):
            aws.set_marker(instance_id, key, owner)
        case p.UnmarkInstance(instance_id=instance_id, key=key):
            aws.clear_marker(instance_id, key, owner)
        case p.SetScaleInProtection(group=group, instance_ids=ids, protected=protected):
            aws.set_scale_in_protection(group, ids, protected)
        case p.SetTerminationProtection(instance_id=instance_id, enabled=enabled):
            aws.set_termination_protection(instance_id, enabled)
        case p.AnnotateNode(node=node, protect=protect):
            nodes_api.patch_node(node, protection.node_annotation_patch(nodes.get(node), owner, protect=protect))
        case p.RequestDrain(namespace=namespace, lease=lease, token=token, mode=mode):
            leases_api.patch_lease(namespace, lease, busy_lease.drain_request_patch(token, owner, mode))
        case p.WithdrawDrain(namespace=namespace, lease=lease):
            leases_api.patch_lease(namespace, lease, busy_lease.withdraw_drain_patch())
        case p.Admit(namespace=namespace, lease=lease):
            leases_api.patch_lease(namespace, lease, busy_lease.admit_patch(owner))
        case p.Terminate(instance_id=instance_id):
            aws.terminate_instance(instance_id)
        case p.SetDesiredCapacity(group=group, desired=desired):
            aws.set_desired_capacity(group, desired)
        case p.HeartbeatLifecycle(group=group, hook=hook, instance_id=instance_id):
            aws.record_lifecycle_heartbeat(group, hook, instance_id)
        case p.CompleteLifecycle(group=group, hook=hook, instance_id=instance_id):
            aws.complete_lifecycle_action(group, hook, instance_id)
        case p.Event():
            pass  # posted by the report
        case _:
            raise TypeError(f"no executor for step {step!r}")
