"""The IAM policies of the worker and the operator, built in one place.

The chart README's policies, the CloudFormation template's (``deploy/cloudformation/``) and the
tests all come back to these functions: the README's JSON is what ``readme_policies()`` returns,
the template, once deployed, holds what ``worker_policy`` and ``operator_policy`` return for its
resources, and the tests compare the actions granted here with the AWS calls the code makes
(``ACTIONS_OF_OPERATION`` says which action each call needs). Each statement names the resources
it may touch and nothing wider; ``"*"`` appears only for actions that AWS does not scope to a
resource.

``python -m framescale.iam`` prints the README's policies.

A new AWS call in the worker or the operator needs its action here (in the statement whose
resources it touches), in the template's statement of the same Sid, and in the chart README
(paste what ``python -m framescale.iam`` prints); tests/unit/test_iam.py and tests/cloudformation
fail until all three agree with the code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from framescale import names

Statement = dict[str, Any]
Policy = dict[str, Any]

POLICY_VERSION = "2012-10-17"

# The IAM action each AWS operation needs where it is not "<service>:<Operation>" (the Service
# Authorization Reference): S3 names its permissions after objects and buckets, not requests.
ACTIONS_OF_OPERATION: dict[tuple[str, str], tuple[str, ...]] = {
    ("s3", "HeadObject"): ("s3:GetObject",),
    ("s3", "ListObjectsV2"): ("s3:ListBucket",),
    ("s3", "ListObjects"): ("s3:ListBucket",),
    ("s3", "DeleteObjects"): ("s3:DeleteObject",),
    # A copy reads the source and writes the destination.
    ("s3", "CopyObject"): ("s3:GetObject", "s3:PutObject"),
    ("s3", "UploadPartCopy"): ("s3:GetObject", "s3:PutObject"),
    ("s3", "CreateMultipartUpload"): ("s3:PutObject",),
    ("s3", "UploadPart"): ("s3:PutObject",),
    ("s3", "CompleteMultipartUpload"): ("s3:PutObject",),
}

# IAM's prefix for each boto3 service name.
SERVICE_PREFIX = {"sqs": "sqs", "s3": "s3", "sns": "sns", "ec2": "ec2", "autoscaling": "autoscaling"}


def actions_of(service: str, operation: str) -> tuple[str, ...]:
    """The IAM actions an API operation (``("sqs", "ReceiveMessage")``) needs."""
    return ACTIONS_OF_OPERATION.get((service, operation), (f"{SERVICE_PREFIX[service]}:{operation}",))


def _allow(
    sid: str, actions: Sequence[str], resources: Sequence[str], condition: dict[str, Any] | None = None
) -> Statement:
    statement: Statement = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions[0] if len(actions) == 1 else list(actions),
        "Resource": resources[0] if len(resources) == 1 else list(resources),
    }
    if condition:
        statement["Condition"] = condition
    return statement


def s3_bucket_arn(bucket: str, partition: str = "aws") -> str:
    return f"arn:{partition}:s3:::{bucket}"


def s3_objects_arn(bucket: str, prefix: str, partition: str = "aws") -> str:
    """Every object under ``prefix`` (``"incoming/"``; empty for the whole bucket)."""
    return f"arn:{partition}:s3:::{bucket}/{prefix}*"


@dataclass(frozen=True)
class S3Prefix:
    bucket: str
    prefix: str  # "" or ending in "/"

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            raise ValueError(f"S3 prefix {self.prefix!r} must end in '/'")


@dataclass(frozen=True)
class WorkerResources:
    """What one pipeline's worker touches."""

    queue_arn: str
    dead_letter_queue_arn: str
    videos: S3Prefix
    results: S3Prefix
    topic_arns: tuple[str, ...] = ()
    model: S3Prefix | None = None  # the SavedModel the model-sync init container copies
    partition: str = "aws"


def worker_policy(resources: WorkerResources) -> Policy:
    """The worker's role: consume its queue, dead-letter, read videos, commit results, notify."""
    p = resources.partition
    videos, results = resources.videos, resources.results
    statements = [
        # Long poll, delete finished jobs, extend visibility on the heartbeat and hand transient
        # failures back; GetQueueAttributes checks the queue at start and finds the DLQ in the
        # RedrivePolicy.
        _allow(
            "ConsumeJobs",
            ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"],
            [resources.queue_arn],
        ),
        _allow("DeadLetterFailedJobs", ["sqs:SendMessage", "sqs:GetQueueUrl"], [resources.dead_letter_queue_arn]),
        # HeadObject and the streaming download are both s3:GetObject.
        _allow("ReadVideos", ["s3:GetObject"], [s3_objects_arn(videos.bucket, videos.prefix, p)]),
        # The staged commit: upload (multipart too) under _staging/, copy, write summary.json,
        # delete the staged objects, all under the output prefix.
        _allow(
            "CommitResults",
            ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            [s3_objects_arn(results.bucket, results.prefix, p)],
        ),
        # Listing the staged objects; and without s3:ListBucket, S3 answers 403 for a key that
        # does not exist, so a first run's absent summary.json would read as "access denied".
        # That check carries no s3:prefix, hence IfExists.
        _allow(
            "ListResults",
            ["s3:ListBucket"],
            [s3_bucket_arn(results.bucket, p)],
            {"StringLikeIfExists": {"s3:prefix": f"{results.prefix}*"}},
        ),
        # The same 404-or-403 rule for the videos: a missing video is "not found", not "denied".
        _allow(
            "TellMissingVideoFromForbidden",
            ["s3:ListBucket"],
            [s3_bucket_arn(videos.bucket, p)],
            {"StringLikeIfExists": {"s3:prefix": f"{videos.prefix}*"}},
        ),
    ]
    if resources.topic_arns:
        statements.append(_allow("Notify", ["sns:Publish"], list(resources.topic_arns)))
    if resources.model is not None:
        model = resources.model
        # `aws s3 sync` in the model-sync init container (not framescale code) lists and reads
        # the model's prefix; its listing always names the prefix.
        statements.append(_allow("SyncModel", ["s3:GetObject"], [s3_objects_arn(model.bucket, model.prefix, p)]))
        statements.append(
            _allow(
                "ListModel",
                ["s3:ListBucket"],
                [s3_bucket_arn(model.bucket, p)],
                {"StringLike": {"s3:prefix": f"{model.prefix}*"}},
            )
        )
    return {"Version": POLICY_VERSION, "Statement": statements}


# Actions AWS does not scope to a resource (the Service Authorization Reference lists no resource
# type for them), so "*" is the only resource they can have.
UNSCOPED_OPERATOR_ACTIONS = ("autoscaling:DescribeAutoScalingGroups", "ec2:DescribeTags")


@dataclass(frozen=True)
class OperatorResources:
    """What the operator touches: every pipeline's queue and Auto Scaling group."""

    queue_arns: tuple[str, ...]
    group_names: tuple[str, ...]
    region: str
    account: str
    partition: str = "aws"


def autoscaling_group_arn(name: str, region: str, account: str, partition: str = "aws") -> str:
    # The group's id sits between the two colons; a policy cannot know it before the group exists.
    return f"arn:{partition}:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{name}"


def operator_policy(resources: OperatorResources) -> Policy:
    """The operator's role: read the backlog, size the groups, protect and mark their instances."""
    r = resources
    instances = f"arn:{r.partition}:ec2:{r.region}:{r.account}:instance/*"
    # Only instances Auto Scaling launched into these groups: the aws:autoscaling:groupName tag is
    # reserved to AWS, so no one can bring another instance in range by tagging it.
    groups = list(r.group_names) if len(r.group_names) > 1 else r.group_names[0]
    in_groups = {"ec2:ResourceTag/aws:autoscaling:groupName": groups}
    statements = [
        _allow("ReadBacklog", ["sqs:GetQueueAttributes"], list(r.queue_arns)),
        _allow("SeeGroups", list(UNSCOPED_OPERATOR_ACTIONS), ["*"]),
        _allow(
            "SizeAndProtectTheGroup",
            [
                "autoscaling:SetDesiredCapacity",
                "autoscaling:SetInstanceProtection",
                # NewInstancesProtectedFromScaleIn, set when the operator adopts the group
                "autoscaling:UpdateAutoScalingGroup",
                # the only way capacity goes down: an instance the operator chose, once drained
                "autoscaling:TerminateInstanceInAutoScalingGroup",
                # terminations the group's lifecycle hook holds while their nodes drain
                "autoscaling:RecordLifecycleActionHeartbeat",
                "autoscaling:CompleteLifecycleAction",
            ],
            [autoscaling_group_arn(name, r.region, r.account, r.partition) for name in r.group_names],
        ),
        _allow(
            "TerminationProtectionOfItsInstances",
            ["ec2:DescribeInstanceAttribute", "ec2:ModifyInstanceAttribute"],
            [instances],
            {"StringEquals": dict(in_groups)},
        ),
        # The tags that record which protection the operator set, and no other key: ForAllValues
        # refuses a request naming another key, Null one naming none (ForAllValues holds for an
        # empty set, and DeleteTags without keys deletes every tag).
        _allow(
            "OwnershipMarkerOnItsInstances",
            ["ec2:CreateTags", "ec2:DeleteTags"],
            [instances],
            {
                "StringEquals": dict(in_groups),
                "ForAllValues:StringEquals": {"aws:TagKeys": list(names.PROTECTION_MARKER_TAGS)},
                "Null": {"aws:TagKeys": "false"},
            },
        ),
    ]
    return {"Version": POLICY_VERSION, "Statement": statements}


def irsa_trust_policy(
    oidc_provider: str, namespace: str, service_account: str, *, account: str, partition: str = "aws"
) -> Policy:
    """Lets one Kubernetes ServiceAccount assume the role through the cluster's OIDC provider
    (``oidc_provider``: the issuer without ``https://``)."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:{partition}:iam::{account}:oidc-provider/{oidc_provider}"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{oidc_provider}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                        f"{oidc_provider}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ],
    }


# The chart README's example: REGION and ACCOUNT stand for the user's, the names for theirs.
README_REGION, README_ACCOUNT = "REGION", "ACCOUNT"
README_GROUP = "eks-gpu-nodes-20250101000000000000000000"


def readme_policies() -> dict[str, Policy]:
    """The policies the chart README shows, by its headings."""
    sqs = f"arn:aws:sqs:{README_REGION}:{README_ACCOUNT}"
    sns = f"arn:aws:sns:{README_REGION}:{README_ACCOUNT}"
    worker = WorkerResources(
        queue_arn=f"{sqs}:framescale-jobs",
        dead_letter_queue_arn=f"{sqs}:framescale-jobs-dlq",
        videos=S3Prefix("my-videos", "incoming/"),
        results=S3Prefix("my-results", "detections/"),
        topic_arns=(f"{sns}:framescale-success", f"{sns}:framescale-error"),
        model=S3Prefix("my-models", "detector/"),
    )
    operator = OperatorResources(
        queue_arns=(f"{sqs}:framescale-jobs",),
        group_names=(README_GROUP,),
        region=README_REGION,
        account=README_ACCOUNT,
    )
    return {"Worker": worker_policy(worker), "Operator": operator_policy(operator)}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _expanded(mapping: dict[str, Any], indent: int) -> str:
    """A map one entry per line, entries that do not fit on a line expanded the same way."""
    pad = " " * (indent + 2)
    lines = []
    for key, value in mapping.items():
        text = _compact(value)
        if isinstance(value, dict) and len(text) > 90:
            text = _expanded(value, indent + 2)
        lines.append(f"{pad}{json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n" + " " * indent + "}"


def format_policy(policy: Policy) -> str:
    """A policy as the README shows it: one line per statement field, lists and conditions kept short."""
    statements = []
    for statement in policy["Statement"]:
        fields = []
        for key, value in statement.items():
            if key == "Condition" and len(_compact(value)) > 90:
                fields.append(f'      "Condition": {_expanded(value, 6)}')
            else:
                fields.append(f"      {json.dumps(key)}: {_compact(value)}")
        statements.append("    {\n" + ",\n".join(fields) + "\n    }")
    body = ",\n".join(statements)
    return f'{{\n  "Version": {json.dumps(policy["Version"])},\n  "Statement": [\n{body}\n  ]\n}}'


def main() -> None:
    for heading, policy in readme_policies().items():
        print(f"### {heading}\n\n```json\n{format_policy(policy)}\n```\n")


if __name__ == "__main__":
    main()
