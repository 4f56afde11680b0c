"""The AWS actuators' calls and error translation, with botocore's Stubber (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from framescale_operator.aws_actuators import (
    PROTECTION_BATCH,
    AwsActuator,
    AwsFailure,
    AwsRetryable,
    GroupNotFound,
    QueueNotFound,
)
from framescale_operator.protection import SCALE_IN_MARKER, TERMINATION_MARKER, Markers

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"


def _client(service: str) -> Any:
    return boto3.client(
        service,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


@pytest.fixture
def actuator() -> Iterator[AwsActuator]:
    clients = {name: _client(name) for name in ("sqs", "autoscaling", "ec2")}
    made = AwsActuator(clients=clients)
    yield made
    made.close()


def test_queue_depth_counts_visible_in_flight_and_delayed(actuator: AwsActuator) -> None:
    with Stubber(actuator.sqs) as stub:
        stub.add_response(
            "get_queue_attributes",
            {
                "Attributes": {
                    "ApproximateNumberOfMessages": "7",
                    "ApproximateNumberOfMessagesNotVisible": "3",
                    "ApproximateNumberOfMessagesDelayed": "2",
                }
            },
            {
                "QueueUrl": QUEUE,
                "AttributeNames": [
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            },
        )
        depth = actuator.queue_depth(QUEUE)
    assert (depth.visible, depth.in_flight, depth.delayed, depth.backlog) == (7, 3, 2, 12)


def test_scale_in_is_a_termination_that_lowers_the_desired_capacity(actuator: AwsActuator) -> None:
    with Stubber(actuator.autoscaling) as stub:
        stub.add_response(
            "terminate_instance_in_auto_scaling_group",
            {},
            {"InstanceId": "i-0000000000000000a", "ShouldDecrementDesiredCapacity": True},
        )
        actuator.terminate_instance("i-0000000000000000a")


def test_held_termination_is_completed_with_continue(actuator: AwsActuator) -> None:
    with Stubber(actuator.autoscaling) as stub:
        stub.add_response(
            "record_lifecycle_action_heartbeat",
            {},
            {"AutoScalingGroupName": "g", "LifecycleHookName": "h", "InstanceId": "i-0000000000000000a"},
        )
        stub.add_response(
            "complete_lifecycle_action",
            {},
            {
                "AutoScalingGroupName": "g",
                "LifecycleHookName": "h",
                "InstanceId": "i-0000000000000000a",
                "LifecycleActionResult": "CONTINUE",
            },
        )
        stub.add_response(
            "update_auto_scaling_group", {}, {"AutoScalingGroupName": "g", "NewInstancesProtectedFromScaleIn": True}
        )
        actuator.record_lifecycle_heartbeat("g", "h", "i-0000000000000000a")
        actuator.complete_lifecycle_action("g", "h", "i-0000000000000000a")
        actuator.protect_new_instances("g")


def test_missing_queue(actuator: AwsActuator) -> None:
    with Stubber(actuator.sqs) as stub:
        stub.add_client_error("get_queue_attributes", service_error_code="AWS.SimpleQueueService.NonExistentQueue")
        with pytest.raises(QueueNotFound):
            actuator.queue_depth(QUEUE)


def test_missing_group(actuator: AwsActuator) -> None:
    with Stubber(actuator.autoscaling) as stub:
        stub.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": []})
        with pytest.raises(GroupNotFound):
            actuator.describe_group("gpu")


@pytest.mark.parametrize("code", ["Throttling", "ScalingActivityInProgress", "ResourceContention"])
def test_throttling_and_conflicts_are_retryable(actuator: AwsActuator, code: str) -> None:
    with Stubber(actuator.autoscaling) as stub:
        stub.add_client_error("set_desired_capacity", service_error_code=code, http_status_code=400)
        with pytest.raises(AwsRetryable) as caught:
            actuator.set_desired_capacity("gpu", 3)
    assert caught.value.code == code


def test_other_errors_are_failures(actuator: AwsActuator) -> None:
    with Stubber(actuator.autoscaling) as stub:
        stub.add_client_error("set_desired_capacity", service_error_code="ValidationError", http_status_code=400)
        with pytest.raises(AwsFailure) as caught:
            actuator.set_desired_capacity("gpu", 99)
    assert not isinstance(caught.value, AwsRetryable)


def test_desired_capacity_does_not_honour_the_group_cooldown(actuator: AwsActuator) -> None:
    with Stubber(actuator.autoscaling) as stub:
        stub.add_response(
            "set_desired_capacity", {}, {"AutoScalingGroupName": "gpu", "DesiredCapacity": 2, "HonorCooldown": False}
        )
        actuator.set_desired_capacity("gpu", 2)
        stub.assert_no_pending_responses()


def test_scale_in_protection_is_set_in_batches(actuator: AwsActuator) -> None:
    ids = [f"i-{n:017x}" for n in range(PROTECTION_BATCH + 3)]
    with Stubber(actuator.autoscaling) as stub:
        for batch in (ids[:PROTECTION_BATCH], ids[PROTECTION_BATCH:]):
            stub.add_response(
                "set_instance_protection",
                {},
                {"AutoScalingGroupName": "gpu", "InstanceIds": batch, "ProtectedFromScaleIn": True},
            )
        actuator.set_scale_in_protection("gpu", ids, True)
        stub.assert_no_pending_responses()


def test_termination_protection_skips_instances_that_are_gone(actuator: AwsActuator) -> None:
    with Stubber(actuator.ec2) as stub:
        stub.add_response(
            "describe_instance_attribute",
            {"InstanceId": "i-00000000000000001", "DisableApiTermination": {"Value": True}},
            {"InstanceId": "i-00000000000000001", "Attribute": "disableApiTermination"},
        )
        stub.add_client_error("describe_instance_attribute", service_error_code="InvalidInstanceID.NotFound")
        stub.add_client_error("modify_instance_attribute", service_error_code="InvalidInstanceID.NotFound")
        flags = actuator.termination_protection(["i-00000000000000001", "i-00000000000000002"])
        actuator.set_termination_protection("i-00000000000000002", False)
    assert flags == {"i-00000000000000001": True}


def test_markers_are_read_with_one_filtered_describe_tags(actuator: AwsActuator) -> None:
    ids = ["i-00000000000000001", "i-00000000000000002"]
    with Stubber(actuator.ec2) as stub:
        stub.add_response(
            "describe_tags",
            {
                "Tags": [
                    {"ResourceId": ids[0], "ResourceType": "instance", "Key": SCALE_IN_MARKER, "Value": "jobs/a"},
                    {"ResourceId": ids[0], "ResourceType": "instance", "Key": TERMINATION_MARKER, "Value": "jobs/b"},
                ]
            },
            {
                "Filters": [
                    {"Name": "resource-type", "Values": ["instance"]},
                    {"Name": "resource-id", "Values": ids},
                    {"Name": "key", "Values": [SCALE_IN_MARKER, TERMINATION_MARKER]},
                ]
            },
        )
        markers = actuator.protection_markers(reversed(ids))
        stub.assert_no_pending_responses()
    assert markers == {ids[0]: Markers(scale_in="jobs/a", termination="jobs/b")}


def test_markers_are_set_and_cleared_with_the_owner_as_value(actuator: AwsActuator) -> None:
    tag = {"Resources": ["i-00000000000000001"], "Tags": [{"Key": SCALE_IN_MARKER, "Value": "jobs/a"}]}
    with Stubber(actuator.ec2) as stub:
        stub.add_response("create_tags", {}, tag)
        stub.add_response("delete_tags", {}, tag)  # with a value: only while it still names us
        stub.add_client_error("create_tags", service_error_code="InvalidInstanceID.NotFound")
        stub.add_client_error("delete_tags", service_error_code="RequestLimitExceeded")
        actuator.set_marker("i-00000000000000001", SCALE_IN_MARKER, "jobs/a")
        actuator.clear_marker("i-00000000000000001", SCALE_IN_MARKER, "jobs/a")
        actuator.set_marker("i-00000000000000001", SCALE_IN_MARKER, "jobs/a")  # gone: nothing to mark
        with pytest.raises(AwsRetryable):
            actuator.clear_marker("i-00000000000000001", SCALE_IN_MARKER, "jobs/a")
        stub.assert_no_pending_responses()
