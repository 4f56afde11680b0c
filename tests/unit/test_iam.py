"""The IAM policies (framescale.iam) against the code: every AWS call the worker and the operator
make has its permission, every permission has a call, no wildcard where AWS allows a narrower
resource, and the chart README shows exactly these policies."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from framescale import iam, names
from tests.unit import aws_calls

REPO = Path(__file__).resolve().parents[2]
WORKER = "framescale.worker.__main__"
OPERATOR = "framescale_operator.__main__"


def granted(policy: iam.Policy) -> set[str]:
    return {action for statement in policy["Statement"] for action in as_list(statement["Action"])}


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def needed(entry: str) -> dict[str, list[str]]:
    """Each IAM action the program's calls need, with where they are made."""
    found: dict[str, list[str]] = {}
    for call in aws_calls.calls(aws_calls.closure(entry)):
        for action in iam.actions_of(call.service, call.operation):
            found.setdefault(action, []).append(f"{call.operation} at {call.where}")
    return found


def sample_worker() -> iam.Policy:
    return iam.readme_policies()["Worker"]


def sample_operator() -> iam.Policy:
    return iam.readme_policies()["Operator"]


@pytest.mark.parametrize(
    ("entry", "policy"), [(WORKER, sample_worker), (OPERATOR, sample_operator)], ids=["worker", "operator"]
)
def test_policy_grants_exactly_the_calls_the_code_makes(entry: str, policy) -> None:
    calls = needed(entry)
    actions = granted(policy())
    missing = {action: where for action, where in calls.items() if action not in actions}
    assert not missing, (
        f"calls without their permission in framescale.iam: {missing}; add each action there, to the template's "
        "statement of the same Sid (deploy/cloudformation/pipeline.yaml) and to the chart README"
    )
    unused = actions - set(calls)
    assert not unused, f"permissions no call of {entry} needs: {sorted(unused)}"


@pytest.mark.parametrize("entry", [WORKER, OPERATOR])
def test_every_client_the_code_makes_is_scanned(entry: str) -> None:
    """A client of a service the scan does not know, or one whose calls it no longer finds (say,
    after a rename of the attribute that holds it), would let calls go unchecked."""
    modules = aws_calls.closure(entry)
    made = aws_calls.clients_made(modules)
    assert made, f"{entry} makes no AWS client that the scan can see"
    services = {service for service, _ in made}
    assert services <= set(aws_calls.CLIENT_NAMES.values()), f"unknown services: {services}"
    called = {call.service for call in aws_calls.calls(modules)}
    assert services <= called, f"clients of {services - called} made, but no call to them found"


def test_the_scan_sees_calls_handed_on_paginated_and_transferred() -> None:
    """The scan itself: a call passed as a function, a paginator and a managed transfer count."""
    import ast

    source = """
class Thing:
    def run(self, s3, sqs):
        self._write(self.ec2.create_tags, Resources=[])
        s3.get_paginator("list_objects_v2")
        s3.upload_file("a", "b", "c")
        sqs.receive_message(QueueUrl="q")
        record = {"s3": {}}
        record["s3"].get("object")  # a dict named after S3, not a client
"""
    found = {(c.service, c.operation) for c in aws_calls.calls({"m": ast.parse(source)})}
    assert found == {
        ("ec2", "CreateTags"),
        ("s3", "ListObjectsV2"),
        ("s3", "PutObject"),
        ("s3", "CreateMultipartUpload"),
        ("s3", "UploadPart"),
        ("s3", "CompleteMultipartUpload"),
        ("s3", "AbortMultipartUpload"),
        ("sqs", "ReceiveMessage"),
    }


def test_worker_closure_leaves_out_local_tools() -> None:
    """The worker's role is for the worker: the local stack's queue creation is not its call."""
    modules = aws_calls.closure(WORKER)
    assert "framescale.worker.loop" in modules
    assert not any(m.startswith(("framescale.local", "framescale.modelserver", "framescale_operator")) for m in modules)


# ---------------------------------------------------------------------- wildcards


@cache
def service_authorization() -> dict[str, Any]:
    """cfn-lint's copy of the Service Authorization Reference: actions and the resources they take."""
    text = (resources.files("cfnlint.data.AdditionalSpecs") / "Policies.json").read_text()
    return dict(json.loads(text))


def resource_types(action: str) -> list[str]:
    prefix, _, name = action.partition(":")
    service = service_authorization()[prefix]
    return list(service["Actions"][name.lower()].get("Resources", []))


S3_OBJECTS = re.compile(r"arn:[\w-]+:s3:::[a-z0-9][a-z0-9.-]+/([^*]+/)?\*")
GROUP = re.compile(r"arn:[\w-]+:autoscaling:[^:*]+:[^:*]+:autoScalingGroup:\*:autoScalingGroupName/[^*]+")
INSTANCES = re.compile(r"arn:[\w-]+:ec2:[^:*]+:[^:*]+:instance/\*")
GROUP_TAG = "ec2:ResourceTag/aws:autoscaling:groupName"


def wildcard_problems(policy: iam.Policy) -> list[str]:
    """Why each Allow statement is wider than AWS needs it to be (empty: none is)."""
    problems = []
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        sid = statement.get("Sid", "?")
        actions = as_list(statement["Action"])
        for action in actions:
            if "*" in action or "?" in action:
                problems.append(f"{sid}: wildcard action {action}")
            elif action.partition(":")[2].lower() not in service_authorization()[action.partition(":")[0]]["Actions"]:
                problems.append(f"{sid}: {action} is no IAM action")
        for resource in as_list(statement["Resource"]):
            if resource == "*":
                scoped = {a: resource_types(a) for a in actions if "*" not in a and resource_types(a)}
                if scoped:
                    problems.append(f"{sid}: Resource * for actions AWS scopes to resources: {scoped}")
            elif "*" not in resource:
                continue
            elif S3_OBJECTS.fullmatch(resource) or GROUP.fullmatch(resource):
                continue  # the objects under a prefix; a group whose id a policy cannot know
            elif INSTANCES.fullmatch(resource):
                tag = statement.get("Condition", {}).get("StringEquals", {}).get(GROUP_TAG)
                if not tag or any("*" in value for value in as_list(tag)):
                    problems.append(f"{sid}: every instance, not only the group's ({GROUP_TAG})")
            else:
                problems.append(f"{sid}: wildcard resource {resource}")
    return problems


def test_policies_have_no_wildcard_where_aws_allows_narrower() -> None:
    two_pipelines = iam.operator_policy(
        iam.OperatorResources(
            queue_arns=("arn:aws:sqs:us-east-1:123456789012:a", "arn:aws:sqs:us-east-1:123456789012:b"),
            group_names=("group-a", "group-b"),
            region="us-east-1",
            account="123456789012",
        )
    )
    for policy in [*iam.readme_policies().values(), two_pipelines]:
        assert wildcard_problems(policy) == []


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ({"Action": "sqs:*", "Resource": "arn:aws:sqs:r:1:q"}, "wildcard action sqs:*"),
        ({"Action": "s3:Get*", "Resource": "arn:aws:s3:::bucket/videos/*"}, "wildcard action s3:Get*"),
        ({"Action": "sqs:ReceiveMessage", "Resource": "*"}, "Resource * for actions AWS scopes"),
        ({"Action": "ec2:DescribeInstanceAttribute", "Resource": "*"}, "Resource * for actions AWS scopes"),
        ({"Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:r:1:*"}, "wildcard resource"),
        ({"Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/videos/*"}, "wildcard resource"),
        ({"Action": "ec2:ModifyInstanceAttribute", "Resource": "arn:aws:ec2:r:1:instance/*"}, "every instance"),
        (
            {
                "Action": "ec2:CreateTags",
                "Resource": "arn:aws:ec2:r:1:instance/*",
                "Condition": {"StringEquals": {GROUP_TAG: "eks-*"}},
            },
            "every instance",
        ),
        ({"Action": "sqs:ReceiveMesage", "Resource": "arn:aws:sqs:r:1:q"}, "is no IAM action"),
    ],
)
def test_wildcard_check_refuses(statement: dict[str, Any], problem: str) -> None:
    policy = {"Version": iam.POLICY_VERSION, "Statement": [{"Sid": "Bad", "Effect": "Allow", **statement}]}
    (found,) = wildcard_problems(policy)
    assert problem in found


# ---------------------------------------------------------------------- the README and the constants


def chart_readme_policies() -> dict[str, Any]:
    readme = (REPO / "charts/framescale/README.md").read_text()
    section = readme[readme.index("## IAM policies") :]
    return {
        heading: json.loads(block)
        for heading, block in re.findall(r"^### (\w+).*?\n```json\n(.*?)```", section, re.S | re.M)
    }


def test_chart_readme_shows_the_policies_of_framescale_iam() -> None:
    shown = chart_readme_policies()
    expected = iam.readme_policies()
    assert set(shown) == set(expected)
    for heading, policy in expected.items():
        assert shown[heading] == policy, (
            f"the chart README's {heading} policy differs from framescale.iam; paste what "
            f"`python -m framescale.iam` prints:\n{iam.format_policy(policy)}"
        )


def test_operator_marker_tags_are_the_ones_it_writes() -> None:
    from framescale_operator import protection

    assert protection.MARKER_TAGS == names.PROTECTION_MARKER_TAGS
    (marker,) = [s for s in sample_operator()["Statement"] if s["Sid"] == "OwnershipMarkerOnItsInstances"]
    assert marker["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] == list(protection.MARKER_TAGS)


def test_operator_readme_lists_every_aws_action_of_its_policy() -> None:
    readme = (REPO / "operator" / "README.md").read_text()
    missing = sorted(action for action in granted(sample_operator()) if f"`{action}`" not in readme)
    assert not missing, f"operator/README.md does not name {missing}"


def test_actions_of_operations_are_iam_actions() -> None:
    for (service, operation), actions in iam.ACTIONS_OF_OPERATION.items():
        assert operation in aws_calls.operations(service).values(), (service, operation)
        for action in actions:
            prefix, _, name = action.partition(":")
            assert name.lower() in service_authorization()[prefix]["Actions"], action


def test_s3_prefix_must_be_a_folder() -> None:
    with pytest.raises(ValueError, match="must end in '/'"):
        iam.S3Prefix("bucket", "incoming")
