"""Every Prometheus metric the operator exports, and nothing else.

Names follow what SageMaker asynchronous inference users already watch
(ApproximateBacklogSize, ApproximateBacklogSizePerInstance, HasBacklogWithoutCapacity),
in Prometheus style. Labels are the pipeline's namespace and name (a handful of values),
plus a direction or a reason word; never a message, node or instance id.
"""

from __future__ import annotations

import contextlib
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from framescale_operator import plan, protection
from framescale_operator.reconcile import Outcome, PipelineRef

PIPELINE_LABELS = ("namespace", "pipeline")

BACKLOG = Gauge(
    "framescale_approximate_backlog_size",
    "Messages in the pipeline's queue: visible plus in flight (SageMaker: ApproximateBacklogSize).",
    PIPELINE_LABELS,
)
IN_FLIGHT = Gauge(
    "framescale_approximate_in_flight_size",
    "Messages received by workers and not yet deleted.",
    PIPELINE_LABELS,
)
BACKLOG_PER_INSTANCE = Gauge(
    "framescale_approximate_backlog_size_per_instance",
    "Backlog divided by the instances in service; the whole backlog when none are "
    "(SageMaker: ApproximateBacklogSizePerInstance).",
    PIPELINE_LABELS,
)
DESIRED_REPLICAS = Gauge(
    "framescale_desired_replicas", "Desired capacity the operator set on the Auto Scaling group.", PIPELINE_LABELS
)
CURRENT_REPLICAS = Gauge(
    "framescale_current_replicas", "Instances in service in the Auto Scaling group.", PIPELINE_LABELS
)
HAS_BACKLOG_WITHOUT_CAPACITY = Gauge(
    "framescale_has_backlog_without_capacity",
    "1 when messages wait and no instance is in service (SageMaker: HasBacklogWithoutCapacity).",
    PIPELINE_LABELS,
)
SCALING_EVENTS = Counter(
    "framescale_scaling_events",
    "Changes of the desired capacity made by the operator.",
    (*PIPELINE_LABELS, "direction"),
)
PROTECTED_INSTANCES = Gauge(
    "framescale_protected_instances",
    "Instances protected from scale-in and termination because their node is busy.",
    PIPELINE_LABELS,
)
BUSY_NODES = Gauge("framescale_busy_nodes", "Nodes with a held, unexpired busy Lease.", PIPELINE_LABELS)
DRAINING_NODES = Gauge(
    "framescale_draining_nodes", "Nodes asked to drain (scale-in, held terminations, deletion).", PIPELINE_LABELS
)
LIFECYCLE_HOLDS = Gauge(
    "framescale_lifecycle_holds",
    "Terminations the group's lifecycle hook holds while their nodes drain.",
    PIPELINE_LABELS,
)
OWNERSHIP_CONFLICT = Gauge(
    "framescale_ownership_conflict",
    "1 while another VideoPipeline owns this one's group or queue (this one does not act).",
    PIPELINE_LABELS,
)
STEPS = Counter(
    "framescale_operator_steps",
    "Steps the operator carried out, by kind (Terminate, RequestDrain, WithdrawDrain, CompleteLifecycle, ...).",
    (*PIPELINE_LABELS, "step"),
)
RECONCILE_ERRORS = Counter(
    "framescale_operator_reconcile_errors",
    "Failed halves (scaling, protection) of reconcile passes, by reason.",
    (*PIPELINE_LABELS, "reason"),
)
RECONCILE_SECONDS = Histogram(
    "framescale_operator_reconcile_duration_seconds",
    "Time one reconcile pass takes, AWS calls included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

_PER_PIPELINE = (
    BACKLOG,
    IN_FLIGHT,
    BACKLOG_PER_INSTANCE,
    DESIRED_REPLICAS,
    CURRENT_REPLICAS,
    HAS_BACKLOG_WITHOUT_CAPACITY,
    PROTECTED_INSTANCES,
    BUSY_NODES,
    DRAINING_NODES,
    LIFECYCLE_HOLDS,
    OWNERSHIP_CONFLICT,
)
STEP_KINDS = tuple(
    kind.__name__
    for kind in (
        plan.Terminate,
        plan.RequestDrain,
        plan.WithdrawDrain,
        plan.Admit,
        plan.SetDesiredCapacity,
        plan.HeartbeatLifecycle,
        plan.CompleteLifecycle,
    )
)


def record(ref: PipelineRef, outcome: Outcome, duration_seconds: float) -> None:
    """Export what one pass saw and did."""
    labels = (ref.namespace, ref.name)
    RECONCILE_SECONDS.observe(duration_seconds)
    for failure in outcome.failures:
        RECONCILE_ERRORS.labels(*labels, failure.reason).inc()
    if outcome.depth is not None:
        backlog = outcome.depth.backlog
        BACKLOG.labels(*labels).set(backlog)
        IN_FLIGHT.labels(*labels).set(outcome.depth.in_flight)
        in_service = outcome.group.in_service if outcome.group is not None else 0
        BACKLOG_PER_INSTANCE.labels(*labels).set(backlog / in_service if in_service else backlog)
        HAS_BACKLOG_WITHOUT_CAPACITY.labels(*labels).set(1 if backlog > 0 and in_service == 0 else 0)
    if outcome.group is not None:
        CURRENT_REPLICAS.labels(*labels).set(outcome.group.in_service)
        desired = outcome.decision.desired if outcome.decision is not None else outcome.group.desired
        DESIRED_REPLICAS.labels(*labels).set(desired)
    if outcome.busy is not None:
        BUSY_NODES.labels(*labels).set(len(outcome.busy))
    if outcome.instances_protected:
        PROTECTED_INSTANCES.labels(*labels).set(len(protection.instances_of(outcome.busy or ())))
    if outcome.plan is not None:
        OWNERSHIP_CONFLICT.labels(*labels).set(1 if outcome.plan.conflict else 0)
        DRAINING_NODES.labels(*labels).set(len(outcome.plan.draining))
        LIFECYCLE_HOLDS.labels(*labels).set(len(outcome.plan.holds))
    if outcome.executed is not None:
        for step in outcome.executed.done:
            kind = type(step).__name__
            if kind in STEP_KINDS:
                STEPS.labels(*labels, kind).inc()
            if isinstance(step, plan.SetDesiredCapacity):
                SCALING_EVENTS.labels(*labels, "out" if step.desired > step.previous else "in").inc()
            elif isinstance(step, plan.Terminate):
                SCALING_EVENTS.labels(*labels, "in").inc()


def forget(ref: PipelineRef) -> None:
    """Drop a deleted pipeline's series."""
    labels = (ref.namespace, ref.name)
    for gauge in _PER_PIPELINE:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
    for direction in ("out", "in"):
        with contextlib.suppress(KeyError):
            SCALING_EVENTS.remove(*labels, direction)
    for kind in STEP_KINDS:
        with contextlib.suppress(KeyError):
            STEPS.remove(*labels, kind)


def serve(host: str, port: int) -> WSGIServer:
    """Serve ``/metrics`` from a daemon thread; ``shutdown()`` the returned server to stop it."""
    server, _thread = start_http_server(port, addr=host)
    return server
