"""What one pass exports to Prometheus."""

from __future__ import annotations

from prometheus_client import REGISTRY

from framescale_operator import metrics, plan
from framescale_operator.aws_actuators import GroupState, QueueDepth
from framescale_operator.execute import Result
from framescale_operator.policy import Decision, Reason
from framescale_operator.protection import BusyNode, GroupInstance
from framescale_operator.reconcile import Failure, Outcome, PipelineRef

REF = PipelineRef(namespace="metrics-test", name="detector")
LABELS = {"namespace": REF.namespace, "pipeline": REF.name}


def value(name: str, **extra: str) -> float | None:
    return REGISTRY.get_sample_value(name, {**LABELS, **extra})


def outcome(*, visible: int, in_flight: int, in_service: int, desired: int, scaled_from: int | None) -> Outcome:
    instances = tuple(GroupInstance(f"i-{n:017x}", "InService", False) for n in range(in_service))
    steps = () if scaled_from is None else (plan.SetDesiredCapacity("g", desired, scaled_from),)
    return Outcome(
        status={"conditions": [{"type": "Ready", "status": "True"}]},
        status_patch={},
        depth=QueueDepth(visible, in_flight),
        group=GroupState(name="g", desired=scaled_from or desired, min_size=0, max_size=10, instances=instances),
        plan=plan.Plan(
            steps=steps, decision=Decision(desired=desired, reason=Reason.SCALE_OUT, message="m", wanted=desired)
        ),
        executed=Result(done=list(steps)),
    )


def test_backlog_metrics_follow_sagemaker_names() -> None:
    before = value("framescale_scaling_events_total", direction="out") or 0.0
    metrics.record(REF, outcome(visible=9, in_flight=3, in_service=0, desired=3, scaled_from=0), 0.01)
    assert value("framescale_approximate_backlog_size") == 12
    assert value("framescale_approximate_in_flight_size") == 3
    assert value("framescale_approximate_backlog_size_per_instance") == 12
    assert value("framescale_has_backlog_without_capacity") == 1
    assert value("framescale_desired_replicas") == 3
    assert value("framescale_current_replicas") == 0
    assert value("framescale_protected_instances") == 0
    assert value("framescale_scaling_events_total", direction="out") == before + 1

    metrics.record(REF, outcome(visible=9, in_flight=3, in_service=3, desired=3, scaled_from=None), 0.01)
    assert value("framescale_approximate_backlog_size_per_instance") == 4
    assert value("framescale_has_backlog_without_capacity") == 0
    assert value("framescale_scaling_events_total", direction="out") == before + 1


def test_forget_drops_a_deleted_pipelines_series() -> None:
    metrics.record(REF, outcome(visible=1, in_flight=0, in_service=1, desired=1, scaled_from=None), 0.01)
    metrics.forget(REF)
    assert value("framescale_approximate_backlog_size") is None
    assert value("framescale_desired_replicas") is None


def test_each_failed_half_counts_once_by_reason() -> None:
    def errors(reason: str) -> float:
        return value("framescale_operator_reconcile_errors_total", reason=reason) or 0.0

    before = errors("QueueNotFound"), errors("Retrying")
    failed = Outcome(
        status={},
        status_patch={},
        scaling_failure=Failure("QueueNotFound", "gone"),
        protection_failure=Failure("Retrying", "throttled", retryable=True),
    )
    metrics.record(REF, failed, 0.01)
    metrics.record(REF, Outcome(status={}, status_patch={}), 0.01)  # a clean pass counts nothing
    assert (errors("QueueNotFound"), errors("Retrying")) == (before[0] + 1, before[1] + 1)


def test_protected_instances_follow_the_busy_nodes_once_protected() -> None:
    busy = (BusyNode("na", "i-0000000000000000a", None, 1), BusyNode("nz", None, None, 1))
    done = Result(done=[])
    metrics.record(REF, Outcome(status={}, status_patch={}, plan=plan.Plan(steps=(), busy=busy), executed=done), 0.01)
    assert value("framescale_busy_nodes") == 2
    assert value("framescale_protected_instances") == 1  # nz is outside the group


def test_each_termination_and_drain_request_counts() -> None:
    def steps(kind: str) -> float:
        return value("framescale_operator_steps_total", step=kind) or 0.0

    before = steps("Terminate"), steps("RequestDrain"), value("framescale_scaling_events_total", direction="in") or 0
    done = [
        plan.Terminate("i-0000000000000000a", "na", "drained"),
        plan.RequestDrain("ns", "l", "nb", "t", plan.DrainMode.IF_IDLE, "scale-in"),
    ]
    metrics.record(
        REF,
        Outcome(
            status={}, status_patch={}, plan=plan.Plan(steps=tuple(done), draining=("nb",)), executed=Result(done=done)
        ),
        0.01,
    )
    assert (steps("Terminate"), steps("RequestDrain")) == (before[0] + 1, before[1] + 1)
    assert value("framescale_scaling_events_total", direction="in") == before[2] + 1
    assert value("framescale_draining_nodes") == 1
