"""The AWS side of the operator: read the queue and the group, set capacity and protection.

One class, ``AwsActuator``, over three boto3 clients made once at start-up. Each method is
one idempotent call (or a small batch of them). Protection flags come with EC2 tags that say
which pipeline set them (``protection.MARKER_TAGS``), so that only those are ever released.
botocore's standard retry mode already backs off on throttling; what is still failing
afterwards is raised as ``AwsRetryable`` (throttling, a scaling activity in progress,
contention: try again shortly) or ``AwsFailure`` (anything else), so the caller can say what
happens next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from framescale import aws
from framescale.aws import client_error_code
from framescale_operator.protection import MARKER_TAGS, SCALE_IN_MARKER, TERMINATION_MARKER, GroupInstance, Markers

RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        # Auto Scaling: another change to the group is in flight.
        "ScalingActivityInProgress",
        "ResourceContention",
    }
)
QUEUE_NOT_FOUND_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
INSTANCE_NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
# SetInstanceProtection takes at most this many instance ids per call.
PROTECTION_BATCH = 50
# DescribeTags takes at most this many values per filter.
FILTER_BATCH = 200


class AwsError(Exception):
    """An AWS call failed after botocore's own retries."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"{operation}: {code}: {message}")
        self.operation = operation
        self.code = code
        self.message = message


class AwsRetryable(AwsError):
    """Throttling or a conflicting change in flight: the same call should work a little later."""


class AwsFailure(AwsError):
    """Anything else (permissions, validation, a missing resource)."""


class QueueNotFound(AwsFailure):
    pass


class GroupNotFound(AwsFailure):
    pass


@dataclass(frozen=True)
class QueueDepth:
    visible: int
    in_flight: int
    delayed: int = 0  # sent with a delay, not yet visible: work that will need a node

    @property
    def backlog(self) -> int:
        return self.visible + self.in_flight + self.delayed


@dataclass(frozen=True)
class GroupState:
    name: str
    desired: int
    min_size: int
    max_size: int
    instances: tuple[GroupInstance, ...]
    new_instances_protected: bool = True  # NewInstancesProtectedFromScaleIn
    warm_pool: bool = False  # the group has a warm pool (refused: see the operator README)

    @property
    def in_service(self) -> int:
        return sum(1 for instance in self.instances if instance.lifecycle_state == "InService")


class AwsApi(Protocol):
    """What the reconciler needs from AWS (a test hands in a fake)."""

    def queue_depth(self, queue_url: str) -> QueueDepth: ...

    def describe_group(self, name: str) -> GroupState: ...

    def set_desired_capacity(self, name: str, desired: int) -> None: ...

    def set_scale_in_protection(self, name: str, instance_ids: Sequence[str], protected: bool) -> None: ...

    def protect_new_instances(self, name: str) -> None: ...

    def terminate_instance(self, instance_id: str) -> None: ...

    def record_lifecycle_heartbeat(self, name: str, hook: str, instance_id: str) -> None: ...

    def complete_lifecycle_action(self, name: str, hook: str, instance_id: str) -> None: ...

    def termination_protection(self, instance_ids: Iterable[str]) -> dict[str, bool]: ...

    def set_termination_protection(self, instance_id: str, enabled: bool) -> None: ...

    def protection_markers(self, instance_ids: Iterable[str]) -> dict[str, Markers]: ...

    def set_marker(self, instance_id: str, key: str, owner: str) -> None: ...

    def clear_marker(self, instance_id: str, key: str, owner: str) -> None: ...


def _translate(operation: str, error: Exception) -> AwsError:
    if isinstance(error, ClientError):
        code = client_error_code(error) or "Unknown"
        message = str(error.response.get("Error", {}).get("Message", error))
        if code in RETRYABLE_CODES:
            return AwsRetryable(operation, code, message)
        return AwsFailure(operation, code, message)
    # Connection failures and timeouts: the endpoint may be back in a moment.
    return AwsRetryable(operation, type(error).__name__, str(error))


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class AwsActuator:
    """``AwsApi`` over boto3 (honours ``AWS_ENDPOINT_URL``; standard retry mode)."""

    def __init__(self, *, max_attempts: int = 5, clients: dict[str, Any] | None = None) -> None:
        config = aws.client_config(max_attempts=max_attempts)
        given = clients or {}
        self.sqs = given.get("sqs") or aws.client("sqs", config=config)
        self.autoscaling = given.get("autoscaling") or aws.client("autoscaling", config=config)
        self.ec2 = given.get("ec2") or aws.client("ec2", config=config)

    def close(self) -> None:
        for client in (self.sqs, self.autoscaling, self.ec2):
            client.close()

    def queue_depth(self, queue_url: str) -> QueueDepth:
        try:
            response = self.sqs.get_queue_attributes(
                QueueUrl=queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
        except ClientError as error:
            code = client_error_code(error)
            if code in QUEUE_NOT_FOUND_CODES:
                raise QueueNotFound("GetQueueAttributes", code, f"queue {queue_url} does not exist") from error
            raise _translate("GetQueueAttributes", error) from error
        except BotoCoreError as error:
            raise _translate("GetQueueAttributes", error) from error
        attributes = response.get("Attributes", {})
        return QueueDepth(
            visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
        )

    def describe_group(self, name: str) -> GroupState:
        try:
            response = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        except (ClientError, BotoCoreError) as error:
            raise _translate("DescribeAutoScalingGroups", error) from error
        groups = response.get("AutoScalingGroups", [])
        if not groups:
            raise GroupNotFound("DescribeAutoScalingGroups", "NotFound", f"Auto Scaling group {name} does not exist")
        group = groups[0]
        instances = tuple(
            GroupInstance(
                instance_id=str(item["InstanceId"]),
                lifecycle_state=str(item.get("LifecycleState", "")),
                protected_from_scale_in=bool(item.get("ProtectedFromScaleIn", False)),
                health_status=str(item.get("HealthStatus", "Healthy")),
            )
            for item in group.get("Instances", [])
        )
        return GroupState(
            name=name,
            desired=int(group.get("DesiredCapacity", 0)),
            min_size=int(group.get("MinSize", 0)),
            max_size=int(group.get("MaxSize", 0)),
            instances=instances,
            new_instances_protected=bool(group.get("NewInstancesProtectedFromScaleIn", False)),
            warm_pool=bool(group.get("WarmPoolConfiguration")),
        )

    def set_desired_capacity(self, name: str, desired: int) -> None:
        try:
            # HonorCooldown=False: the operator keeps its own cooldowns, per direction.
            self.autoscaling.set_desired_capacity(
                AutoScalingGroupName=name, DesiredCapacity=desired, HonorCooldown=False
            )
        except (ClientError, BotoCoreError) as error:
            raise _translate("SetDesiredCapacity", error) from error

    def set_scale_in_protection(self, name: str, instance_ids: Sequence[str], protected: bool) -> None:
        for batch in _batches(list(instance_ids), PROTECTION_BATCH):
            try:
                self.autoscaling.set_instance_protection(
                    AutoScalingGroupName=name, InstanceIds=list(batch), ProtectedFromScaleIn=protected
                )
            except (ClientError, BotoCoreError) as error:
                raise _translate("SetInstanceProtection", error) from error

    def protect_new_instances(self, name: str) -> None:
        """The group launches every new instance protected from scale-in (the group never picks a victim)."""
        try:
            self.autoscaling.update_auto_scaling_group(AutoScalingGroupName=name, NewInstancesProtectedFromScaleIn=True)
        except (ClientError, BotoCoreError) as error:
            raise _translate("UpdateAutoScalingGroup", error) from error

    def terminate_instance(self, instance_id: str) -> None:
        """Remove one instance the operator chose, lowering the desired capacity with it."""
        try:
            self.autoscaling.terminate_instance_in_auto_scaling_group(
                InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
            )
        except ClientError as error:
            if client_error_code(error) == "ValidationError" and "not found" in str(error).lower():
                return  # already gone
            raise _translate("TerminateInstanceInAutoScalingGroup", error) from error
        except BotoCoreError as error:
            raise _translate("TerminateInstanceInAutoScalingGroup", error) from error

    def record_lifecycle_heartbeat(self, name: str, hook: str, instance_id: str) -> None:
        try:
            self.autoscaling.record_lifecycle_action_heartbeat(
                AutoScalingGroupName=name, LifecycleHookName=hook, InstanceId=instance_id
            )
        except (ClientError, BotoCoreError) as error:
            raise _translate("RecordLifecycleActionHeartbeat", error) from error

    def complete_lifecycle_action(self, name: str, hook: str, instance_id: str) -> None:
        """Let a held termination go on (CONTINUE): the node's worker drained, or the hold ran out."""
        try:
            self.autoscaling.complete_lifecycle_action(
                AutoScalingGroupName=name,
                LifecycleHookName=hook,
                InstanceId=instance_id,
                LifecycleActionResult="CONTINUE",
            )
        except (ClientError, BotoCoreError) as error:
            raise _translate("CompleteLifecycleAction", error) from error

    def termination_protection(self, instance_ids: Iterable[str]) -> dict[str, bool]:
        result: dict[str, bool] = {}
        for instance_id in instance_ids:
            try:
                response = self.ec2.describe_instance_attribute(
                    InstanceId=instance_id, Attribute="disableApiTermination"
                )
            except ClientError as error:
                if client_error_code(error) in INSTANCE_NOT_FOUND_CODES:
                    continue  # gone: nothing to protect or release
                raise _translate("DescribeInstanceAttribute", error) from error
            except BotoCoreError as error:
                raise _translate("DescribeInstanceAttribute", error) from error
            result[instance_id] = bool(response.get("DisableApiTermination", {}).get("Value", False))
        return result

    def set_termination_protection(self, instance_id: str, enabled: bool) -> None:
        self._instance_write(
            "ModifyInstanceAttribute",
            self.ec2.modify_instance_attribute,
            InstanceId=instance_id,
            DisableApiTermination={"Value": enabled},
        )

    def protection_markers(self, instance_ids: Iterable[str]) -> dict[str, Markers]:
        """The framescale tags of the given instances (those without any are left out)."""
        found: dict[str, dict[str, str]] = {}
        paginator = self.ec2.get_paginator("describe_tags")
        for batch in _batches(sorted(set(instance_ids)), FILTER_BATCH):
            filters = [
                {"Name": "resource-type", "Values": ["instance"]},
                {"Name": "resource-id", "Values": list(batch)},
                {"Name": "key", "Values": list(MARKER_TAGS)},
            ]
            try:
                for page in paginator.paginate(Filters=filters):
                    for tag in page.get("Tags", []):
                        found.setdefault(str(tag["ResourceId"]), {})[str(tag["Key"])] = str(tag.get("Value", ""))
            except (ClientError, BotoCoreError) as error:
                raise _translate("DescribeTags", error) from error
        return {
            instance_id: Markers(scale_in=tags.get(SCALE_IN_MARKER), termination=tags.get(TERMINATION_MARKER))
            for instance_id, tags in found.items()
        }

    def set_marker(self, instance_id: str, key: str, owner: str) -> None:
        self._instance_write(
            "CreateTags", self.ec2.create_tags, Resources=[instance_id], Tags=[{"Key": key, "Value": owner}]
        )

    def clear_marker(self, instance_id: str, key: str, owner: str) -> None:
        # With a value, DeleteTags removes the tag only while it still names this owner.
        self._instance_write(
            "DeleteTags", self.ec2.delete_tags, Resources=[instance_id], Tags=[{"Key": key, "Value": owner}]
        )

    @staticmethod
    def _instance_write(operation: str, call: Callable[..., Any], **params: Any) -> None:
        """One write to one instance; an instance that is gone needs nothing more."""
        try:
            call(**params)
        except ClientError as error:
            if client_error_code(error) in INSTANCE_NOT_FOUND_CODES:
                return
            raise _translate(operation, error) from error
        except BotoCoreError as error:
            raise _translate(operation, error) from error
