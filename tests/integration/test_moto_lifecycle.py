"""The local stack's Auto Scaling lifecycle simulation (``framescale.local.moto_extensions``), over
real HTTP against the moto server the tests use: what waits in Terminating:Wait, for how long,
what ends the wait, and which protections Auto Scaling honours or ignores."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from framescale.local.moto_extensions import INTERRUPT_PATH
from framescale.local.moto_server import MotoServer
from tests import support

pytestmark = [pytest.mark.integration]
HOOK = "drain"


class Group:
    def __init__(
        self,
        *,
        desired: int = 2,
        hook_timeout: int | None = 30,
        default_result: str = "CONTINUE",
        protect_new: bool = False,
        min_size: int = 0,
    ) -> None:
        self.autoscaling = support.client("autoscaling")
        self.ec2 = support.client("ec2")
        self.name = support.unique("sim")
        subnet = self.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        self.ec2.create_launch_template(
            LaunchTemplateName=f"lt-{self.name}",
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        )
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=self.name,
            LaunchTemplate={"LaunchTemplateName": f"lt-{self.name}"},
            MinSize=min_size,
            MaxSize=10,
            DesiredCapacity=desired,
            VPCZoneIdentifier=subnet,
            NewInstancesProtectedFromScaleIn=protect_new,
        )
        if hook_timeout is not None:
            self.autoscaling.put_lifecycle_hook(
                AutoScalingGroupName=self.name,
                LifecycleHookName=HOOK,
                LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                HeartbeatTimeout=hook_timeout,
                DefaultResult=default_result,
            )

    def describe(self) -> dict[str, Any]:
        return self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])["AutoScalingGroups"][0]

    def states(self) -> dict[str, str]:
        return {i["InstanceId"]: i["LifecycleState"] for i in self.describe()["Instances"]}

    def in_service(self) -> list[str]:
        return sorted(i for i, state in self.states().items() if state == "InService")

    def waiting(self) -> list[str]:
        return sorted(i for i, state in self.states().items() if state == "Terminating:Wait")

    def ec2_state(self, instance_id: str) -> str:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return str(found["State"]["Name"])

    def terminate(self, instance_id: str, decrement: bool = True) -> dict[str, Any]:
        return self.autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=instance_id, ShouldDecrementDesiredCapacity=decrement
        )

    def complete(self, instance_id: str, result: str = "CONTINUE") -> None:
        self.autoscaling.complete_lifecycle_action(
            AutoScalingGroupName=self.name, LifecycleHookName=HOOK, InstanceId=instance_id, LifecycleActionResult=result
        )

    def heartbeat(self, instance_id: str) -> None:
        self.autoscaling.record_lifecycle_action_heartbeat(
            AutoScalingGroupName=self.name, LifecycleHookName=HOOK, InstanceId=instance_id
        )


def wait_for(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def interrupt(server: MotoServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        server.endpoint_url + INTERRUPT_PATH,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_terminate_in_group_waits_for_complete_lifecycle_action(aws_env: dict[str, str]) -> None:
    group = Group(desired=2)
    victim, other = group.in_service()
    activity = group.terminate(victim)["Activity"]
    assert victim in activity["Description"]
    assert group.states()[victim] == "Terminating:Wait"
    assert group.describe()["DesiredCapacity"] == 1
    time.sleep(1.0)  # it stays: nothing ends the wait but the action or the timeout
    assert group.states()[victim] == "Terminating:Wait"
    assert group.ec2_state(victim) == "running"
    assert group.in_service() == [other]  # waiting instances are not capacity: nothing replaces it
    group.complete(victim, "CONTINUE")
    assert victim not in group.states()
    assert group.ec2_state(victim) == "terminated"
    assert group.in_service() == [other]


def test_abandon_also_terminates_and_a_second_complete_is_refused(aws_env: dict[str, str]) -> None:
    group = Group(desired=1)
    (victim,) = group.in_service()
    group.terminate(victim)
    group.complete(victim, "ABANDON")
    assert group.ec2_state(victim) == "terminated"
    with pytest.raises(ClientError) as caught:
        group.complete(victim)
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert "No active Lifecycle Action" in caught.value.response["Error"]["Message"]


def test_heartbeat_timeout_applies_the_default_result_and_heartbeats_extend_it(aws_env: dict[str, str]) -> None:
    group = Group(desired=2, hook_timeout=2, default_result="ABANDON")
    kept, lapsed = group.in_service()
    group.terminate(kept)
    group.terminate(lapsed)
    started = time.monotonic()
    for _ in range(5):  # 3 s of heartbeats, each 0.6 s, on one of them
        time.sleep(0.6)
        group.heartbeat(kept)
    assert lapsed not in group.states(), "no heartbeat: gone after the 2 s timeout"
    assert group.states()[kept] == "Terminating:Wait", "heartbeats keep it waiting past the timeout"
    wait_for(lambda: kept not in group.states(), "the heartbeated one goes 2 s after its last heartbeat")
    assert time.monotonic() - started >= 4.5
    assert group.ec2_state(kept) == group.ec2_state(lapsed) == "terminated"


def test_without_a_hook_termination_is_immediate(aws_env: dict[str, str]) -> None:
    group = Group(desired=2, hook_timeout=None)
    victim, _ = group.in_service()
    group.terminate(victim)
    assert victim not in group.states()
    assert group.ec2_state(victim) == "terminated"


def test_scale_in_skips_protected_instances_and_waits_under_the_hook(aws_env: dict[str, str]) -> None:
    group = Group(desired=3)
    first, second, third = group.in_service()
    group.autoscaling.set_instance_protection(
        AutoScalingGroupName=group.name, InstanceIds=[first, third], ProtectedFromScaleIn=True
    )
    group.autoscaling.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=1)
    assert group.waiting() == [second]
    assert group.in_service() == [first, third], "protected instances stay; capacity stays above desired"
    group.complete(second)
    assert group.ec2_state(second) == "terminated"


def test_new_instances_protected_from_scale_in_are_never_scaled_in(aws_env: dict[str, str]) -> None:
    group = Group(desired=2, protect_new=True)
    assert all(i["ProtectedFromScaleIn"] for i in group.describe()["Instances"])
    group.autoscaling.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=0)
    assert group.waiting() == []
    assert len(group.in_service()) == 2
    # Explicit termination ignores scale-in protection, as on AWS, and still waits under the hook.
    # (Desired is already 0 = MinSize, so it cannot be decremented: AWS refuses that, and so does this.)
    victim = group.in_service()[0]
    with pytest.raises(ClientError, match="min size constraint"):
        group.terminate(victim, decrement=True)
    group.terminate(victim, decrement=False)
    assert group.waiting() == [victim]
    assert len(group.in_service()) == 1, "desired 0: no replacement"


def test_auto_scaling_ignores_disable_api_termination_but_ec2_honours_it(aws_env: dict[str, str]) -> None:
    group = Group(desired=2, hook_timeout=None)
    guarded, plain = group.in_service()
    for instance_id in (guarded, plain):
        group.ec2.modify_instance_attribute(InstanceId=instance_id, DisableApiTermination={"Value": True})
    with pytest.raises(ClientError) as caught:
        group.ec2.terminate_instances(InstanceIds=[guarded])
    assert caught.value.response["Error"]["Code"] == "OperationNotPermitted"
    assert group.ec2_state(guarded) == "running"
    group.autoscaling.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=1)
    group.terminate(group.in_service()[0])
    assert group.in_service() == []
    assert group.ec2_state(guarded) == group.ec2_state(plain) == "terminated"


def test_bad_terminations_are_refused_and_change_nothing(aws_env: dict[str, str]) -> None:
    group = Group(desired=1, min_size=1)
    (instance,) = group.in_service()
    with pytest.raises(ClientError) as caught:
        group.terminate(instance, decrement=True)
    assert "min size constraint" in caught.value.response["Error"]["Message"]
    assert group.states() == {instance: "InService"} and group.describe()["DesiredCapacity"] == 1
    with pytest.raises(ClientError) as caught:
        group.terminate("i-0000000000000dead")
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    group.terminate(instance, decrement=False)  # allowed: a replacement keeps MinSize
    with pytest.raises(ClientError) as caught:
        group.terminate(instance, decrement=False)
    assert "already being terminated" in caught.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as caught:
        group.complete(instance, "MAYBE")
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert group.states()[instance] == "Terminating:Wait"


def test_terminate_without_decrement_launches_a_replacement_at_once(aws_env: dict[str, str]) -> None:
    group = Group(desired=1)
    (old,) = group.in_service()
    group.terminate(old, decrement=False)
    (new,) = group.in_service()
    assert new != old and group.waiting() == [old]
    assert group.describe()["DesiredCapacity"] == 1


def test_health_replacement_ignores_protection_and_goes_through_the_hook(aws_env: dict[str, str]) -> None:
    group = Group(desired=1, protect_new=True)
    (sick,) = group.in_service()
    group.ec2.modify_instance_attribute(InstanceId=sick, DisableApiTermination={"Value": True})
    group.autoscaling.set_instance_health(InstanceId=sick, HealthStatus="Unhealthy")
    assert group.waiting() == [sick]
    (replacement,) = group.in_service()
    assert replacement != sick
    group.complete(sick)
    assert group.ec2_state(sick) == "terminated"


def test_spot_interruption_is_reclaimed_after_the_notice_whatever_the_hook_says(
    aws_env: dict[str, str], moto_server: MotoServer
) -> None:
    group = Group(desired=1, hook_timeout=60)
    (spot,) = group.in_service()
    status, body = interrupt(moto_server, {"InstanceId": spot, "Cause": "SpotInterruption", "NoticeSeconds": 1.5})
    assert (status, body["LifecycleState"]) == (200, "Terminating:Wait")
    assert len(group.in_service()) == 1  # replaced
    group.heartbeat(spot)  # a heartbeat does not hold EC2 back
    wait_for(lambda: spot not in group.states(), "reclaimed after the notice")
    assert group.ec2_state(spot) == "terminated"


def test_rebalance_waits_for_the_hook_like_any_other_termination(
    aws_env: dict[str, str], moto_server: MotoServer
) -> None:
    group = Group(desired=1)
    (moved,) = group.in_service()
    assert interrupt(moto_server, {"InstanceId": moved, "Cause": "Rebalance"})[0] == 200
    time.sleep(1.0)
    assert group.waiting() == [moved]
    group.complete(moved)
    assert group.ec2_state(moved) == "terminated"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"Cause": "SpotInterruption"}, 400),
        ({"InstanceId": "i-1", "Cause": "Meteor"}, 400),
        ({"InstanceId": "i-1", "NoticeSeconds": -1}, 400),
        ({"InstanceId": "i-0000000000000dead"}, 404),
    ],
)
def test_bad_interruptions_are_refused(
    aws_env: dict[str, str], moto_server: MotoServer, body: dict, status: int
) -> None:
    assert interrupt(moto_server, body)[0] == status


def test_an_instance_ec2_terminated_directly_is_dropped_and_replaced(aws_env: dict[str, str]) -> None:
    group = Group(desired=1)
    (gone,) = group.in_service()
    group.ec2.terminate_instances(InstanceIds=[gone])
    replacement = wait_for(lambda: [i for i in group.in_service() if i != gone], "a replacement")
    assert gone not in group.states() and len(replacement) == 1
