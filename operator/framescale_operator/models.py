"""The VideoPipeline resource as typed models: the one source of truth.

The CRD's OpenAPI schema (``crd.py``), the operator's validation and the field documentation
all come from these classes. Field names are snake_case in Python and camelCase in the API
(``alias_generator``); descriptions become the schema's descriptions, so ``kubectl explain
videopipeline.spec`` shows the text written here.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from framescale import names

QUEUE_URL_PATTERN = r"^https?://\S+$"
# EC2 Auto Scaling group names: 1-255 characters, no colons (those mark ARNs).
GROUP_NAME_PATTERN = r"^[^:]{1,255}$"

MIN_MAX_RULE = "self.minReplicas <= self.maxReplicas"
MIN_MAX_MESSAGE = "minReplicas must not exceed maxReplicas"


class _ApiModel(BaseModel):
    """camelCase in the API, snake_case in Python; unknown fields are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class Mode(StrEnum):
    """Who sets the node count: the operator from the queue, or whoever writes spec.replicas."""

    AUTOSCALING = "Autoscaling"
    MANUAL = "Manual"


class NodeGroup(_ApiModel):
    """The accelerator node group the pipeline's workers run on."""

    auto_scaling_group_name: Annotated[str, StringConstraints(pattern=GROUP_NAME_PATTERN)] = Field(
        description=(
            "Name of the EC2 Auto Scaling group behind the node group (for EKS managed node groups, "
            "the group EKS created). The operator sets its desired capacity and the scale-in "
            "protection of its instances."
        ),
    )
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {names.ACCELERATOR_NODE_LABEL: "true"},
        description="Labels that select the group's Kubernetes Nodes (the worker DaemonSet's node selector).",
    )


class Autoscaling(_ApiModel):
    """How the node count follows the queue in Autoscaling mode."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [{"rule": MIN_MAX_RULE, "message": MIN_MAX_MESSAGE}]}
    )

    min_replicas: int = Field(
        default=0, ge=0, le=10_000, description="Fewest nodes while autoscaling; 0 lets the group scale to zero."
    )
    max_replicas: int = Field(default=10, ge=1, le=10_000, description="Most nodes while autoscaling.")
    target_backlog_per_replica: int = Field(
        default=5,
        ge=1,
        le=1_000_000,
        description=(
            "Messages (visible plus in flight) one node is expected to hold; "
            "desired nodes = ceil(backlog / targetBacklogPerReplica)."
        ),
    )
    activation_backlog: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description=(
            "At zero nodes, scale out as soon as the backlog exceeds this many messages, straight to "
            "the size the backlog calls for. 0: the first message starts a node."
        ),
    )
    scale_out_cooldown_seconds: int = Field(
        default=60,
        ge=0,
        le=86_400,
        description="Seconds after a scale-out before the next scale-out. Scaling out from zero never waits.",
    )
    scale_in_cooldown_seconds: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description="Seconds after any change of the node count before a scale-in.",
    )
    scale_in_stabilization_seconds: int = Field(
        default=60,
        ge=0,
        le=86_400,
        description=(
            "Seconds the backlog must keep calling for fewer nodes before a scale-in starts "
            "(queue counts are approximate: one low read never scales in). 0: at once."
        ),
    )
    poll_interval_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3_600,
        description=(
            "Seconds between reads of the queue. Unset: the operator's default "
            "(FRAMESCALE_OPERATOR_DEFAULT_POLL_INTERVAL_SECONDS, 15)."
        ),
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"{MIN_MAX_MESSAGE} (minReplicas={self.min_replicas}, maxReplicas={self.max_replicas})")
        return self


class VideoPipelineSpec(_ApiModel):
    """What the user wants: which queue feeds which node group, and how to size it."""

    mode: Mode = Field(
        default=Mode.AUTOSCALING,
        description=(
            "Autoscaling: the operator sizes the node group from the queue and mirrors its count into "
            "spec.replicas. Manual: the node group is held at spec.replicas. Writing spec.replicas while "
            "autoscaling (`kubectl scale vp/NAME --replicas=N`, an HPA, KEDA) switches to Manual; return "
            'with: kubectl patch vp/NAME --type=merge -p \'{"spec":{"mode":"Autoscaling"}}\'.'
        ),
    )
    replicas: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description=(
            "The node count the scale subresource reads and writes; always present, so GET /scale never "
            "fails. In Manual mode the node group is held at it; in Autoscaling mode the operator writes "
            "its own decision here, and a write by anyone else pins the pipeline (mode becomes Manual)."
        ),
    )
    worker_selector: dict[str, str] | None = Field(
        default=None,
        description=(
            "Labels of this pipeline's worker pods (the chart sets its DaemonSet's pod labels). Published "
            "as status.selector, the scale subresource's label selector, for HPA and KEDA. Unset or empty: "
            "app.kubernetes.io/component=worker,framescale.io/pipeline=NAME."
        ),
    )
    queue_url: Annotated[str, StringConstraints(pattern=QUEUE_URL_PATTERN, max_length=2048)] = Field(
        description="URL of the SQS queue that holds the job messages.",
    )
    node_group: NodeGroup = Field(description="The node group that runs the workers.")
    daemon_set_name: str | None = Field(
        default=None,
        max_length=253,
        description="Name of the worker DaemonSet (informational; shown to users, not used for sizing).",
    )
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="Autoscaling bounds and behaviour (used in Autoscaling mode)."
    )


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_ApiModel):
    """A Kubernetes-style condition."""

    type: str = Field(description="Kind of condition: Ready, Scaling or Protected.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One CamelCase word saying why.")
    message: str = Field(default="", description="What happened, for humans.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed (not the reason or message)."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec the condition was computed from."
    )


class ScaleDirection(StrEnum):
    OUT = "Out"
    IN = "In"


class LifecycleHold(_ApiModel):
    """A termination the group's lifecycle hook holds while the node's worker drains."""

    model_config = ConfigDict(frozen=False)

    instance_id: str = Field(description="The EC2 instance in Terminating:Wait.")
    node: str | None = Field(default=None, description="Its Kubernetes Node, when known.")
    since: datetime = Field(description="When the operator first saw it held.")
    last_heartbeat: datetime | None = Field(default=None, description="The last RecordLifecycleActionHeartbeat.")
    deadline: datetime = Field(description="When it is completed even if the node has not drained.")


class VideoPipelineStatus(_ApiModel):
    """What the operator saw and did at its last poll."""

    model_config = ConfigDict(frozen=False)

    mode: Mode | None = Field(
        default=None, description="The mode the last pass ran in (spec.mode, or Manual once a pin was seen)."
    )
    selector: str | None = Field(
        default=None,
        description=(
            "Label selector (string form) of the pipeline's worker pods: the scale subresource's "
            "labelSelectorPath, so an HPA or KEDA ScaledObject can target the VideoPipeline."
        ),
    )
    replicas: int | None = Field(default=None, description="Instances in service in the Auto Scaling group.")
    desired_replicas: int | None = Field(
        default=None, description="The Auto Scaling group's desired capacity after the last decision."
    )
    backlog: int | None = Field(default=None, description="Messages in the queue: visible plus in flight.")
    in_flight: int | None = Field(default=None, description="Messages received by workers and not yet deleted.")
    busy_nodes: list[str] = Field(
        default_factory=list, description="Nodes whose busy Lease is held and unexpired (sorted)."
    )
    protected_instances: list[str] = Field(
        default_factory=list,
        description="EC2 instances protected from scale-in because their node is busy (sorted).",
    )
    delayed: int | None = Field(default=None, description="Messages sent with a delay, not yet visible.")
    draining_nodes: list[str] = Field(
        default_factory=list,
        description="Nodes the operator asked to drain (scale-in, held terminations, deletion), sorted.",
    )
    scale_in_wanted_since: datetime | None = Field(
        default=None,
        description="Since when the backlog has called for fewer nodes (the scale-in stabilization window).",
    )
    lifecycle_holds: list[LifecycleHold] = Field(
        default_factory=list,
        description="Terminations the lifecycle hook holds while their nodes drain.",
    )
    last_scale_time: datetime | None = Field(
        default=None, description="When the operator last changed the desired capacity."
    )
    last_scale_direction: ScaleDirection | None = Field(
        default=None, description="Direction of that change (Out or In); cooldowns are measured from it."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec the status reflects."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description=(
            "Protected (busy-node protection matches the Leases), Scaling (the last decision, or why none "
            "could be made) and Ready (both are True)."
        ),
    )


class VideoPipeline(_ApiModel):
    """A video object-detection pipeline: an SQS queue feeding a node group sized from its backlog."""

    spec: VideoPipelineSpec = Field(description="Desired state.")
    status: VideoPipelineStatus | None = Field(default=None, description="Observed state, written by the operator.")


def parse_spec(spec: dict[str, Any]) -> VideoPipelineSpec:
    """Validate a spec as read from the API (camelCase); raises pydantic.ValidationError."""
    return VideoPipelineSpec.model_validate(spec)


def describe_errors(error: Exception) -> str:
    """A short, one-line account of a validation error, field paths in API (camelCase) names."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    parts = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "spec"
        parts.append(f"spec.{path}: {problem['msg']}" if path != "spec" else problem["msg"])
    return "; ".join(parts)
