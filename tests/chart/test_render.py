"""helm lint and helm template for every scenario; the output validated against Kubernetes'
own schemas (kubernetes-validate, strict) and the VideoPipelines against the chart's CRD."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from tests.chart.conftest import (
    CHART,
    RELEASE,
    SCENARIOS,
    VIDEOPIPELINE_API,
    WITH_PIPELINES,
    Helm,
    Rendered,
    merged_pipelines,
    render,
)

pytestmark = pytest.mark.chart

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
# kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ["1.29", kv_utils.major_minor(kv_utils.latest_version())]
# Kinds that are not Kubernetes' own: checked elsewhere (VideoPipeline against the CRD) or
# belonging to prometheus-operator.
CUSTOM_KINDS = {"VideoPipeline", "ServiceMonitor", "PodMonitor"}


def test_newest_schemas_are_at_least_1_37() -> None:
    major, minor = (int(part) for part in KUBERNETES_VERSIONS[-1].split("."))
    assert (major, minor) >= (1, 37)


def test_helm_lint(helm: Helm, scenario: str) -> None:
    values_file, namespace = SCENARIOS[scenario]
    args = ["lint", str(CHART), "--strict", "--namespace", namespace]
    if values_file is not None:
        args += ["--values", str(values_file)]
    result = helm.run(*args)
    assert "0 chart(s) failed" in result.stdout


def test_template_renders_the_expected_objects(rendered: Rendered, scenario: str) -> None:
    kinds = {doc["kind"] for doc in rendered.docs}
    always = {
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "NetworkPolicy",
    }
    assert always <= kinds, f"missing: {always - kinds}"
    if scenario == "defaults":
        assert not rendered.of_kind("DaemonSet"), "no pipeline is defined by default"
        assert not rendered.of_kind("VideoPipeline")
        return
    pipelines = rendered.values["pipelines"]
    for kind in ("DaemonSet", "VideoPipeline", "ConfigMap", "Role", "RoleBinding", "NetworkPolicy"):
        per_pipeline = [d for d in rendered.of_kind(kind) if d["metadata"]["labels"].get("framescale.io/pipeline")]
        assert len(per_pipeline) == len(pipelines), kind
    for pipeline in pipelines:
        rendered.one("DaemonSet", f"{RELEASE}-framescale-{pipeline['name']}")
        rendered.one("VideoPipeline", pipeline["name"])


def test_every_object_is_labelled_and_namespaced(rendered: Rendered, scenario: str) -> None:
    namespace = SCENARIOS[scenario][1]
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for doc in rendered.docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, doc["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"]
        elif doc["kind"] != "RoleBinding":  # RoleBindings may sit in watched namespaces
            assert doc["metadata"]["namespace"] == namespace, f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_kubernetes_schemas(rendered: Rendered, version: str) -> None:
    problems = []
    checked = 0
    for doc in rendered.docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
        except kv_utils.SchemaNotFoundError:
            if doc["kind"] not in CUSTOM_KINDS:
                problems.append(f"{name}: no Kubernetes {version} schema for {doc['apiVersion']}")
        except kv_utils.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problems.append(f"{name}: {path}: {error.message}")
    assert not problems, "\n".join(problems)
    assert checked >= 8


def test_strict_validation_rejects_unknown_fields(rendered: Rendered) -> None:
    """The schema check above can fail: an unknown field in a rendered object is caught."""
    deployment = copy.deepcopy(rendered.of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv_utils.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def structural_to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural OpenAPI v3 schema as plain JSON Schema: `nullable` becomes a null type,
    unknown properties are rejected where the API server would prune them (so a chart that
    renders a field the CRD does not know fails here instead of losing it silently)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: structural_to_jsonschema(prop) for name, prop in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = structural_to_jsonschema(value)
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def videopipeline_schema(crd_file: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd_file["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = structural_to_jsonschema(version["schema"]["openAPIV3Schema"])
    schema["properties"].update(
        {"apiVersion": {"const": "framescale.io/v1alpha1"}, "kind": {"const": "VideoPipeline"}, "metadata": {}}
    )
    return schema


def test_videopipelines_match_the_crd_schema(
    rendered_pipelines: Rendered, videopipeline_schema: dict[str, Any]
) -> None:
    validator = jsonschema.Draft202012Validator(videopipeline_schema)
    pipelines = rendered_pipelines.of_kind("VideoPipeline")
    assert pipelines
    for resource in pipelines:
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(resource)]
        assert not errors, f"VideoPipeline {resource['metadata']['name']}: {errors}"
        autoscaling = resource["spec"]["autoscaling"]
        assert autoscaling["minReplicas"] <= autoscaling["maxReplicas"]  # the CRD's CEL rule


def test_crd_schema_check_can_fail(videopipeline_schema: dict[str, Any], rendered_pipelines: Rendered) -> None:
    resource = copy.deepcopy(rendered_pipelines.of_kind("VideoPipeline")[0])
    resource["spec"]["nodeGroup"]["asgName"] = "typo"
    resource["spec"]["autoscaling"]["maxReplicas"] = "ten"
    errors = list(jsonschema.Draft202012Validator(videopipeline_schema).iter_errors(resource))
    assert len(errors) == 2


def test_videopipeline_fields_follow_values(rendered_pipelines: Rendered, chart_values: dict[str, Any]) -> None:
    for pipeline in merged_pipelines(rendered_pipelines.values, chart_values):
        resource = rendered_pipelines.one("VideoPipeline", pipeline["name"])
        spec = resource["spec"]
        assert spec["queueUrl"] == pipeline["queueUrl"]
        assert spec["nodeGroup"] == {
            "autoScalingGroupName": pipeline["nodeGroup"]["autoScalingGroupName"],
            "nodeSelector": pipeline["nodeGroup"]["nodeSelector"],
        }
        assert spec["daemonSetName"] == f"{RELEASE}-framescale-{pipeline['name']}"
        assert spec.get("replicas") == pipeline.get("replicas")
        assert spec.get("mode") == ("Manual" if pipeline.get("replicas") is not None else None)
        daemon_set = rendered_pipelines.one("DaemonSet", spec["daemonSetName"])
        assert spec["workerSelector"] == daemon_set["spec"]["selector"]["matchLabels"]
        assert spec["workerSelector"]["framescale.io/pipeline"] == pipeline["name"]
        expected = {k: v for k, v in pipeline["autoscaling"].items() if v is not None}
        assert spec["autoscaling"] == expected


def test_crd_is_the_generated_file_plus_chart_metadata(helm: Helm, crd_file: dict[str, Any]) -> None:
    crd = render(helm, "defaults").one("CustomResourceDefinition", "videopipelines.framescale.io")
    assert crd["spec"] == crd_file["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "framescale"
    subresources = crd["spec"]["versions"][0]["subresources"]
    assert subresources["scale"]["specReplicasPath"] == ".spec.replicas"
    assert subresources["scale"]["labelSelectorPath"] == ".status.selector"
    assert "status" in subresources


def test_crds_enabled_and_keep_switch(helm: Helm) -> None:
    not_kept = render(helm, "defaults", "--set", "crds.keep=false")
    crd = not_kept.one("CustomResourceDefinition", "videopipelines.framescale.io")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    disabled = render(helm, "kind", "--set", "crds.enabled=false")
    assert not disabled.of_kind("CustomResourceDefinition")
    # Without the CRD in this release, the API must already be served: no hooks.
    for resource in disabled.of_kind("VideoPipeline"):
        assert "helm.sh/hook" not in resource["metadata"].get("annotations", {})


@pytest.mark.parametrize("scenario_name", WITH_PIPELINES)
def test_videopipelines_are_hooks_only_while_the_crd_is_new(helm: Helm, scenario_name: str) -> None:
    first_install = render(helm, scenario_name)
    for resource in first_install.of_kind("VideoPipeline"):
        annotations = resource["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
        # Helm adopts the object as a release resource on the next upgrade thanks to these.
        assert annotations["meta.helm.sh/release-name"] == RELEASE
        assert annotations["meta.helm.sh/release-namespace"] == SCENARIOS[scenario_name][1]
        assert resource["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    served = render(helm, scenario_name, "--api-versions", VIDEOPIPELINE_API)
    assert served.of_kind("VideoPipeline")
    for resource in served.of_kind("VideoPipeline"):
        assert not resource["metadata"].get("annotations"), "an ordinary release object once the API is served"


def hook(resource: dict[str, Any]) -> tuple[str | None, int]:
    annotations = resource["metadata"].get("annotations", {})
    return annotations.get("helm.sh/hook"), int(annotations.get("helm.sh/hook-weight", "0"))


@pytest.mark.parametrize("scenario_name", WITH_PIPELINES)
def test_uninstall_hook_deletes_the_videopipelines_while_the_operator_runs(helm: Helm, scenario_name: str) -> None:
    """Every VideoPipeline carries the operator's finalizer: a plain `helm uninstall` removed the
    operator with them (and never the ones a first install created as hooks), leaving them
    Terminating for ever. A pre-delete hook, which Helm runs before it deletes anything, deletes
    each of them and waits until the operator has let it go."""
    rendered = render(helm, scenario_name)
    namespace = SCENARIOS[scenario_name][1]
    name = f"{RELEASE}-framescale-cleanup"
    pipelines = sorted(vp["metadata"]["name"] for vp in rendered.of_kind("VideoPipeline"))
    assert pipelines
    job = rendered.one("Job", name)
    assert hook(job)[0] == "pre-delete"
    policies = job["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")
    assert "before-hook-creation" in policies, "a failed Job must not block the next attempt"
    assert "hook-failed" not in policies, "a failed Job is kept for its logs"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"] + container["args"]
    assert command[:3] == ["kubectl", "delete", "videopipelines.framescale.io"]
    named = [arg for arg in command[3:] if not arg.startswith("-")]
    assert sorted(named) == pipelines, "every VideoPipeline of the release, by name"
    assert f"--namespace={namespace}" in command
    assert "--wait=true" in command, "return only once the finalizers are gone"
    assert "--ignore-not-found=true" in command
    timeout = int(next(a for a in command if a.startswith("--timeout=")).removeprefix("--timeout=").rstrip("s"))
    assert timeout == 180
    assert job["spec"]["activeDeadlineSeconds"] > timeout
    assert pod["restartPolicy"] == "Never"
    # Least privilege: this release's VideoPipelines, by name, nothing else.
    assert pod["serviceAccountName"] == name
    (rule,) = rendered.one("Role", name)["rules"]
    assert sorted(rule.pop("resourceNames")) == pipelines
    assert rule == {
        "apiGroups": ["framescale.io"],
        "resources": ["videopipelines"],
        "verbs": ["get", "list", "watch", "delete"],
    }
    binding = rendered.one("RoleBinding", name)
    assert binding["roleRef"]["name"] == name
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    # What the Job needs exists before it starts: same hook, lower weight.
    supporting = [rendered.one(kind, name) for kind in ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy")]
    for resource in supporting:
        assert hook(resource)[0] == "pre-delete", resource["kind"]
        assert hook(resource)[1] < hook(job)[1], resource["kind"]
    # No other pre-delete hook: the VideoPipelines must still be there when the Job starts.
    hooks = {f"{d['kind']}/{d['metadata']['name']}" for d in rendered.docs if hook(d)[0] == "pre-delete"}
    assert hooks == {f"{d['kind']}/{name}" for d in [job, *supporting]}
    # It reaches DNS and the API server, nothing else, and accepts nothing.
    policy = rendered.one("NetworkPolicy", name)["spec"]
    assert not policy.get("ingress")
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    api_ports = set(rendered.values.get("networkPolicy", {}).get("kubernetesApi", {}).get("ports", [443, 6443]))
    assert egress_ports == {53} | api_ports


def test_uninstall_hook_switch(helm: Helm) -> None:
    disabled = render(helm, "kind", "--set", "cleanup.enabled=false")
    assert not [d for d in disabled.docs if hook(d)[0] == "pre-delete"]
    assert not disabled.of_kind("Job")
    # No pipeline, nothing to delete.
    assert not [d for d in render(helm, "defaults").docs if hook(d)[0] == "pre-delete"]
    tuned = render(helm, "kind", "--set", "cleanup.timeoutSeconds=600", "--set", "networkPolicy.enabled=false")
    job = tuned.one("Job", f"{RELEASE}-framescale-cleanup")
    assert "--timeout=600s" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert job["spec"]["activeDeadlineSeconds"] > 600
    assert not tuned.of_kind("NetworkPolicy")


def test_readme_installs_with_wait_and_uninstalls_through_the_hook() -> None:
    """--wait makes Helm run the VideoPipelines' post-install hook once the CRD is established."""
    readme = (CHART / "README.md").read_text()
    install = readme[readme.index("helm upgrade --install framescale") :]
    install = install[: install.index("```")]
    assert "--wait" in install
    assert "helm uninstall framescale --namespace framescale --wait" in readme


def test_notes_say_what_to_run_next(helm: Helm) -> None:
    values_file, namespace = SCENARIOS["kind"]
    result = helm.run(
        "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", namespace, "--values", str(values_file)
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    for expected in (
        f"kubectl get vp -n {namespace}",
        f"kubectl scale vp/demo -n {namespace} --replicas=3",
        f"kubectl logs -n {namespace} deploy/{RELEASE}-framescale-operator",
        f"kubectl logs -n {namespace} ds/{RELEASE}-framescale-demo -c worker",
        "framescale-kind-accelerators",
        f"helm uninstall {RELEASE} -n {namespace} --wait",
        f"job/{RELEASE}-framescale-cleanup",
    ):
        assert expected in notes, f"{expected!r} not in NOTES:\n{notes}"
