"""Secure defaults on the rendered output: locked-down containers, least-privilege RBAC, tokens
only where the Kubernetes API is called, NetworkPolicies, resources and probes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.chart.conftest import CHART, RELEASE, Helm, Rendered, pod_containers, render

pytestmark = pytest.mark.chart

TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def effective_seccomp(pod: dict[str, Any], container: dict[str, Any]) -> str | None:
    profile = container.get("securityContext", {}).get("seccompProfile") or pod.get("securityContext", {}).get(
        "seccompProfile"
    )
    return profile["type"] if profile else None


def test_every_container_is_locked_down(rendered: Rendered) -> None:
    checked = 0
    for workload in rendered.workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for _, container in pod_containers(workload):
            where = f"{workload['kind']}/{workload['metadata']['name']} container {container['name']}"
            context = container.get("securityContext")
            assert context, f"{where}: no securityContext"
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser", pod["securityContext"].get("runAsUser")) not in (None, 0), where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("privileged") is not True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert effective_seccomp(pod, container) == "RuntimeDefault", where
            checked += 1
    assert checked >= 1


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for _, container in pod_containers(workload):
            resources = container.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(section, {})), (
                    f"{workload['metadata']['name']}/{container['name']}: {section} {resources.get(section)}"
                )


def test_writable_paths_are_emptydirs_with_size_limits(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        pod = workload["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{workload['metadata']['name']}: {volume['name']}"
        for _, container in pod_containers(workload):
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{container['name']} has no writable /tmp on a read-only root"


def rbac_rules(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['kind']}/{doc['metadata']['name']}", rule)
        for doc in rendered.docs
        if doc["kind"] in {"Role", "ClusterRole"}
        for rule in doc.get("rules", [])
    ]


def test_no_rbac_wildcards(rendered: Rendered) -> None:
    rules = rbac_rules(rendered)
    assert rules
    for name, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert all("*" not in item for item in rule.get(field, [])), f"{name}: wildcard in {field}: {rule}"
        assert "nonResourceURLs" not in rule, name
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), f"{name}: {rule}"
    for doc in rendered.of_kind("ClusterRole") + rendered.of_kind("Role"):
        assert "aggregationRule" not in doc


def rules_as_set(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_operator_rbac_is_exactly_what_it_uses(helm: Helm) -> None:
    rendered = render(helm, "eks-gpu")
    name = f"{RELEASE}-framescale-operator"
    assert rules_as_set(rendered.one("ClusterRole", f"{name}-cluster")) == {
        ("", "nodes", "list"),  # kopf's index of Nodes
        ("", "nodes", "watch"),
        ("", "nodes", "patch"),  # the scale-down annotations
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
    assert rules_as_set(rendered.one("ClusterRole", name)) == {
        ("framescale.io", "videopipelines", "get"),  # a standby's deletion handler: is it gone yet
        ("framescale.io", "videopipelines", "list"),
        ("framescale.io", "videopipelines", "watch"),
        ("framescale.io", "videopipelines", "patch"),
        ("framescale.io", "videopipelines/status", "patch"),
        ("coordination.k8s.io", "leases", "list"),
        ("coordination.k8s.io", "leases", "watch"),
        ("coordination.k8s.io", "leases", "patch"),
        ("", "events", "create"),
    }
    # Watching every namespace: both roles bound cluster-wide, to the operator's ServiceAccount.
    for binding in rendered.of_kind("ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "framescale"}]
    assert {b["roleRef"]["name"] for b in rendered.of_kind("ClusterRoleBinding")} == {name, f"{name}-cluster"}


def test_operator_limited_to_watched_namespaces(helm: Helm) -> None:
    rendered = render(helm, "eks-cpu")
    name = f"{RELEASE}-framescale-operator"
    assert [b["roleRef"]["name"] for b in rendered.of_kind("ClusterRoleBinding")] == [f"{name}-cluster"]
    bindings = [b for b in rendered.of_kind("RoleBinding") if b["roleRef"]["name"] == name]
    assert [(b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in bindings] == [("video", "ClusterRole")]
    # kopf lists namespaces to resolve the ones it is given.
    assert ("", "namespaces", "list") in rules_as_set(rendered.one("ClusterRole", f"{name}-cluster"))


def test_lease_namespace_is_served_and_written_there(helm: Helm) -> None:
    rendered = render(helm, "eks-cpu", "--set", "operator.leaseNamespace=leases")
    name = f"{RELEASE}-framescale-operator"
    bound = sorted(b["metadata"]["namespace"] for b in rendered.of_kind("RoleBinding") if b["roleRef"]["name"] == name)
    assert bound == ["leases", "video"], "the operator watches the lease namespace as well"
    worker_roles = [
        r for r in rendered.of_kind("Role") if r["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert {r["metadata"]["namespace"] for r in worker_roles} == {"leases"}
    for daemonset in rendered.of_kind("DaemonSet"):
        worker = daemonset["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["FRAMESCALE_WORKER_NAMESPACE"] == "leases"


def test_worker_role_allows_only_leases(rendered_pipelines: Rendered) -> None:
    roles = [
        r
        for r in rendered_pipelines.of_kind("Role")
        if r["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert len(roles) == len(rendered_pipelines.values["pipelines"])
    for role in roles:
        assert role["rules"] == [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]}
        ]
    service_accounts = {
        ds["spec"]["template"]["spec"]["serviceAccountName"] for ds in rendered_pipelines.of_kind("DaemonSet")
    }
    bound = {
        subject["name"]
        for binding in rendered_pipelines.of_kind("RoleBinding")
        if binding["roleRef"]["name"] in {r["metadata"]["name"] for r in roles}
        for subject in binding["subjects"]
    }
    assert bound == service_accounts
    # Workers never get a cluster-wide binding.
    for binding in rendered_pipelines.of_kind("ClusterRoleBinding"):
        assert not {s["name"] for s in binding["subjects"]} & service_accounts


def test_service_account_tokens_only_where_the_api_is_called(rendered: Rendered) -> None:
    for account in rendered.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False, account["metadata"]["name"]
    operator = rendered.of_kind("Deployment")[0]["spec"]["template"]["spec"]
    assert operator["automountServiceAccountToken"] is True  # its one container calls the API
    for job in rendered.of_kind("Job"):  # the uninstall hook: one container, kubectl
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is True and len(pod["containers"]) == 1
        assert not pod.get("initContainers")
    for daemonset in rendered.of_kind("DaemonSet"):
        pod = daemonset["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        for _, container in pod_containers(daemonset):
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            has_token = TOKEN_PATH in mounts
            assert has_token == (container["name"] == "worker"), f"{container['name']}: token mounted {has_token}"
        (token_volume,) = [v for v in pod["volumes"] if v["name"] == "kube-api-access"]
        sources = token_volume["projected"]["sources"]
        assert sources[0]["serviceAccountToken"]["path"] == "token"
        # The IRSA webhook must not hand TF Serving an AWS token either.
        annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
        assert annotations["eks.amazonaws.com/skip-containers"] == "tf-serving"


def selected_by(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(key) == value for key, value in wanted.items())


def policy_of(rendered: Rendered, workload: dict[str, Any]) -> dict[str, Any]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    matching = [p for p in rendered.of_kind("NetworkPolicy") if selected_by(p, labels)]
    assert len(matching) == 1, f"{workload['metadata']['name']}: {len(matching)} policies"
    return matching[0]["spec"]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port as a number: named ports resolve through the container's ports."""
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    return int(named.get(port, port)) if isinstance(port, str) else port


def admitted_from(policy: dict[str, Any], port: int) -> list[list[dict[str, Any]] | None]:
    """The `from` of every ingress rule that admits `port` (None: a rule without `from`, any source)."""
    return [
        rule.get("from")
        for rule in policy.get("ingress", [])
        if any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule.get("ports", []))
    ]


def probed_ports(workload: dict[str, Any]) -> set[int]:
    ports = set()
    for _, container in pod_containers(workload):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            handler = container.get(probe, {})
            for kind in ("httpGet", "tcpSocket", "grpc"):
                if kind in handler:
                    ports.add(container_port(container, handler[kind]["port"]))
    return ports


def test_network_policies_cover_every_pod(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        policy = policy_of(rendered, workload)
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        ports = {port["containerPort"] for _, c in pod_containers(workload) for port in c.get("ports", [])}
        allowed_in = {port["port"] for rule in policy.get("ingress", []) for port in rule["ports"]}
        # Only ports the pod declares, and only the probed and metrics ones among them.
        assert allowed_in <= ports, f"{workload['metadata']['name']}: {allowed_in - ports}"
        egress_ports = {(p["port"], p.get("protocol", "TCP")) for rule in policy["egress"] for p in rule["ports"]}
        assert {(53, "UDP"), (53, "TCP")} <= egress_ports


def test_kubelet_probes_are_admitted(rendered: Rendered) -> None:
    """Every port a probe uses is open to networkPolicy.probesFrom: on a CNI that does not exempt
    the kubelet's own traffic, a policy admitting the metrics port alone left the operator (probed
    on :8080) and TF Serving (on :8501) unready for ever."""
    probes_from = rendered.values.get("networkPolicy", {}).get("probesFrom") or None
    checked = 0
    for workload in rendered.workloads():
        policy = policy_of(rendered, workload)
        for port in probed_ports(workload):
            assert probes_from in admitted_from(policy, port), f"{workload['metadata']['name']}: probe port {port}"
            checked += 1
    assert checked >= 1


def test_tf_serving_grpc_is_never_admitted_and_rest_only_to_probes(rendered_pipelines: Rendered) -> None:
    network_policy = rendered_pipelines.values.get("networkPolicy", {})
    probes_from = network_policy.get("probesFrom") or None
    for daemonset in rendered_pipelines.of_kind("DaemonSet"):
        policy = policy_of(rendered_pipelines, daemonset)
        serving = next(c for _, c in pod_containers(daemonset) if c["name"] == "tf-serving")
        ports = {p["name"]: p["containerPort"] for p in serving["ports"]}
        assert admitted_from(policy, ports["grpc"]) == [], "gRPC is the worker's, over localhost"
        assert admitted_from(policy, ports["rest"]) == [probes_from]
        worker = next(c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
        metrics = container_port(worker, "http")
        assert (network_policy.get("metricsFrom") or None) in admitted_from(policy, metrics)


def test_probes_from_narrows_the_probed_ports(helm: Helm) -> None:
    """The eks-gpu scenario names the node subnets: no probed port is open to any source."""
    rendered = render(helm, "eks-gpu")
    probes_from = rendered.values["networkPolicy"]["probesFrom"]
    assert probes_from
    for workload in rendered.workloads():
        policy = policy_of(rendered, workload)
        for port in probed_ports(workload):
            assert None not in admitted_from(policy, port), f"{workload['metadata']['name']}: {port} open to all"


def test_network_policy_switch(helm: Helm) -> None:
    assert not render(helm, "eks-gpu", "--set", "networkPolicy.enabled=false").of_kind("NetworkPolicy")


def http_probe(container: dict[str, Any], probe: str) -> tuple[str, int]:
    spec = container[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = spec["port"]
    return spec["path"], ports.get(port, port)


def test_probes_reach_the_health_endpoints(rendered: Rendered) -> None:
    operator = rendered.of_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert http_probe(operator, probe) == ("/healthz", 8080)
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["FRAMESCALE_OPERATOR_HEALTH_PORT"] == "8080"
    assert env["FRAMESCALE_OPERATOR_METRICS_PORT"] == "9090"
    for daemonset in rendered.of_kind("DaemonSet"):
        containers = dict((c["name"], c) for _, c in pod_containers(daemonset))
        worker = containers["worker"]
        port = int({e["name"]: e.get("value") for e in worker["env"]}["FRAMESCALE_WORKER_HEALTH_PORT"])
        assert http_probe(worker, "livenessProbe") == ("/healthz", port)
        assert http_probe(worker, "readinessProbe") == ("/readyz", port)
        serving = containers["tf-serving"]
        model = next(a for a in serving["args"] if a.startswith("--model_name=")).split("=", 1)[1]
        assert http_probe(serving, "startupProbe")[0] == f"/v1/models/{model}"
        assert serving["livenessProbe"]["tcpSocket"]["port"] == "rest", "the kubelet needs one TF Serving port"


def test_operator_is_leader_safe(rendered: Rendered) -> None:
    """Two replicas by default, one leader elected through a Lease the chart lets it hold."""
    (deployment,) = rendered.of_kind("Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FRAMESCALE_OPERATOR_STANDALONE"] == "true"
    assert env["FRAMESCALE_OPERATOR_LEADER_ELECTION"] == "true"
    lease = env["FRAMESCALE_OPERATOR_LEADER_LEASE_NAME"]
    identity = next(e for e in container["env"] if e["name"] == "FRAMESCALE_OPERATOR_LEADER_IDENTITY")
    assert identity["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (budget,) = rendered.of_kind("PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    role = next(r for r in rendered.of_kind("Role") if r["metadata"]["name"].endswith("-operator-leader"))
    assert role["metadata"]["namespace"] == env["FRAMESCALE_OPERATOR_LEADER_LEASE_NAMESPACE"]
    named = next(rule for rule in role["rules"] if rule.get("resourceNames"))
    assert named["resourceNames"] == [lease] and set(named["verbs"]) == {"get", "update", "patch"}
    binding = next(b for b in rendered.of_kind("RoleBinding") if b["metadata"]["name"].endswith("-operator-leader"))
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def readme_policies() -> dict[str, dict[str, dict[str, Any]]]:
    """The IAM policies the chart README gives, by heading ("Worker", "Operator"), statements by Sid."""
    readme = (CHART / "README.md").read_text()
    iam = readme[readme.index("## IAM policies") :]
    policies = {}
    for heading, block in re.findall(r"^### (\w+).*?\n```json\n(.*?)```", iam, re.S | re.M):
        policies[heading] = {s["Sid"]: s for s in json.loads(block)["Statement"]}
    return policies


def test_readme_worker_policy_allows_the_staged_commit_within_the_output_prefix() -> None:
    """Results are staged under <output>/<job_id>/_staging/, copied to their keys and the staged
    objects deleted: that needs DeleteObject and a listing, and neither may reach past the prefix."""
    worker = readme_policies()["Worker"]
    commit = worker["CommitResults"]
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(commit["Action"])
    output = commit["Resource"]
    assert output.startswith("arn:aws:s3:::") and output.endswith("/*") and output.count("/") >= 2
    listing = worker["ListResults"]
    assert listing["Action"] == "s3:ListBucket"
    bucket, prefix = output.removeprefix("arn:aws:s3:::").split("/", 1)
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}"
    (condition,) = listing["Condition"].values()
    assert condition == {"s3:prefix": prefix}, "listing limited to the output prefix"
    # Nothing else may delete, and nothing else may list the results bucket unconditionally.
    for sid, statement in worker.items():
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if sid != "CommitResults":
            assert "s3:DeleteObject" not in actions, sid
        if "s3:ListBucket" in actions:
            assert "Condition" in statement, f"{sid}: an unconditioned ListBucket"


def test_readme_operator_policy_tags_only_its_marker() -> None:
    from framescale_operator.protection import MARKER_TAGS

    operator = readme_policies()["Operator"]
    marker = operator["OwnershipMarkerOnItsInstances"]
    assert sorted(marker["Action"]) == ["ec2:CreateTags", "ec2:DeleteTags"]
    assert marker["Resource"].endswith(":instance/*")
    condition = marker["Condition"]
    # The keys the operator really writes (its own constants), and no other.
    assert condition["ForAllValues:StringEquals"] == {"aws:TagKeys": list(MARKER_TAGS)}
    # ForAllValues holds for a request with no tag keys, and DeleteTags without keys deletes all.
    assert condition["Null"] == {"aws:TagKeys": "false"}
    # The markers are read back to decide what to release.
    assert "ec2:DescribeTags" in operator["SeeGroups"]["Action"]
    group = operator["TerminationProtectionOfItsInstances"]["Condition"]["StringEquals"]
    assert condition["StringEquals"] == group, "the same group's instances only"


def test_without_leader_election_one_replica_recreated_and_more_refused(helm: Helm) -> None:
    single = render(helm, "defaults", "--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=1")
    (deployment,) = single.of_kind("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FRAMESCALE_OPERATOR_LEADER_ELECTION"] == "false"
    assert "FRAMESCALE_OPERATOR_LEADER_LEASE_NAME" not in env
    assert single.of_kind("PodDisruptionBudget") == []
    assert not [r for r in single.of_kind("Role") if r["metadata"]["name"].endswith("-operator-leader")]
    error = helm.template_error("--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=2")
    assert "needs operator.leaderElection.enabled" in error
