"""Deploy deploy/cloudformation/pipeline.yaml into moto over HTTP, and make up for what moto's
CloudFormation leaves out.

`aws cloudformation deploy` makes a change set and executes it; a CREATE change set executed by
moto 5.2 leaves the stack without outputs, so the tests call CreateStack, the other way the same
API creates a stack from the same template, parameters and capabilities.

moto 5.2's CloudFormation skips some resource types and ignores some properties of those it
creates (MOTO_SKIPS and MOTO_IGNORES below, and the README's "AWS set-up"). `fill_moto_gaps`
applies them from the template's own values, resolved against the stack's parameters and
resources, with the API calls CloudFormation itself would have made, so the pipeline runs on
everything the template says; what cannot apply here is listed with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import decode_str

from tests import support

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "cloudformation" / "pipeline.yaml"
# moto keeps no parameters under /aws/ (reserved to AWS) and resolves an SSM-typed parameter's
# default even when a value is given: the tests point the default at a parameter of their own.
PUBLIC_AMI_PARAMETER = "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/nvidia/recommended/image_id"
TEST_AMI_PARAMETER = "/framescale-test/eks-node-ami"

# Resource types moto's CloudFormation does not create, and what becomes of them here.
MOTO_SKIPS = {
    "AWS::SQS::QueuePolicy": "applied by fill_moto_gaps (SetQueueAttributes Policy)",
    "AWS::S3::BucketPolicy": "not applied: it denies requests without TLS, and the moto endpoint is plain HTTP",
    "AWS::EKS::AccessEntry": "not applied: there is no EKS cluster here (the nodes are not Kubernetes nodes)",
}
# Properties moto's CloudFormation ignores on the types it creates; fill_moto_gaps applies them.
MOTO_IGNORES = {
    "AWS::S3::Bucket": (
        "VersioningConfiguration",
        "PublicAccessBlockConfiguration",
        "OwnershipControls",
        "LifecycleConfiguration",
        "NotificationConfiguration",
    ),
    "AWS::AutoScaling::AutoScalingGroup": ("LifecycleHookSpecificationList",),
}


def load_template(text: str | None = None) -> dict[str, Any]:
    """The template as data; short-form intrinsics (!Sub) become their long form ({"Fn::Sub": ...})."""
    template, matches = decode_str(text if text is not None else TEMPLATE.read_text())
    assert template is not None and not matches, matches
    return dict(template)


def template_for_moto() -> str:
    return TEMPLATE.read_text().replace(PUBLIC_AMI_PARAMETER, TEST_AMI_PARAMETER)


@dataclass
class Deployed:
    name: str
    template: dict[str, Any]
    parameters: dict[str, Any]  # every parameter, defaults included; lists for list types
    physical: dict[str, str]  # logical id -> physical id (a Ref's value) of what moto created
    outputs: dict[str, str]
    conditions: dict[str, bool] = field(default_factory=dict)

    def resource(self, logical: str) -> dict[str, Any]:
        return dict(self.template["Resources"][logical])

    def created(self, logical: str) -> bool:
        condition = self.template["Resources"][logical].get("Condition")
        return condition is None or self.conditions[condition]


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    return support.wait_for(check, timeout=timeout, what=what, interval=0.2)


def deploy(stack_name: str, parameters: dict[str, str], body: str | None = None) -> Deployed:
    """CreateStack with CAPABILITY_IAM, as `aws cloudformation create-stack` would (see the module's doc)."""
    cfn = support.client("cloudformation")
    body = body if body is not None else template_for_moto()
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=body,
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
    )
    stack = wait_until(
        lambda: next(
            (s for s in cfn.describe_stacks(StackName=stack_name)["Stacks"] if s["StackStatus"].endswith("COMPLETE")),
            None,
        ),
        f"stack {stack_name}",
    )
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    template = load_template(body)
    summaries = cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    deployed = Deployed(
        name=stack_name,
        template=template,
        parameters=resolve_parameters(template, parameters),
        physical={r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries if r.get("LogicalResourceId")},
        outputs={o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
    )
    deployed.conditions = Resolver(deployed).conditions()
    return deployed


def resolve_parameters(template: dict[str, Any], given: dict[str, str]) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    for name, spec in template.get("Parameters", {}).items():
        value = given.get(name, spec.get("Default"))
        if value is not None and (spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<")):
            value = [item for item in str(value).split(",")] if value != "" else [""]
        resolved[name] = value
    return resolved


class Resolver:
    """Evaluates the template's intrinsic functions against a deployed stack (the subset it uses)."""

    def __init__(self, deployed: Deployed) -> None:
        self.deployed = deployed
        self.region = support.client("sts").meta.region_name
        self.account = support.client("sts").get_caller_identity()["Account"]
        self.pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": "aws",
            "AWS::StackName": deployed.name,
            "AWS::URLSuffix": "amazonaws.com",
        }

    def conditions(self) -> dict[str, bool]:
        return {name: bool(self.value(body)) for name, body in self.deployed.template.get("Conditions", {}).items()}

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.deployed.parameters:
            return self.deployed.parameters[name]
        return self.deployed.physical[name]

    def attribute(self, logical: str, attribute: str) -> str:
        kind = self.deployed.template["Resources"][logical]["Type"]
        physical = self.deployed.physical[logical]
        if (kind, attribute) == ("AWS::SQS::Queue", "Arn"):
            return f"arn:aws:sqs:{self.region}:{self.account}:{physical.rsplit('/', 1)[1]}"
        if (kind, attribute) == ("AWS::S3::Bucket", "Arn"):
            return f"arn:aws:s3:::{physical}"
        if (kind, attribute) == ("AWS::IAM::Role", "Arn"):
            return str(support.client("iam").get_role(RoleName=physical)["Role"]["Arn"])
        if (kind, attribute) == ("AWS::EC2::LaunchTemplate", "LatestVersionNumber"):
            (made,) = support.client("ec2").describe_launch_templates(LaunchTemplateIds=[physical])["LaunchTemplates"]
            return str(made["LatestVersionNumber"])
        raise NotImplementedError(f"Fn::GetAtt {logical}.{attribute}")

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(item) for item in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((function, argument),) = node.items()
            if function == "Ref":
                return NO_VALUE if argument == "AWS::NoValue" else self.ref(argument)
            if function == "Fn::GetAtt":
                logical, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self.attribute(logical, attribute)
            if function == "Fn::Sub":
                return self.sub(argument)
            if function == "Fn::If":
                name, yes, no = argument
                return self.value(yes if self.deployed.conditions[name] else no)
            if function == "Fn::Equals":
                left, right = (self.value(a) for a in argument)
                return left == right
            if function == "Fn::Not":
                return not self.value(argument[0])
            if function == "Fn::And":
                return all(self.value(a) for a in argument)
            if function == "Fn::Or":
                return any(self.value(a) for a in argument)
            if function == "Condition":
                return self.value(self.deployed.template["Conditions"][argument])
            if function == "Fn::Join":
                separator, items = argument
                return separator.join(str(v) for v in self.value(items))
            if function.startswith("Fn::"):
                raise NotImplementedError(function)
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not NO_VALUE}

    def sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        local = {name: self.value(v) for name, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in local:
                return str(local[name])
            if "." in name:
                return self.attribute(*name.split(".", 1))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


NO_VALUE = object()


def properties(deployed: Deployed, logical: str) -> dict[str, Any]:
    return dict(Resolver(deployed).value(deployed.resource(logical).get("Properties", {})))


def not_created_by_moto(deployed: Deployed) -> dict[str, str]:
    """Logical id -> type of each resource the template creates (conditions considered) that moto did not."""
    return {
        logical: resource["Type"]
        for logical, resource in deployed.template["Resources"].items()
        if deployed.created(logical) and logical not in deployed.physical
    }


def fill_moto_gaps(deployed: Deployed) -> list[str]:
    """Apply, from the template's own values, what moto's CloudFormation skipped; returns what was done."""
    done = []
    sqs, s3, autoscaling = support.client("sqs"), support.client("s3"), support.client("autoscaling")
    for logical, resource in deployed.template["Resources"].items():
        if not deployed.created(logical):
            continue
        kind = resource["Type"]
        if kind == "AWS::SQS::QueuePolicy":
            props = properties(deployed, logical)
            for queue_url in props["Queues"]:
                sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(props["PolicyDocument"])})
            done.append(f"{logical}: queue policy")
        elif kind == "AWS::S3::Bucket":
            props = properties(deployed, logical)
            bucket = deployed.physical[logical]
            if "VersioningConfiguration" in props:
                s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=props["VersioningConfiguration"])
            if "PublicAccessBlockConfiguration" in props:
                s3.put_public_access_block(
                    Bucket=bucket, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
                )
            if "OwnershipControls" in props:
                s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=props["OwnershipControls"])
            if "LifecycleConfiguration" in props:
                rules = [lifecycle_rule(rule) for rule in props["LifecycleConfiguration"]["Rules"]]
                s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
            if "NotificationConfiguration" in props:
                s3.put_bucket_notification_configuration(
                    Bucket=bucket, NotificationConfiguration=notification(props["NotificationConfiguration"])
                )
            done.append(f"{logical}: {', '.join(k for k in MOTO_IGNORES[kind] if k in props)}")
        elif kind == "AWS::AutoScaling::AutoScalingGroup":
            props = properties(deployed, logical)
            for hook in props.get("LifecycleHookSpecificationList", []):
                autoscaling.put_lifecycle_hook(
                    AutoScalingGroupName=deployed.physical[logical],
                    LifecycleHookName=hook["LifecycleHookName"],
                    LifecycleTransition=hook["LifecycleTransition"],
                    HeartbeatTimeout=int(hook["HeartbeatTimeout"]),
                    DefaultResult=hook["DefaultResult"],
                )
            done.append(f"{logical}: lifecycle hooks")
    return done


def lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in PutBucketLifecycleConfiguration's shape."""
    out: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
        }
    if rule.get("ExpiredObjectDeleteMarker"):
        out["Expiration"] = {"ExpiredObjectDeleteMarker": True}
    if "AbortIncompleteMultipartUpload" in rule:
        days = int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        out["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": days}
    return out


def notification(config: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation NotificationConfiguration in PutBucketNotificationConfiguration's shape."""
    queues = []
    for item in config.get("QueueConfigurations", []):
        entry: dict[str, Any] = {"QueueArn": item["Queue"], "Events": [item["Event"]]}
        if "Filter" in item:
            entry["Filter"] = {"Key": {"FilterRules": item["Filter"]["S3Key"]["Rules"]}}
        queues.append(entry)
    return {"QueueConfigurations": queues}


def node_image_parameter() -> None:
    """The AMI parameter the template's default names, holding an image moto knows."""
    ec2, ssm = support.client("ec2"), support.client("ssm")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ssm.put_parameter(Name=TEST_AMI_PARAMETER, Value=image, Type="String", DataType="aws:ec2:image", Overwrite=True)
