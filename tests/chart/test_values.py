"""Values: the schema rejects bad ones with a clear message, every value is documented, and what
the chart renders follows values (node selector, tolerations, settings, TF Serving, IRSA)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic.alias_generators import to_camel

from framescale.worker.settings import WorkerSettings
from framescale_operator.settings import OperatorSettings
from tests.chart.conftest import CHART, RELEASE, Helm, Rendered, merged_pipelines, pod_containers, render

pytestmark = pytest.mark.chart

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
MINIMAL_PIPELINE = {
    "name": "p1",
    "queueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
    "nodeGroup": {"autoScalingGroupName": "group-a"},
    "model": {"s3Uri": "s3://models/detector/"},
}
# Worker and operator settings the chart sets itself (from other values or the downward API).
WORKER_SET_BY_CHART = {
    "queue_url", "model_server", "model_name", "health_port", "work_dir", "lease_enabled",
    "node_name", "pod_name", "namespace", "pipeline_name",
}  # fmt: skip
OPERATOR_SET_BY_CHART = {
    "namespaces", "lease_namespace", "health_port", "health_host", "metrics_port", "metrics_host", "standalone",
    "leader_election", "leader_lease_name", "leader_lease_namespace", "leader_identity",
}  # fmt: skip


def pipelines_json(*pipelines: dict[str, Any]) -> str:
    return "pipelines=" + json.dumps(list(pipelines))


def with_pipeline(**changes: Any) -> dict[str, Any]:
    pipeline = json.loads(json.dumps(MINIMAL_PIPELINE))
    pipeline.update(changes)
    return pipeline


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--set", "replicaCount=2"], "additional properties 'replicaCount' not allowed", id="unknown-top-level-key"
        ),
        pytest.param(
            ["--set-json", pipelines_json({**MINIMAL_PIPELINE, "queueURL": "x"})],
            "additional properties 'queueURL' not allowed",
            id="typo-in-a-pipeline",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(worker={"settings": {"batchsize": 4}}))],
            "additional properties 'batchsize' not allowed",
            id="unknown-worker-setting",
        ),
        pytest.param(["--set", "operator.settings.logLevel=TRACE"], "logLevel", id="bad-enum"),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(queueUrl="sqs://jobs"))],
            "/pipelines/0/queueUrl",
            id="bad-queue-url",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(name="Bad_Name"))], "/pipelines/0/name", id="bad-pipeline-name"
        ),
        pytest.param(
            ["--set", "operator.serviceAccount.iamRoleArn=my-role"],
            "/operator/serviceAccount/iamRoleArn",
            id="bad-role-arn",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(replicas="three"))], "/pipelines/0/replicas", id="wrong-type"
        ),
        pytest.param(
            ["--set-json", pipelines_json({k: v for k, v in MINIMAL_PIPELINE.items() if k != "queueUrl"})],
            "missing property 'queueUrl'",
            id="missing-queue-url",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(worker={"settings": {"batchSize": 64}}))],
            "worker.settings.batchSize (64) exceeds tfServing.batching.maxBatchSize (32)",
            id="batch-larger-than-tf-serving-allows",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(model={"s3Uri": ""}))],
            "pipelines[0] (p1): model.s3Uri is required",
            id="no-model-source",
        ),
        pytest.param(
            ["--set-json", pipelines_json(MINIMAL_PIPELINE, MINIMAL_PIPELINE)],
            'the name "p1" is used by more than one pipeline',
            id="duplicate-pipeline",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(autoscaling={"minReplicas": 5, "maxReplicas": 2}))],
            "autoscaling.minReplicas (5) must not exceed maxReplicas (2)",
            id="min-above-max",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(nodeGroup={"autoScalingGroupName": "g", "nodeSelector": {}}))],
            "an empty selector would put workers on every node",
            id="empty-node-selector",
        ),
        pytest.param(
            # "/" would leave the models volume's mountPath empty once the slash is trimmed.
            ["--set-json", pipelines_json(with_pipeline(model={"s3Uri": "s3://models/d/", "basePath": "/"}))],
            "/pipelines/0/model/basePath",
            id="model-base-path-is-root",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(model={"s3Uri": "s3://models/d/", "basePath": "models"}))],
            "/pipelines/0/model/basePath",
            id="model-base-path-is-relative",
        ),
        pytest.param(
            ["--set-json", pipelines_json(with_pipeline(terminationGracePeriodSeconds=30))],
            "must exceed worker.settings.shutdownGraceSeconds (60)",
            id="grace-shorter-than-shutdown",
        ),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(helm: Helm, args: list[str], message: str) -> None:
    stderr = helm.template_error(*args)
    assert message in stderr, stderr


def test_minimal_pipeline_renders(helm: Helm) -> None:
    rendered = render(helm, "defaults", "--set-json", pipelines_json(MINIMAL_PIPELINE))
    (daemonset,) = rendered.of_kind("DaemonSet")
    assert daemonset["metadata"]["name"] == f"{RELEASE}-framescale-p1"


def schema_objects(node: dict[str, Any], path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if node.get("type") == "object" or (isinstance(node.get("type"), list) and "object" in node["type"]):
        found.append((path, node))
    for key in ("properties", "definitions"):
        for name, child in node.get(key, {}).items():
            found += schema_objects(child, f"{path}/{key}/{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += schema_objects(node[key], f"{path}/{key}")
    return found


def test_schema_rejects_unknown_keys_everywhere() -> None:
    for path, node in schema_objects(SCHEMA):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
        else:  # a typed map (labels, resource lists), or a Kubernetes object the API server checks
            described = "Kubernetes API object" in node.get("description", "")
            assert "additionalProperties" in node or described, f"{path}: an untyped object"


def resolve(ref: str) -> dict[str, Any]:
    node: Any = SCHEMA
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def schema_node(path: list[str]) -> dict[str, Any] | None:
    node: dict[str, Any] = SCHEMA
    for key in path:
        while "$ref" in node:
            node = resolve(node["$ref"])
        if key == "[]":
            node = node.get("items", {})
            continue
        properties = node.get("properties")
        if properties is None or key not in properties:
            return None
        node = properties[key]
    while "$ref" in node:
        node = resolve(node["$ref"])
    return node


# Values whose defaults are Kubernetes objects written out in full: their inner keys are the
# Kubernetes API's, documented there; the value itself carries the comment.
KUBERNETES_SHAPED = ("resources", "podSecurityContext", "containerSecurityContext", "tolerations", "nodeSelector")


def test_every_value_is_documented() -> None:
    """Every key of values.yaml has a comment above it (or sits inside a Kubernetes-shaped
    default), and every key the schema defines has a description."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)(- )?([A-Za-z0-9_./-]+):( |$)", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match.group(1)) + (2 if match.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match.group(3)]
        stack.append((indent, match.group(3)))
        if any(part in KUBERNETES_SHAPED for part in path[:-1]) or match.group(2):
            continue
        previous = lines[number - 1].strip() if number else ""
        is_section = (
            line.rstrip().endswith(":") and number + 1 < len(lines) and lines[number + 1].startswith(" " * (indent + 2))
        )
        if not previous.startswith("#") and not is_section:
            undocumented.append(".".join(path))
        node = schema_node(path)
        assert node is not None, f"{'.'.join(path)} is in values.yaml but not in values.schema.json"
    assert not undocumented, f"values without a comment: {undocumented}"
    for path, node in schema_objects(SCHEMA):
        for name, child in node.get("properties", {}).items():
            target = resolve(child["$ref"]) if "$ref" in child else child
            assert target.get("description") or "$ref" in child, f"{path}/properties/{name} has no description"


def test_schema_covers_every_worker_and_operator_setting() -> None:
    """A setting added to the worker or the operator must be added to values and schema too."""
    worker = set(SCHEMA["definitions"]["workerSettings"]["properties"])
    assert worker == {to_camel(f) for f in WorkerSettings.model_fields} - {to_camel(f) for f in WORKER_SET_BY_CHART}
    operator = set(SCHEMA["definitions"]["operatorSettings"]["properties"])
    assert operator == {to_camel(f) for f in OperatorSettings.model_fields} - {
        to_camel(f) for f in OPERATOR_SET_BY_CHART
    }


def test_values_yaml_lists_every_setting(chart_values: dict[str, Any]) -> None:
    assert set(chart_values["pipelineDefaults"]["worker"]["settings"]) == set(
        SCHEMA["definitions"]["workerSettings"]["properties"]
    )
    assert set(chart_values["operator"]["settings"]) == set(SCHEMA["definitions"]["operatorSettings"]["properties"])


def container_env(container: dict[str, Any], downward: dict[str, str]) -> dict[str, str]:
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_worker_environment_is_a_valid_worker_configuration(
    rendered_pipelines: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered environment, loaded the way the worker loads it, validates."""
    for daemonset in rendered_pipelines.of_kind("DaemonSet"):
        worker = next(c for _, c in pod_containers(daemonset) if c["name"] == "worker")
        env = container_env(worker, {"spec.nodeName": "node-1", "metadata.name": "pod-1"})
        for name in [n for n in os.environ if n.startswith("FRAMESCALE_WORKER_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("FRAMESCALE_WORKER_"):
                monkeypatch.setenv(name, value)
        settings = WorkerSettings()  # type: ignore[call-arg]
        assert settings.lease_enabled and settings.node_name == "node-1" and settings.pod_name == "pod-1"
        assert settings.model_server == "localhost:8500"
        assert settings.work_dir == Path("/var/lib/framescale")
        assert settings.pipeline_name == daemonset["metadata"]["labels"]["framescale.io/pipeline"]
        assert settings.namespace == daemonset["metadata"]["namespace"]
        mounts = {m["mountPath"] for m in worker["volumeMounts"]}
        assert str(settings.work_dir) in mounts


def test_operator_environment_is_a_valid_operator_configuration(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    (deployment,) = rendered.of_kind("Deployment")
    env = container_env(deployment["spec"]["template"]["spec"]["containers"][0], {"metadata.name": "operator-pod-1"})
    for name, value in env.items():
        if name.startswith("FRAMESCALE_OPERATOR_"):
            monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.standalone is True
    assert settings.leader_election is True and settings.leader_identity == "operator-pod-1"
    assert settings.leader_lease_namespace == deployment["metadata"]["namespace"]
    assert settings.namespaces == rendered.values.get("operator", {}).get("watchNamespaces", [])


def test_settings_values_become_environment(helm: Helm) -> None:
    settings = {
        "maxObjectBytes": 53687091200,  # large integers must not come out as 5.36870912e+10
        "scoreThreshold": 0.45,
        "labels": {"1": "person", "2": "car"},
        "logFormat": "text",
        "sampleFps": 2,
    }
    rendered = render(helm, "defaults", "--set-json", pipelines_json(with_pipeline(worker={"settings": settings})))
    worker = next(c for _, c in pod_containers(rendered.of_kind("DaemonSet")[0]) if c["name"] == "worker")
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["FRAMESCALE_WORKER_MAX_OBJECT_BYTES"] == "53687091200"
    assert env["FRAMESCALE_WORKER_SCORE_THRESHOLD"] == "0.45"
    assert json.loads(env["FRAMESCALE_WORKER_LABELS"]) == {"1": "person", "2": "car"}
    assert env["FRAMESCALE_WORKER_LOG_FORMAT"] == "text"
    assert env["FRAMESCALE_WORKER_SAMPLE_FPS"] == "2"
    # null settings are left to the worker's defaults
    assert "FRAMESCALE_WORKER_BATCH_SIZE" not in env


def test_daemonset_node_selector_and_tolerations_follow_values(
    rendered_pipelines: Rendered, chart_values: dict[str, Any]
) -> None:
    for pipeline in merged_pipelines(rendered_pipelines.values, chart_values):
        daemonset = rendered_pipelines.one("DaemonSet", f"{RELEASE}-framescale-{pipeline['name']}")
        pod = daemonset["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == pipeline["nodeGroup"]["nodeSelector"]
        assert pod["tolerations"] == pipeline["tolerations"]


def test_node_selector_and_tolerations_are_replaced_not_merged(helm: Helm) -> None:
    selector = {"example.com/pool": "video"}
    tolerations = [{"key": "example.com/dedicated", "operator": "Equal", "value": "video", "effect": "NoExecute"}]
    pipeline = with_pipeline(nodeGroup={"autoScalingGroupName": "g", "nodeSelector": selector}, tolerations=tolerations)
    rendered = render(helm, "defaults", "--set-json", pipelines_json(pipeline))
    pod = rendered.of_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == selector
    assert pod["tolerations"] == tolerations
    assert rendered.of_kind("VideoPipeline")[0]["spec"]["nodeGroup"]["nodeSelector"] == selector
    defaults = render(helm, "defaults", "--set-json", pipelines_json(MINIMAL_PIPELINE))
    default_pod = defaults.of_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    assert default_pod["nodeSelector"] == {"framescale.io/accelerator": "true"}
    assert default_pod["tolerations"] == [
        {"key": "framescale.io/accelerator", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_tf_serving_pairs_with_the_worker(rendered_pipelines: Rendered) -> None:
    for daemonset in rendered_pipelines.of_kind("DaemonSet"):
        pod = daemonset["spec"]["template"]["spec"]
        init = {c["name"]: c for c in pod.get("initContainers", [])}
        serving = init["tf-serving"]
        assert serving["restartPolicy"] == "Always", "TF Serving is a native sidecar"
        assert serving["image"].split(":")[0].endswith(("tensorflow/serving", "tfserving-local"))
        args = serving["args"]
        assert "--enable_batching=true" in args
        assert "--batching_parameters_file=/etc/framescale/tfserving/batching.config" in args
        model_name = next(a for a in args if a.startswith("--model_name=")).split("=", 1)[1]
        worker = next(c for c in pod["containers"] if c["name"] == "worker")
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["FRAMESCALE_WORKER_MODEL_NAME"] == model_name
        grpc = next(p["containerPort"] for p in serving["ports"] if p["name"] == "grpc")
        assert env["FRAMESCALE_WORKER_MODEL_SERVER"] == f"localhost:{grpc}"
        configmap = rendered_pipelines.one("ConfigMap", f"{daemonset['metadata']['name']}-tfserving")
        config = configmap["data"]["batching.config"]
        assert re.search(r"max_batch_size \{ value: \d+ \}", config)
        batch = int(env.get("FRAMESCALE_WORKER_BATCH_SIZE", "8"))
        assert batch <= int(re.search(r"max_batch_size \{ value: (\d+) \}", config).group(1))  # type: ignore[union-attr]
        if "model-sync" in init:
            sync = init["model-sync"]
            assert sync["command"][:3] == ["aws", "s3", "sync"]
            source, target = sync["command"][-2:]
            assert source.startswith("s3://")
            base_path = next(a for a in args if a.startswith("--model_base_path=")).split("=", 1)[1]
            assert target == base_path
            assert list(init) == ["model-sync", "tf-serving"], "the model is synced before TF Serving starts"


def test_gpu_scenario_uses_the_gpu_image_and_requests_a_gpu(helm: Helm) -> None:
    rendered = render(helm, "eks-gpu")
    gpu = rendered.of_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    serving = next(c for c in gpu["initContainers"] if c["name"] == "tf-serving")
    assert serving["image"] == "tensorflow/serving:2.20.0-gpu"
    # Adding the GPU must leave the CPU and memory the values ask for as they are: a merge that
    # wrote the limits into the shared GPU map once turned these requests into cpu "2" and 8Gi.
    wanted = rendered.values["pipelines"][0]["tfServing"]["resources"]
    assert wanted["requests"] != wanted["limits"], "the scenario must tell requests from limits"
    assert serving["resources"] == {
        "requests": {**wanted["requests"], "nvidia.com/gpu": 1},
        "limits": {**wanted["limits"], "nvidia.com/gpu": 1},
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    cpu = render(helm, "eks-cpu").of_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    serving = next(c for c in cpu["initContainers"] if c["name"] == "tf-serving")
    assert serving["image"] == "tensorflow/serving:2.20.0"
    assert "nvidia.com/gpu" not in serving["resources"]["limits"]


def test_irsa_roles_are_annotated(helm: Helm) -> None:
    rendered = render(helm, "eks-gpu")
    accounts = {a["metadata"]["name"]: a for a in rendered.of_kind("ServiceAccount")}
    role = "eks.amazonaws.com/role-arn"
    assert (
        accounts[f"{RELEASE}-framescale-operator"]["metadata"]["annotations"][role]
        == (rendered.values["operator"]["serviceAccount"]["iamRoleArn"])
    )
    pipeline = rendered.values["pipelines"][0]
    worker = accounts[f"{RELEASE}-framescale-{pipeline['name']}-worker"]
    assert worker["metadata"]["annotations"][role] == pipeline["serviceAccount"]["iamRoleArn"]
    kind = render(helm, "kind")
    for account in kind.of_kind("ServiceAccount"):
        assert role not in account["metadata"].get("annotations", {})


def test_aws_endpoint_only_when_set(helm: Helm) -> None:
    for scenario, expected in (("kind", "http://moto.framescale-aws.svc.cluster.local:5000"), ("eks-gpu", None)):
        for workload in render(helm, scenario).workloads():
            for _, container in pod_containers(workload):
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                if container["name"] in {"tf-serving", "cleanup"}:
                    # Neither calls AWS: TF Serving reads the synced model, the uninstall hook
                    # talks to the Kubernetes API only.
                    assert not {"AWS_ENDPOINT_URL", "AWS_REGION"} & set(env), container["name"]
                    continue
                assert env.get("AWS_ENDPOINT_URL") == expected, f"{scenario}: {container['name']}"
                assert env["AWS_REGION"]


def test_images_follow_values(helm: Helm) -> None:
    rendered = render(helm, "kind")
    images = {c["name"]: c["image"] for w in rendered.workloads() for _, c in pod_containers(w)}
    assert images == {
        "operator": "framescale/operator:dev",
        "worker": "framescale/worker:dev",
        "tf-serving": "framescale/tfserving-local:dev",
        "cleanup": "registry.k8s.io/kubectl:v1.34.3",
    }
    digest = "sha256:" + "a" * 64
    pinned = render(helm, "defaults", "--set", f"operator.image.digest={digest}")
    assert pinned.of_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"framescale/operator@{digest}"
    )
    default = render(helm, "defaults").of_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert default["image"] == "framescale/operator:0.1.0"


# Every image value and the container it lands in (the eks-gpu scenario renders them all).
DIGEST_CASES = {
    "operator.image": "operator",
    "cleanup.image": "cleanup",
    "pipelineDefaults.worker.image": "worker",
    "pipelineDefaults.tfServing.image": "tf-serving",
    "pipelineDefaults.model.sync.image": "model-sync",
}


def container_images(rendered: Rendered) -> dict[str, str]:
    return {c["name"]: c["image"] for w in rendered.workloads() for _, c in pod_containers(w)}


@pytest.mark.parametrize("value", sorted(DIGEST_CASES))
def test_every_image_takes_a_digest_instead_of_its_tag(helm: Helm, value: str) -> None:
    """As cert-manager's chart: `repository@digest` when image.digest is set, for every image
    (the TF Serving GPU suffix belongs to the tag and is not added to a digest)."""
    container = DIGEST_CASES[value]
    digest = "sha256:" + "b" * 64
    tagged = container_images(render(helm, "eks-gpu"))
    repository = tagged[container].rsplit(":", 1)[0]
    pinned = container_images(render(helm, "eks-gpu", "--set", f"{value}.digest={digest}"))
    assert pinned[container] == f"{repository}@{digest}", pinned
    # Only that image changed.
    assert {k: v for k, v in pinned.items() if k != container} == {k: v for k, v in tagged.items() if k != container}


@pytest.mark.parametrize("digest", ["sha256:abc", "b" * 64, "sha512:" + "b" * 128, "latest"])
def test_a_malformed_digest_is_refused(helm: Helm, digest: str) -> None:
    error = helm.template_error("--set", f"pipelineDefaults.worker.image.digest={digest}")
    assert "digest" in error, error
