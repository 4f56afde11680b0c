"""Helm values for the chart from the outputs of pipeline stacks (``deploy/cloudformation/``).

    framescale helm-values STACK [STACK ...] [--describe-stacks FILE] [--out FILE]

Each stack is one pipeline; the values name every resource the stack made (queue, buckets,
topics, node group and its labels and taint, IRSA roles and the ServiceAccounts their trust
policies name). The outputs are read with boto3 (``AWS_ENDPOINT_URL`` honoured) or from the
JSON of ``aws cloudformation describe-stacks``, and checked before anything is written: a
missing or malformed output is named, and so is a disagreement between stacks that must share
one operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from framescale import names

# Stack states whose outputs describe what exists.
USABLE_STATUSES = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"})

_DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_ARN = r"arn:aws[a-z-]*"
_S3_PREFIX_URI = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([^\s]+/)?"
_INTEGER = r"\d{1,6}"

# Every output the values are made from, and the form it must have.
OUTPUTS: dict[str, str] = {
    "Region": r"[a-z]{2}(-[a-z]+)+-\d+",
    "PipelineName": _DNS_LABEL,
    "Namespace": _DNS_LABEL,
    "QueueUrl": r"https?://[^\s/]+/\d{12}/[A-Za-z0-9_-]{1,80}",
    "QueueVisibilityTimeoutSeconds": _INTEGER,
    "DeadLetterQueueUrl": r"https?://[^\s/]+/\d{12}/[A-Za-z0-9_-]{1,80}",
    "VideoS3Uri": _S3_PREFIX_URI,
    "OutputS3Uri": _S3_PREFIX_URI,
    "ModelS3Uri": _S3_PREFIX_URI,
    "SuccessTopicArn": _ARN + r":sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}",
    "ErrorTopicArn": _ARN + r":sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}",
    "AutoScalingGroupName": r"[^\s:]{1,255}",
    "LifecycleHookName": re.escape(names.DEFAULT_LIFECYCLE_HOOK_NAME),
    "NodeLabels": r"[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*(,[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*)*",
    "NodeTaints": r"[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*:(NoSchedule|PreferNoSchedule|NoExecute)"
    r"(,[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*:(NoSchedule|PreferNoSchedule|NoExecute))*",
    "NodeMinReplicas": _INTEGER,
    "NodeMaxReplicas": _INTEGER,
    "NodeGpu": r"true|false",
    "WorkerRoleArn": _ARN + r":iam::\d{12}:role/[\w+=,.@/-]+",
    "WorkerServiceAccountName": r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?",
    "OperatorRoleArn": _ARN + r":iam::\d{12}:role/[\w+=,.@/-]+",
    "OperatorServiceAccountName": r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?",
}
# What every stack of one release must agree on: one chart installs one operator in one namespace.
SHARED_OUTPUTS = ("Region", "Namespace", "OperatorRoleArn", "OperatorServiceAccountName")
# What no two stacks may share.
DISTINCT_OUTPUTS = ("PipelineName", "QueueUrl", "AutoScalingGroupName")


class StackOutputsError(ValueError):
    """The stacks cannot become values; the message says which stack and which output."""


@dataclass(frozen=True)
class PipelineStack:
    name: str
    outputs: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.outputs[key]


def pipeline_stack(description: dict[str, Any]) -> PipelineStack:
    """One entry of DescribeStacks' ``Stacks``, checked: usable status, every output present and well formed."""
    name = str(description.get("StackName") or "(unnamed stack)")
    status = str(description.get("StackStatus", ""))
    if status not in USABLE_STATUSES:
        raise StackOutputsError(f"stack {name} is {status or 'of unknown status'}; its outputs describe nothing usable")
    outputs = {
        str(item.get("OutputKey")): str(item.get("OutputValue", ""))
        for item in description.get("Outputs") or []
        if isinstance(item, dict)
    }
    missing = [key for key in OUTPUTS if key not in outputs]
    if missing:
        raise StackOutputsError(
            f"stack {name} lacks the output{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
            "is it a framescale pipeline stack (deploy/cloudformation/pipeline.yaml), deployed from this version?"
        )
    for key, pattern in OUTPUTS.items():
        if not re.fullmatch(pattern, outputs[key]):
            raise StackOutputsError(f"stack {name}: output {key} is {outputs[key]!r}, which is not {_what(key)}")
    low, high = int(outputs["NodeMinReplicas"]), int(outputs["NodeMaxReplicas"])
    if high < 1 or low > high:
        raise StackOutputsError(f"stack {name}: NodeMinReplicas {low} and NodeMaxReplicas {high} allow no node count")
    return PipelineStack(name, outputs)


def _what(key: str) -> str:
    if key == "LifecycleHookName":
        return f"{names.DEFAULT_LIFECYCLE_HOOK_NAME!r}, the hook the operator handles"
    if key.endswith("S3Uri"):
        return "an s3://bucket/prefix/ URI"
    if key.endswith("Url"):
        return "an SQS queue URL"
    if key.endswith("Arn"):
        return "an ARN of the right service"
    return f"of the form {OUTPUTS[key]}"


def _pairs(text: str) -> Iterator[tuple[str, str]]:
    for item in text.split(","):
        key, _, value = item.partition("=")
        yield key, value


def pipeline_values(stack: PipelineStack) -> dict[str, Any]:
    """One ``pipelines[]`` entry of the chart's values."""
    tolerations = []
    for key, rest in _pairs(stack["NodeTaints"]):
        value, _, effect = rest.rpartition(":")
        tolerations.append({"key": key, "operator": "Equal", "value": value, "effect": effect})
    return {
        "name": stack["PipelineName"],
        "queueUrl": stack["QueueUrl"],
        "nodeGroup": {
            "autoScalingGroupName": stack["AutoScalingGroupName"],
            "nodeSelector": dict(_pairs(stack["NodeLabels"])),
        },
        "tolerations": tolerations,
        "autoscaling": {
            "minReplicas": int(stack["NodeMinReplicas"]),
            "maxReplicas": int(stack["NodeMaxReplicas"]),
        },
        "serviceAccount": {"name": stack["WorkerServiceAccountName"], "iamRoleArn": stack["WorkerRoleArn"]},
        "model": {"s3Uri": stack["ModelS3Uri"]},
        "worker": {
            "settings": {
                "output": stack["OutputS3Uri"],
                "deadLetterQueueUrl": stack["DeadLetterQueueUrl"],
                "successTopicArn": stack["SuccessTopicArn"],
                "errorTopicArn": stack["ErrorTopicArn"],
                "visibilityTimeoutSeconds": int(stack["QueueVisibilityTimeoutSeconds"]),
            }
        },
        "tfServing": {"gpu": {"enabled": stack["NodeGpu"] == "true"}},
    }


def values_from_stacks(stacks: Sequence[PipelineStack]) -> dict[str, Any]:
    """The chart's values for one release serving every given pipeline."""
    if not stacks:
        raise StackOutputsError("no stacks given")
    first = stacks[0]
    for key in SHARED_OUTPUTS:
        for other in stacks[1:]:
            if other[key] != first[key]:
                raise StackOutputsError(
                    f"stacks {first.name} and {other.name} disagree on {key} ({first[key]!r}, {other[key]!r}): "
                    "one release has one operator, in one namespace and region (give the second stack "
                    "OperatorRoleName, the first one's output of that name)"
                )
    for key in DISTINCT_OUTPUTS:
        seen: dict[str, str] = {}
        for stack in stacks:
            if stack[key] in seen:
                raise StackOutputsError(
                    f"stacks {seen[stack[key]]} and {stack.name} have the same {key} {stack[key]!r}"
                )
            seen[stack[key]] = stack.name
    return {
        "aws": {"region": first["Region"]},
        "operator": {
            "serviceAccount": {"name": first["OperatorServiceAccountName"], "iamRoleArn": first["OperatorRoleArn"]}
        },
        "pipelines": [pipeline_values(stack) for stack in stacks],
    }


def install_command(stacks: Sequence[PipelineStack], values_file: str) -> str:
    return (
        f"helm upgrade --install framescale charts/framescale --namespace {stacks[0]['Namespace']} "
        f"--create-namespace --values {values_file} --wait --timeout 15m"
    )


def describe_stacks(names_: Iterable[str], describe: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Each named stack's description, through ``describe`` (a CloudFormation client's describe_stacks)."""
    found = []
    for name in names_:
        stacks = describe(StackName=name).get("Stacks") or []
        if not stacks:
            raise StackOutputsError(f"stack {name} not found")
        found.append(stacks[0])
    return found


def select(descriptions: Sequence[dict[str, Any]], wanted: Sequence[str]) -> list[dict[str, Any]]:
    """The named stacks of a describe-stacks document (all of them when none are named), in the given order."""
    if not wanted:
        return list(descriptions)
    by_name = {str(d.get("StackName")): d for d in descriptions}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise StackOutputsError(
            f"stack {', '.join(missing)} not in the describe-stacks document (it has {', '.join(by_name) or 'none'})"
        )
    return [by_name[name] for name in wanted]


def parse_describe_stacks(text: str) -> list[dict[str, Any]]:
    """The ``Stacks`` of ``aws cloudformation describe-stacks`` output."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise StackOutputsError(f"not the JSON of aws cloudformation describe-stacks: {error}") from None
    stacks = document.get("Stacks") if isinstance(document, dict) else None
    if not isinstance(stacks, list) or not all(isinstance(s, dict) for s in stacks):
        raise StackOutputsError("not the JSON of aws cloudformation describe-stacks: it has no Stacks list")
    return stacks


# ---------------------------------------------------------------------- YAML out
# The values are maps, lists, strings, numbers and booleans; strings are written as JSON strings,
# which YAML reads as double-quoted scalars, so no value can turn into another type.


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value))


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key) else json.dumps(key)


def _lines(value: Any, indent: int) -> Iterator[str]:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                yield f"{pad}{_key(key)}:"
                yield from _lines(item, indent + 2)
            elif isinstance(item, dict | list):
                yield f"{pad}{_key(key)}: {'{}' if isinstance(item, dict) else '[]'}"
            else:
                yield f"{pad}{_key(key)}: {_scalar(item)}"
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = list(_lines(item, indent + 2))
                yield f"{pad}- {inner[0][indent + 2 :]}"
                yield from inner[1:]
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield pad + _scalar(value)


def to_yaml(values: dict[str, Any], comments: Sequence[str] = ()) -> str:
    header = [f"# {line}" if line else "#" for line in comments]
    return "\n".join([*header, *_lines(values, 0)]) + "\n"
