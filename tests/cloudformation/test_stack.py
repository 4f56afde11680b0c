"""The template deployed into moto over HTTP, and the pipeline running on what it made: a video
uploaded to the created bucket gives results in the created output bucket, a bad one lands in the
created dead-letter queue, and the operator, pointed at the created group, scales it. The worker
and the operator get their settings from the values `framescale helm-values` made and the chart
rendered, as they would in a cluster."""

from __future__ import annotations

import ast
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from framescale import iam, names, results
from framescale.cli import main as cli
from framescale.local import stack as local_stack
from framescale.local.videos import write_synthetic_video
from framescale.messages import parse_s3_url
from tests import support
from tests.chart.conftest import Helm, Rendered
from tests.cloudformation import stacks
from tests.cloudformation.conftest import Stacks
from tests.conftest import worker_log
from tests.integration.operator.conftest import KubeClient, OperatorProcess
from tests.integration.operator.conftest import wait_for as wait_for_operator

pytestmark = [pytest.mark.integration, pytest.mark.cloudformation, pytest.mark.slow]

WAIT = 90.0


def s3_location(uri: str) -> tuple[str, str]:
    location = parse_s3_url(uri, what="output")
    return location.bucket, location.key


def queue_attributes(queue_url: str) -> dict[str, str]:
    return dict(support.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"])


def group(name: str) -> dict[str, Any]:
    return support.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ][0]


# ---------------------------------------------------------------------- what the stack made


def test_moto_skips_only_the_resources_the_readme_names(deployed: Stacks) -> None:
    for stack in (deployed.main, deployed.second, deployed.external):
        skipped = stacks.not_created_by_moto(stack)
        assert set(skipped.values()) <= set(stacks.MOTO_SKIPS), skipped
    assert set(stacks.not_created_by_moto(deployed.main).values()) == set(stacks.MOTO_SKIPS)
    readme = (stacks.REPO / "README.md").read_text()
    for kind in [*stacks.MOTO_SKIPS, *stacks.MOTO_IGNORES]:
        assert kind in readme[readme.index("## AWS set-up") :], f"README's AWS set-up does not mention {kind}"


def test_queues_are_encrypted_and_redrive_to_the_dead_letter_queue(deployed: Stacks) -> None:
    outputs = deployed.main.outputs
    jobs, dlq = queue_attributes(outputs["QueueUrl"]), queue_attributes(outputs["DeadLetterQueueUrl"])
    assert jobs["SqsManagedSseEnabled"] == "true" and dlq["SqsManagedSseEnabled"] == "true"
    assert jobs["VisibilityTimeout"] == outputs["QueueVisibilityTimeoutSeconds"] == "120"
    redrive = json.loads(jobs["RedrivePolicy"])
    assert redrive == {"deadLetterTargetArn": dlq["QueueArn"], "maxReceiveCount": 5}
    assert int(dlq["MessageRetentionPeriod"]) > int(jobs["MessageRetentionPeriod"])
    assert queue_attributes(deployed.second.outputs["QueueUrl"])["VisibilityTimeout"] == "300"
    # Only the input bucket's notifications may send to the job queue.
    (statement,) = json.loads(jobs["Policy"])["Statement"]
    bucket, _ = s3_location(outputs["VideoS3Uri"])
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"]["ArnEquals"] == {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}


def test_buckets_are_private_encrypted_and_the_results_versioned(deployed: Stacks) -> None:
    s3 = support.client("s3")
    videos, prefix = s3_location(deployed.main.outputs["VideoS3Uri"])
    output, output_prefix = s3_location(deployed.main.outputs["OutputS3Uri"])
    for bucket in (videos, output):
        encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert encryption[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert block == dict.fromkeys(
            ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
        )
    assert s3.get_bucket_versioning(Bucket=output).get("Status") == "Enabled"
    assert s3.get_bucket_versioning(Bucket=videos).get("Status") is None
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=output)["Rules"]}
    staging = rules["ExpireDeletedStagingVersions"]
    assert (
        staging["Filter"] == {"Prefix": output_prefix} and staging["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1
    )
    notifications = s3.get_bucket_notification_configuration(Bucket=videos)["QueueConfigurations"]
    (queue,) = notifications
    assert queue["QueueArn"] == queue_attributes(deployed.main.outputs["QueueUrl"])["QueueArn"]
    assert queue["Filter"]["Key"]["FilterRules"] == [{"Name": "Prefix", "Value": prefix}] or queue["Filter"]["Key"][
        "FilterRules"
    ] == [{"Name": "prefix", "Value": prefix}]
    second_videos, _ = s3_location(deployed.second.outputs["VideoS3Uri"])
    assert "QueueConfigurations" not in s3.get_bucket_notification_configuration(Bucket=second_videos)


def test_topics_are_encrypted(deployed: Stacks) -> None:
    sns = support.client("sns")
    for key in ("SuccessTopicArn", "ErrorTopicArn"):
        attributes = sns.get_topic_attributes(TopicArn=deployed.main.outputs[key])["Attributes"]
        assert attributes["KmsMasterKeyId"] == "alias/aws/sns"


def launch_template_data(stack: stacks.Deployed) -> dict[str, Any]:
    versions = support.client("ec2").describe_launch_template_versions(
        LaunchTemplateId=stack.physical["NodeLaunchTemplate"]
    )["LaunchTemplateVersions"]
    return dict(versions[-1]["LaunchTemplateData"])


def test_node_group_protects_hooks_and_labels_its_nodes(deployed: Stacks) -> None:
    outputs = deployed.main.outputs
    made = group(outputs["AutoScalingGroupName"])
    assert made["NewInstancesProtectedFromScaleIn"] is True
    assert (made["MinSize"], made["MaxSize"]) == (0, 10)
    distribution = made["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 100
    spot = group(deployed.second.outputs["AutoScalingGroupName"])["MixedInstancesPolicy"]["InstancesDistribution"]
    assert spot["OnDemandPercentageAboveBaseCapacity"] == 0
    (hook,) = support.client("autoscaling").describe_lifecycle_hooks(AutoScalingGroupName=made["AutoScalingGroupName"])[
        "LifecycleHooks"
    ]
    assert (
        hook["LifecycleHookName"],
        hook["LifecycleTransition"],
        hook["DefaultResult"],
        hook["HeartbeatTimeout"],
    ) == (
        names.DEFAULT_LIFECYCLE_HOOK_NAME,
        "autoscaling:EC2_INSTANCE_TERMINATING",
        "CONTINUE",
        300,
    )
    data = launch_template_data(deployed.main)
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    user_data = base64.b64decode(data["UserData"]).decode()
    assert f"--node-labels={outputs['NodeLabels']}" in user_data
    assert f"--register-with-taints={outputs['NodeTaints']}" in user_data
    assert "name: framescale-test" in user_data and "cidr: 10.100.0.0/16" in user_data


def test_existing_group_stack_makes_no_node_group(deployed: Stacks) -> None:
    external = deployed.external
    assert external.outputs["AutoScalingGroupName"] == deployed.external_group
    for logical in ("NodeGroup", "NodeLaunchTemplate", "NodeRole", "NodeInstanceProfile", "NodeAccessEntry"):
        assert logical not in external.physical
    assert group(deployed.external_group)["NewInstancesProtectedFromScaleIn"] is False  # eksctl's part, see its file


# ---------------------------------------------------------------------- the roles


def normalized(policy: dict[str, Any]) -> dict[str, Any]:
    """A policy compared by meaning: statements by Sid, lists as sets."""

    def norm(value: Any) -> Any:
        if isinstance(value, list):
            return sorted(json.dumps(norm(v), sort_keys=True) for v in value)
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        return sorted([json.dumps(value)])  # a lone value means the same as a list of one

    return {
        "Version": policy["Version"],
        "Statement": {s.get("Sid", str(i)): norm(s) for i, s in enumerate(policy["Statement"])},
    }


def worker_resources(stack: stacks.Deployed, model: iam.S3Prefix | None) -> iam.WorkerResources:
    outputs = stack.outputs
    return iam.WorkerResources(
        queue_arn=queue_attributes(outputs["QueueUrl"])["QueueArn"],
        dead_letter_queue_arn=queue_attributes(outputs["DeadLetterQueueUrl"])["QueueArn"],
        videos=iam.S3Prefix(*s3_location(outputs["VideoS3Uri"])),
        results=iam.S3Prefix(*s3_location(outputs["OutputS3Uri"])),
        topic_arns=(outputs["SuccessTopicArn"], outputs["ErrorTopicArn"]),
        model=model,
    )


def role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def as_document(policy: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(policy, dict):
        return policy
    try:
        return dict(json.loads(policy))
    except json.JSONDecodeError:
        # moto 5.2 keeps a role's inline policy from CloudFormation as the Python repr of the
        # document, not as JSON.
        return dict(ast.literal_eval(policy))


def inline_policy(role: str) -> dict[str, Any]:
    iam_client = support.client("iam")
    (name,) = iam_client.list_role_policies(RoleName=role)["PolicyNames"]
    return as_document(iam_client.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])


def attached_policies(role: str) -> list[dict[str, Any]]:
    iam_client = support.client("iam")
    documents = []
    for attached in iam_client.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        policy = iam_client.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        version = iam_client.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"])
        documents.append(as_document(version["PolicyVersion"]["Document"]))
    return documents


def trust_policy(role: str) -> dict[str, Any]:
    return as_document(support.client("iam").get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"])


def test_worker_roles_hold_the_policies_of_framescale_iam(deployed: Stacks) -> None:
    account = support.client("sts").get_caller_identity()["Account"]
    for stack, model in [
        (deployed.main, iam.S3Prefix(*s3_location(deployed.main.outputs["ModelS3Uri"]))),
        (deployed.second, iam.S3Prefix(deployed.second.parameters["ModelBucket"], "ssd/")),
    ]:
        role = role_name(stack.outputs["WorkerRoleArn"])
        assert normalized(inline_policy(role)) == normalized(iam.worker_policy(worker_resources(stack, model)))
        expected_trust = iam.irsa_trust_policy(
            stack.parameters["OidcProvider"],
            stack.outputs["Namespace"],
            stack.outputs["WorkerServiceAccountName"],
            account=account,
        )
        assert normalized(trust_policy(role)) == normalized(expected_trust)
    # The model sits beside the videos unless a bucket is named.
    assert deployed.main.outputs["ModelS3Uri"].startswith(deployed.main.outputs["VideoS3Uri"].rsplit("/", 2)[0])
    assert deployed.second.outputs["ModelS3Uri"] == f"s3://{deployed.second.parameters['ModelBucket']}/ssd/"


def test_one_operator_role_holds_every_pipelines_operator_policy(deployed: Stacks) -> None:
    account = support.client("sts").get_caller_identity()["Account"]
    region = support.client("sts").meta.region_name
    role = role_name(deployed.main.outputs["OperatorRoleArn"])
    assert deployed.second.outputs["OperatorRoleArn"] == deployed.main.outputs["OperatorRoleArn"]
    assert "OperatorRole" not in deployed.second.physical
    expected = [
        iam.operator_policy(
            iam.OperatorResources(
                queue_arns=(queue_attributes(stack.outputs["QueueUrl"])["QueueArn"],),
                group_names=(stack.outputs["AutoScalingGroupName"],),
                region=region,
                account=account,
            )
        )
        for stack in (deployed.main, deployed.second)
    ]
    held = attached_policies(role)
    assert sorted(json.dumps(normalized(p), sort_keys=True) for p in held) == sorted(
        json.dumps(normalized(p), sort_keys=True) for p in expected
    )
    expected_trust = iam.irsa_trust_policy(
        deployed.main.parameters["OidcProvider"],
        deployed.main.outputs["Namespace"],
        deployed.main.outputs["OperatorServiceAccountName"],
        account=account,
    )
    assert normalized(trust_policy(role)) == normalized(expected_trust)
    # The eksctl stack's operator policy names the group it was given.
    (external,) = attached_policies(role_name(deployed.external.outputs["OperatorRoleArn"]))
    (size,) = [s for s in external["Statement"] if s["Sid"] == "SizeAndProtectTheGroup"]
    assert size["Resource"].endswith(f":autoScalingGroupName/{deployed.external_group}")


# ---------------------------------------------------------------------- values, chart, pipeline


@pytest.fixture(scope="module")
def values_file(deployed: Stacks, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`framescale helm-values` over the two stacks, read from CloudFormation (moto) with boto3."""
    out = tmp_path_factory.mktemp("values") / "values.yaml"
    assert cli(["helm-values", deployed.main.name, deployed.second.name, "--out", str(out)]) == 0
    return out


# Only for the tests: a short poll and no cooldowns, so the operator acts within seconds.
FAST = {"pollIntervalSeconds": 1, "scaleOutCooldownSeconds": 0, "targetBacklogPerReplica": 2}


@pytest.fixture(scope="module")
def rendered(values_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    values = yaml.safe_load(values_file.read_text())
    fast = tmp_path_factory.mktemp("fast") / "fast.yaml"
    # Helm replaces lists whole: the second file repeats each pipeline, its autoscaling extended.
    tuned = [{**p, "autoscaling": {**p["autoscaling"], **FAST}} for p in values["pipelines"]]
    fast.write_text(yaml.safe_dump({"pipelines": tuned}))
    helm = Helm(tmp_path_factory.mktemp("helm-home"))
    namespace = values_file.read_text().split("--namespace ", 1)[1].split()[0]
    return helm.template(values_file, namespace, "--values", str(fast))


def test_values_render_a_chart_wired_to_the_stacks(deployed: Stacks, rendered: Rendered) -> None:
    operator = rendered.of_kind("Deployment")[0]
    operator_account = rendered.one("ServiceAccount", operator["spec"]["template"]["spec"]["serviceAccountName"])
    assert operator_account["metadata"]["name"] == deployed.main.outputs["OperatorServiceAccountName"]
    assert (
        operator_account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        == deployed.main.outputs["OperatorRoleArn"]
    )
    pipelines = {vp["spec"]["queueUrl"]: vp for vp in rendered.of_kind("VideoPipeline")}
    for stack in (deployed.main, deployed.second):
        outputs = stack.outputs
        vp = pipelines[outputs["QueueUrl"]]
        assert vp["spec"]["nodeGroup"]["autoScalingGroupName"] == outputs["AutoScalingGroupName"]
        assert vp["spec"]["autoscaling"]["maxReplicas"] == int(outputs["NodeMaxReplicas"])
        (daemonset,) = [
            d for d in rendered.of_kind("DaemonSet") if d["metadata"]["name"].endswith(outputs["PipelineName"])
        ]
        pod = daemonset["spec"]["template"]["spec"]
        account = rendered.one("ServiceAccount", pod["serviceAccountName"])
        assert account["metadata"]["name"] == outputs["WorkerServiceAccountName"]
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == outputs["WorkerRoleArn"]
        labels = dict(item.split("=", 1) for item in outputs["NodeLabels"].split(","))
        assert pod["nodeSelector"] == labels
        env = worker_env(rendered, outputs["PipelineName"])
        assert env["FRAMESCALE_WORKER_QUEUE_URL"] == outputs["QueueUrl"]
        assert env["FRAMESCALE_WORKER_VISIBILITY_TIMEOUT_SECONDS"] == outputs["QueueVisibilityTimeoutSeconds"]


def worker_env(rendered: Rendered, pipeline: str) -> dict[str, str]:
    """The worker container's literal FRAMESCALE_WORKER_* and AWS_REGION settings as the chart renders them."""
    (daemonset,) = [d for d in rendered.of_kind("DaemonSet") if d["metadata"]["name"].endswith(pipeline)]
    (worker,) = [c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    return {e["name"]: str(e["value"]) for e in worker["env"] if "value" in e}


# What stays the test's own when the worker runs here rather than in its pod: the model server,
# scratch folder and health port of this machine, and no Kubernetes Lease.
LOCAL_ONLY = (
    "MODEL_SERVER",
    "MODEL_NAME",
    "WORK_DIR",
    "HEALTH_PORT",
    "LEASE_ENABLED",
    "NODE_NAME",
    "POD_NAME",
    "NAMESPACE",
    "PIPELINE_NAME",
    "LOG_FORMAT",
)


def test_uploaded_video_gives_results_and_a_bad_one_lands_in_the_dead_letter_queue(
    deployed: Stacks, rendered: Rendered, start_worker, tmp_path: Path
) -> None:
    outputs = deployed.main.outputs
    s3, sqs, sns = support.client("s3"), support.client("sqs"), support.client("sns")
    videos, video_prefix = s3_location(outputs["VideoS3Uri"])
    output, output_prefix = s3_location(outputs["OutputS3Uri"])
    # Queues of the test's own that read the topics (a consumer of the notifications).
    inboxes = {}
    for key in ("SuccessTopicArn", "ErrorTopicArn"):
        inbox = sqs.create_queue(QueueName=f"inbox-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        arn = queue_attributes(inbox)["QueueArn"]
        sns.subscribe(TopicArn=outputs[key], Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
        inboxes[key] = inbox
    stack = local_stack.LocalStack(
        queue_url=outputs["QueueUrl"],
        dead_letter_queue_url=outputs["DeadLetterQueueUrl"],
        input_bucket=videos,
        output_bucket=output,
        success_topic_arn=outputs["SuccessTopicArn"],
        error_topic_arn=outputs["ErrorTopicArn"],
        success_inbox_url=inboxes["SuccessTopicArn"],
        error_inbox_url=inboxes["ErrorTopicArn"],
    )
    chart_env = {
        key: value
        for key, value in worker_env(rendered, outputs["PipelineName"]).items()
        if key.startswith("FRAMESCALE_WORKER_") and key.removeprefix("FRAMESCALE_WORKER_") not in LOCAL_ONLY
    }
    assert {"FRAMESCALE_WORKER_OUTPUT", "FRAMESCALE_WORKER_DEAD_LETTER_QUEUE_URL"} <= set(chart_env)
    worker = start_worker(stack, env_overrides=chart_env)

    # Outside the video prefix: no job (a model, say).
    s3.put_object(Bucket=videos, Key="models/detector/1/saved_model.pb", Body=b"not a job")
    good = write_synthetic_video(tmp_path / "cam1.mp4", frame_count=20).path
    s3.upload_file(str(good), videos, f"{video_prefix}cam1.mp4")
    s3.put_object(Bucket=videos, Key=f"{video_prefix}broken.mp4", Body=b"this is not a video" * 100)

    def summaries() -> dict[str, dict[str, Any]]:
        found = {}
        for item in s3.list_objects_v2(Bucket=output, Prefix=output_prefix).get("Contents", []):
            if item["Key"].endswith("/" + results.SUMMARY_FILE):
                found[item["Key"]] = json.loads(s3.get_object(Bucket=output, Key=item["Key"])["Body"].read())
        return found

    (summary,) = support.wait_for(summaries, timeout=WAIT, what="the video's summary in the created bucket").values()
    assert summary["status"] == "succeeded"
    assert summary["input"]["url"] == f"s3://{videos}/{video_prefix}cam1.mp4"
    assert summary["frames"]["sampled"] >= 1
    letters: list[dict[str, Any]] = []
    support.wait_for(
        lambda: letters.extend(support.dead_letters(stack)) or letters, timeout=WAIT, what="the dead-lettered video"
    )
    (letter,) = letters
    assert "broken.mp4" in letter["Body"], "the S3 event of the bad upload"  # its key is URL-encoded
    assert support.failure_reason(letter)
    assert support.wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (0, 0), what="the queue to drain")
    success = support.notifications(stack.success_inbox_url)
    assert [n["invocationStatus"] for n in success] == ["Completed"]
    errors = support.wait_for(lambda: support.notifications(stack.error_inbox_url), what="the error notification")
    assert [n["invocationStatus"] for n in errors] == ["Failed"]
    assert len(summaries()) == 1, "one job per video under the prefix, none for the model"
    # The versioned output bucket: each result has one version; the only noncurrent versions are
    # the staged copies the commit deleted, which the lifecycle rule's prefix covers.
    versions = s3.list_object_versions(Bucket=output, Prefix=output_prefix)
    current = [v for v in versions.get("Versions", []) if v["IsLatest"]]
    noncurrent = [v for v in versions.get("Versions", []) if not v["IsLatest"]]
    assert {v["Key"].rsplit("/", 1)[1] for v in current} == {results.SUMMARY_FILE, results.DETECTIONS_FILE}
    assert noncurrent and all("/_staging/" in v["Key"] for v in noncurrent)
    assert all(v["Key"].startswith(output_prefix) for v in noncurrent)
    assert not [r for r in worker_log(worker) if r.get("levelname") == "ERROR" and "AccessDenied" in str(r)]


def test_operator_scales_the_created_group(
    deployed: Stacks, rendered: Rendered, operator_process: OperatorProcess, kube: KubeClient
) -> None:
    outputs = deployed.main.outputs
    sqs = support.client("sqs")
    namespace = f"cfn-{uuid.uuid4().hex[:6]}"
    (vp,) = [v for v in rendered.of_kind("VideoPipeline") if v["spec"]["queueUrl"] == outputs["QueueUrl"]]
    body = {
        "apiVersion": vp["apiVersion"],
        "kind": vp["kind"],
        "metadata": {"name": vp["metadata"]["name"], "namespace": namespace},
        "spec": vp["spec"],
    }
    kube.create(kube.vp_path(namespace), body)
    for index in range(6):
        sqs.send_message(QueueUrl=outputs["QueueUrl"], MessageBody=json.dumps({"video": f"s3://nowhere/{index}.mp4"}))
    name = outputs["AutoScalingGroupName"]
    try:
        wait_for_operator(lambda: group(name)["DesiredCapacity"] == 3, "the operator to scale the group to 3")
        instances = wait_for_operator(
            lambda: [i for i in group(name)["Instances"] if i["LifecycleState"] == "InService"] or None,
            "instances in service",
        )
        assert all(i["ProtectedFromScaleIn"] for i in instances), "AWS never chooses a victim"
        status = wait_for_operator(
            lambda: kube.status(namespace, vp["metadata"]["name"]).get("desiredReplicas"), "status"
        )
        assert status == 3
    finally:
        sqs.purge_queue(QueueUrl=outputs["QueueUrl"])
        kube.delete(kube.vp_path(namespace, vp["metadata"]["name"]))
