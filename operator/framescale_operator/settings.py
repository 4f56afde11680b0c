"""The operator's settings: every ``FRAMESCALE_OPERATOR_*`` environment variable, validated at start.

The Helm chart maps its values to these variables; this class is the list of what exists.
AWS endpoints and credentials are not here: boto3 reads ``AWS_ENDPOINT_URL``, ``AWS_REGION``
and its credential chain itself.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from framescale.settings import ComponentSettings, load_settings

ENV_PREFIX = "FRAMESCALE_OPERATOR_"


class OperatorSettings(ComponentSettings):
    """Settings of the VideoPipeline operator (environment prefix ``FRAMESCALE_OPERATOR_``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Namespaces whose VideoPipelines the operator watches, comma-separated. "
            "Empty: every namespace (needs cluster-wide RBAC)."
        ),
    )
    lease_namespace: str = Field(
        default="",
        description=(
            "Namespace where workers write their busy-node Leases. Empty: each VideoPipeline's own namespace."
        ),
    )
    default_poll_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Queue poll interval for pipelines that do not set spec.autoscaling.pollIntervalSeconds.",
    )
    protection_resync_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "How often busy-node protection is reconciled in full, on top of reacting to Lease events "
            "(heals missed events and expired Leases)."
        ),
    )
    health_port: int = Field(default=8080, ge=1, le=65535, description="Port of the liveness endpoint (GET /healthz).")
    health_host: str = Field(default="0.0.0.0", description="Address the liveness endpoint listens on.")
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Port of the Prometheus endpoint (GET /metrics); 0 turns it off."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address the Prometheus endpoint listens on.")
    log_format: Literal["json", "text"] = Field(
        default="json", description="Log lines as JSON objects (json) or human-readable text (text)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Minimum level of log records that are written."
    )
    standalone: bool = Field(
        default=True,
        description=(
            "Run without kopf peering (one operator replica). Set false only with the KopfPeering resources installed."
        ),
    )
    leader_election: bool = Field(
        default=True,
        description=(
            "Elect one acting replica through a coordination.k8s.io Lease (leader.py); the others "
            "watch and stand by. False: this process always acts (run exactly one replica)."
        ),
    )
    leader_lease_name: str = Field(
        default="framescale-operator-leader", min_length=1, max_length=253, description="Name of the leader Lease."
    )
    leader_lease_namespace: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        description="Namespace of the leader Lease (the chart sets the operator's own namespace).",
    )
    leader_identity: str = Field(
        default="",
        max_length=253,
        description=(
            "This replica's holder identity in the Lease (the chart sets the pod name). "
            "Empty: host name and process id."
        ),
    )
    leader_lease_duration_seconds: int = Field(
        default=15, ge=2, le=300, description="How long a leader's Lease lasts unless renewed (client-go's default)."
    )
    leader_renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A leader that could not renew for this long stops acting; below the Lease duration.",
    )
    leader_retry_period_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Seconds between attempts to acquire or renew the Lease."
    )
    aws_max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description="Attempts per AWS call (botocore standard retry mode, with backoff on throttling).",
    )
    temporary_error_delay_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description=(
            "Seconds before the failed half of a pass (scaling or protection) is retried after AWS "
            "throttling or a write conflict; doubles per failure in a row, up to 300."
        ),
    )

    lifecycle_hook_name: str = Field(
        default="framescale-drain",
        min_length=1,
        max_length=255,
        description=(
            "Name of the groups' termination lifecycle hook (autoscaling:EC2_INSTANCE_TERMINATING) whose "
            "held instances the operator drains before it completes the action with CONTINUE."
        ),
    )
    lifecycle_max_hold_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=172_800,
        description=(
            "Longest time a termination held by the lifecycle hook waits for its node's jobs to finish; "
            "then the operator completes it anyway (shown in status.lifecycleHolds)."
        ),
    )
    lifecycle_heartbeat_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description=(
            "How often a held termination gets RecordLifecycleActionHeartbeat while its node drains "
            "(keep it well below the hook's heartbeat timeout)."
        ),
    )
    deletion_max_hold_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=172_800,
        description=(
            "Longest time a deleted VideoPipeline waits for its busy nodes to drain before its finalizer goes; "
            "busy nodes then keep their protection (a Warning Event names them)."
        ),
    )

    @model_validator(mode="after")
    def _leader_timing(self) -> Self:
        if not (
            self.leader_retry_period_seconds < self.leader_renew_deadline_seconds < self.leader_lease_duration_seconds
        ):
            raise ValueError(
                "leader election needs LEADER_RETRY_PERIOD_SECONDS < LEADER_RENEW_DEADLINE_SECONDS < "
                f"LEADER_LEASE_DURATION_SECONDS (got {self.leader_retry_period_seconds}, "
                f"{self.leader_renew_deadline_seconds}, {self.leader_lease_duration_seconds})"
            )
        return self

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def load() -> OperatorSettings:
    """Settings from the environment, or exit with one line per bad variable."""
    return load_settings(OperatorSettings)
