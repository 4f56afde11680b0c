"""The worker's one settings class: ``FRAMESCALE_WORKER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from framescale.backoff import doubled
from framescale.settings import ComponentSettings

MIB = 1024 * 1024
PREFIX = "FRAMESCALE_WORKER_"
# SQS's longest visibility timeout: a message handed back for later cannot wait longer.
SQS_MAX_VISIBILITY_SECONDS = 43200


def _variable(field: str) -> str:
    return PREFIX + field.upper()


def _earlier(info: ValidationInfo, field: str) -> Any:
    """A field declared (and validated) before this one; None when it was itself invalid."""
    return info.data.get(field)


class WorkerSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX)

    # --- the queue and where results go
    queue_url: str = Field(description="SQS queue the worker long-polls for job messages.")
    dead_letter_queue_url: str | None = Field(
        default=None,
        description="Queue for permanently failed jobs; found from the queue's RedrivePolicy when unset.",
    )
    output: str | None = Field(
        default=None,
        description="Default results prefix (s3://bucket/prefix/) for messages that name none.",
    )
    success_topic_arn: str | None = Field(default=None, description="SNS topic for success notifications.")
    error_topic_arn: str | None = Field(default=None, description="SNS topic for error notifications.")

    # --- the model server
    model_server: str = Field(default="localhost:8500", description="TF Serving gRPC address.")
    model_name: str = Field(default="detector", description="Model name as TF Serving knows it.")
    model_version: int | None = Field(default=None, description="Pin a model version; latest when unset.")
    signature_name: str = Field(default="serving_default")
    input_size: int = Field(
        default=320,
        ge=32,
        le=4096,
        description="Side of the square frame sent to the model when its signature has no fixed size.",
    )
    resize_mode: Literal["stretch", "letterbox"] = Field(
        default="stretch", description="How frames are fitted to the model input; boxes are mapped back."
    )
    score_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    max_detections: int = Field(default=100, ge=1, le=10000)
    labels: dict[int, str] = Field(
        default_factory=lambda: {1: "person"},
        description="Class id to label name (JSON object).",
    )
    grpc_timeout_seconds: float = Field(default=60.0, gt=0)
    grpc_max_message_bytes: int = Field(default=256 * MIB, ge=4 * MIB)

    # --- throughput
    batch_size: int = Field(default=8, ge=1, le=256, description="Frames per Predict request.")
    max_in_flight: int = Field(default=3, ge=1, le=64, description="Predict requests in flight per job.")
    slots: int = Field(default=1, ge=1, le=64, description="Jobs processed at once (one process each).")
    sample_fps: float = Field(default=1.0, gt=0, description="Default frames per second sampled.")
    sample_mode: Literal["fps", "keyframes"] = Field(
        default="fps",
        description="Default sampling: `fps` (SAMPLE_FPS frames a second) or `keyframes` (one frame per keyframe).",
    )

    # --- SQS behaviour
    wait_time_seconds: int = Field(default=20, ge=0, le=20, description="SQS long-poll wait.")
    visibility_timeout_seconds: int = Field(
        default=120, ge=10, le=43200, description="Visibility granted per heartbeat while a job runs."
    )
    heartbeat_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Heartbeat period, below the visibility timeout; a third of the visibility timeout when unset.",
    )
    retry_delay_seconds: int = Field(
        default=30,
        ge=0,
        le=SQS_MAX_VISIBILITY_SECONDS,
        description="Delay before a transiently failed job is seen again; doubles with each receive.",
    )
    retry_delay_max_seconds: int = Field(
        default=3600,
        ge=0,
        le=SQS_MAX_VISIBILITY_SECONDS,
        description="Cap on the growing retry delay (never below RETRY_DELAY_SECONDS).",
    )
    transient_retries: int = Field(default=4, ge=0, le=20, description="In-job retries of transient errors.")
    backoff_base_seconds: float = Field(default=0.5, gt=0)
    backoff_max_seconds: float = Field(default=10.0, gt=0)

    # --- limits, enforced before work starts
    max_object_bytes: int = Field(default=10 * 1024 * MIB, ge=1)
    max_duration_seconds: float = Field(default=6 * 3600.0, gt=0)
    max_pixels: int = Field(default=3840 * 2160, ge=1, description="Largest frame (width*height) accepted.")
    max_bad_frame_ratio: float = Field(
        default=0.1, ge=0, le=1, description="Undecodable frames tolerated before a job fails."
    )

    # --- process life
    work_dir: Path = Field(default=Path("/tmp/framescale"), description="Scratch space for downloads.")
    shutdown_grace_seconds: float = Field(default=60.0, ge=0)
    health_port: int = Field(default=8080, ge=0, le=65535, description="/healthz /readyz /metrics; 0 = off.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    # --- the node Lease and the drain handshake (Kubernetes only)
    lease_enabled: bool = Field(
        default=False,
        description="Hold this node's Lease while the worker runs; take jobs only once the operator admits the node.",
    )
    node_name: str | None = Field(default=None, description="This node's name (downward API spec.nodeName).")
    pod_name: str | None = Field(default=None, description="This pod's name (downward API), the Lease holder.")
    namespace: str = Field(default="default", description="Namespace of the node Lease.")
    pipeline_name: str | None = Field(default=None, description="VideoPipeline this worker serves.")
    lease_duration_seconds: int = Field(
        default=60, ge=10, le=3600, description="Seconds the node Lease lasts without renewal; renewed every third."
    )
    lease_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="How often the Lease is read for admission and drain requests (a drain is answered that soon).",
    )

    # Field validators (not one model validator) so each error is reported under the
    # variable to change; a check across fields sits on the later field and names both.

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)")
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str | None) -> str | None:
        if value is None:
            return value
        bucket = value[len("s3://") :].partition("/")[0] if value.startswith("s3://") else ""
        if not bucket:
            raise ValueError("must be an s3://bucket/prefix/ URL naming a bucket")
        return value

    @field_validator("heartbeat_seconds")
    @classmethod
    def _heartbeat(cls, value: float | None, info: ValidationInfo) -> float | None:
        visibility = _earlier(info, "visibility_timeout_seconds")
        if value is not None and visibility is not None and value >= visibility:
            raise ValueError(
                f"must be less than {_variable('visibility_timeout_seconds')} ({visibility}), or the message "
                "becomes visible to other workers between beats"
            )
        return value

    @field_validator("backoff_max_seconds")
    @classmethod
    def _backoff_max(cls, value: float, info: ValidationInfo) -> float:
        base = _earlier(info, "backoff_base_seconds")
        if base is not None and value < base:
            raise ValueError(f"must be at least {_variable('backoff_base_seconds')} ({base})")
        return value

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if _earlier(info, "lease_enabled") and not value:
            raise ValueError(
                f"is needed when {_variable('lease_enabled')} is true (set it from the downward API spec.nodeName)"
            )
        return value

    @property
    def heartbeat_period(self) -> float:
        return self.heartbeat_seconds or self.visibility_timeout_seconds / 3.0

    def retry_delay(self, receive_count: int) -> int:
        """Visibility delay after a transient failure on the ``receive_count``-th receive.

        It doubles with each receive (up to the cap) so that a long outage spends hours,
        not minutes, of the queue's redrive maxReceiveCount.
        """
        cap = max(self.retry_delay_max_seconds, self.retry_delay_seconds)
        return int(doubled(self.retry_delay_seconds, receive_count - 1, cap))
