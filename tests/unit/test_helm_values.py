"""`framescale helm-values`: stack outputs to chart values, and every way a stack can be unfit."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from framescale import helm_values
from framescale.cli import main

ACCOUNT = "123456789012"


def outputs(pipeline: str = "main", **changes: str) -> dict[str, str]:
    values = {
        "Region": "us-west-2",
        "PipelineName": pipeline,
        "Namespace": "framescale",
        "QueueUrl": f"https://sqs.us-west-2.amazonaws.com/{ACCOUNT}/framescale-{pipeline}-jobs",
        "QueueVisibilityTimeoutSeconds": "300",
        "DeadLetterQueueUrl": f"https://sqs.us-west-2.amazonaws.com/{ACCOUNT}/framescale-{pipeline}-dlq",
        "VideoS3Uri": f"s3://{pipeline}-videos-{ACCOUNT}-us-west-2/incoming/",
        "OutputS3Uri": f"s3://{pipeline}-results-{ACCOUNT}-us-west-2/results/",
        "ModelS3Uri": f"s3://{pipeline}-videos-{ACCOUNT}-us-west-2/models/detector/",
        "SuccessTopicArn": f"arn:aws:sns:us-west-2:{ACCOUNT}:framescale-{pipeline}-success",
        "ErrorTopicArn": f"arn:aws:sns:us-west-2:{ACCOUNT}:framescale-{pipeline}-error",
        "AutoScalingGroupName": f"framescale-{pipeline}-nodes",
        "LifecycleHookName": "framescale-drain",
        "NodeLabels": f"framescale.io/accelerator=true,framescale.io/pipeline={pipeline}",
        "NodeTaints": "framescale.io/accelerator=true:NoSchedule",
        "NodeMinReplicas": "0",
        "NodeMaxReplicas": "4",
        "NodeGpu": "true",
        "WorkerRoleArn": f"arn:aws:iam::{ACCOUNT}:role/fs-{pipeline}-WorkerRole-ABC",
        "WorkerServiceAccountName": f"framescale-{pipeline}-worker",
        "OperatorRoleArn": f"arn:aws:iam::{ACCOUNT}:role/fs-main-OperatorRole-XYZ",
        "OperatorServiceAccountName": "framescale-operator",
        "OperatorRoleName": "fs-main-OperatorRole-XYZ",  # not needed for the values: ignored
    }
    values.update(changes)
    return values


def description(name: str = "fs-main", status: str = "CREATE_COMPLETE", **outs: str) -> dict[str, Any]:
    return {
        "StackName": name,
        "StackStatus": status,
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outs.items()],
    }


def test_one_stack_gives_one_pipeline_naming_everything_it_made() -> None:
    stack = helm_values.pipeline_stack(description(**outputs()))
    values = helm_values.values_from_stacks([stack])
    assert values["aws"] == {"region": "us-west-2"}
    assert values["operator"]["serviceAccount"] == {
        "name": "framescale-operator",
        "iamRoleArn": f"arn:aws:iam::{ACCOUNT}:role/fs-main-OperatorRole-XYZ",
    }
    (pipeline,) = values["pipelines"]
    assert pipeline["name"] == "main"
    assert pipeline["queueUrl"].endswith("/framescale-main-jobs")
    assert pipeline["nodeGroup"] == {
        "autoScalingGroupName": "framescale-main-nodes",
        "nodeSelector": {"framescale.io/accelerator": "true", "framescale.io/pipeline": "main"},
    }
    assert pipeline["tolerations"] == [
        {"key": "framescale.io/accelerator", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]
    assert pipeline["autoscaling"] == {"minReplicas": 0, "maxReplicas": 4}
    assert pipeline["serviceAccount"]["name"] == "framescale-main-worker"
    assert pipeline["model"] == {"s3Uri": f"s3://main-videos-{ACCOUNT}-us-west-2/models/detector/"}
    settings = pipeline["worker"]["settings"]
    assert settings["visibilityTimeoutSeconds"] == 300  # a number, as the schema wants
    assert settings["output"] == f"s3://main-results-{ACCOUNT}-us-west-2/results/"
    assert settings["deadLetterQueueUrl"].endswith("/framescale-main-dlq")
    assert (settings["successTopicArn"], settings["errorTopicArn"]) == (
        f"arn:aws:sns:us-west-2:{ACCOUNT}:framescale-main-success",
        f"arn:aws:sns:us-west-2:{ACCOUNT}:framescale-main-error",
    )
    assert pipeline["tfServing"] == {"gpu": {"enabled": True}}


def test_two_stacks_share_one_operator() -> None:
    stacks = [
        helm_values.pipeline_stack(description("fs-main", **outputs("main"))),
        helm_values.pipeline_stack(description("fs-cpu", **outputs("cpu", NodeGpu="false"))),
    ]
    values = helm_values.values_from_stacks(stacks)
    assert [p["name"] for p in values["pipelines"]] == ["main", "cpu"]
    assert [p["tfServing"]["gpu"]["enabled"] for p in values["pipelines"]] == [True, False]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"QueueUrl": "framescale-main-jobs"},
            "output QueueUrl is 'framescale-main-jobs', which is not an SQS queue URL",
        ),
        ({"OutputS3Uri": "s3://bucket/results"}, "output OutputS3Uri is 's3://bucket/results', which is not an s3://"),
        ({"WorkerRoleArn": f"arn:aws:sns:us-west-2:{ACCOUNT}:x"}, "WorkerRoleArn"),
        ({"NodeGpu": "yes"}, "output NodeGpu is 'yes'"),
        ({"NodeMinReplicas": "5"}, "NodeMinReplicas 5 and NodeMaxReplicas 4 allow no node count"),
        ({"NodeMaxReplicas": "0"}, "allow no node count"),
        ({"NodeTaints": "framescale.io/accelerator=true"}, "output NodeTaints"),
        ({"LifecycleHookName": "other"}, "'framescale-drain', the hook the operator handles"),
        ({"PipelineName": "Main"}, "output PipelineName is 'Main'"),
    ],
)
def test_malformed_outputs_are_named(changes: dict[str, str], message: str) -> None:
    with pytest.raises(helm_values.StackOutputsError, match="stack fs-main: ") as error:
        helm_values.pipeline_stack(description(**outputs(**changes)))
    assert message in str(error.value)


def test_missing_outputs_are_named() -> None:
    outs = outputs()
    del outs["QueueUrl"], outs["WorkerRoleArn"]
    with pytest.raises(helm_values.StackOutputsError) as error:
        helm_values.pipeline_stack(description(**outs))
    assert "stack fs-main lacks the outputs QueueUrl, WorkerRoleArn" in str(error.value)
    assert "framescale pipeline stack" in str(error.value)


@pytest.mark.parametrize("status", ["ROLLBACK_COMPLETE", "CREATE_IN_PROGRESS", "DELETE_COMPLETE", ""])
def test_a_stack_that_did_not_deploy_is_refused(status: str) -> None:
    with pytest.raises(helm_values.StackOutputsError, match=r"stack fs-main is .*outputs describe nothing usable"):
        helm_values.pipeline_stack(description(status=status, **outputs()))


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (outputs("cpu", Region="eu-west-1"), "disagree on Region"),
        (outputs("cpu", Namespace="video"), "disagree on Namespace"),
        (
            outputs("cpu", OperatorRoleArn=f"arn:aws:iam::{ACCOUNT}:role/other"),
            "give the second stack OperatorRoleName",
        ),
        (outputs("main"), "have the same PipelineName 'main'"),
        (outputs("cpu", AutoScalingGroupName="framescale-main-nodes"), "have the same AutoScalingGroupName"),
    ],
)
def test_stacks_that_cannot_share_a_release_are_refused(second: dict[str, str], message: str) -> None:
    stacks = [
        helm_values.pipeline_stack(description("fs-main", **outputs())),
        helm_values.pipeline_stack(description("fs-two", **second)),
    ]
    with pytest.raises(helm_values.StackOutputsError, match=message):
        helm_values.values_from_stacks(stacks)


def test_yaml_reads_back_as_the_values_with_strings_kept_strings() -> None:
    values = {
        "a": {"b": [{"c": "true", "d": 1, "e": True}, "x: y"], "empty": {}, "none": []},
        "framescale.io/accelerator": "0123",
        "quote": 'say "hi"\n',
    }
    text = helm_values.to_yaml(values, ["a comment", ""])
    assert text.startswith("# a comment\n#\n")
    assert yaml.safe_load(text) == values


def document(*descriptions: dict[str, Any]) -> str:
    return json.dumps({"Stacks": list(descriptions)})


def test_cli_writes_values_from_describe_stacks_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "stacks.json"
    source.write_text(document(description("fs-main", **outputs()), description("fs-cpu", **outputs("cpu"))))
    out = tmp_path / "values.yaml"
    assert main(["helm-values", "fs-cpu", "--describe-stacks", str(source), "--out", str(out)]) == 0
    values = yaml.safe_load(out.read_text())
    assert [p["name"] for p in values["pipelines"]] == ["cpu"]
    assert "helm upgrade --install framescale charts/framescale --namespace framescale" in capsys.readouterr().err
    # Every stack of the document when none is named, on standard output.
    assert main(["helm-values", "--describe-stacks", str(source)]) == 0
    printed = capsys.readouterr().out
    assert [p["name"] for p in yaml.safe_load(printed)["pipelines"]] == ["main", "cpu"]
    assert printed.startswith("# Helm values for charts/framescale from the stacks fs-main, fs-cpu")


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("not json", [], "not the JSON of aws cloudformation describe-stacks"),
        ('{"StackSummaries": []}', [], "it has no Stacks list"),
        (document(description(**outputs())), ["fs-other"], "stack fs-other not in the describe-stacks document"),
        (document(copy.deepcopy(description(Region="us-west-2"))), [], "lacks the outputs PipelineName"),
    ],
)
def test_cli_bad_input_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, args: list[str], message: str
) -> None:
    source = tmp_path / "stacks.json"
    source.write_text(text)
    out = tmp_path / "values.yaml"
    assert main(["helm-values", *args, "--describe-stacks", str(source), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("framescale helm-values: ") and message in error
    assert not out.exists()


def test_cli_needs_stacks_or_a_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["helm-values"]) == 2
    assert "name the stacks, or give --describe-stacks" in capsys.readouterr().err
