"""The CloudFormation template without deploying it: cfn-lint, and the facts it shares with the code
(the worker's visibility timeout, the chart's node selector and tolerations, the lifecycle hook the
operator handles, the outputs `framescale helm-values` reads); the eksctl alternative agrees."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from framescale import helm_values, names
from framescale.worker.settings import WorkerSettings
from tests.cloudformation.stacks import REPO, TEMPLATE, load_template

pytestmark = pytest.mark.cloudformation

EKSCTL = REPO / "deploy" / "eksctl" / "nodegroup.yaml"
CHART_VALUES = REPO / "charts" / "framescale" / "values.yaml"


def cfn_lint(*paths: Path) -> subprocess.CompletedProcess[str]:
    # Every level, informational findings included: nothing may be left unexplained.
    return subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), "--include-checks", "I", "--format", "parseable", "--"]
        + [str(path) for path in paths],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def lint(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One cfn-lint run (it takes seconds) over the template and a copy with a misspelt property,
    which shows the lint is live."""
    broken = tmp_path_factory.mktemp("cfn") / "broken.yaml"
    broken.write_text(
        TEMPLATE.read_text().replace(
            "NewInstancesProtectedFromScaleIn: true", "NewInstancesProtectedFromScaleInn: true"
        )
    )
    return cfn_lint(TEMPLATE, broken), broken


def test_cfn_lint_finds_nothing(lint: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, broken = lint
    findings = [line for line in result.stdout.splitlines() if line.strip()]
    assert [line for line in findings if not line.startswith(str(broken))] == []
    assert result.stderr == ""


def test_cfn_lint_would_catch_a_broken_template(lint: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, broken = lint
    assert result.returncode != 0
    assert any(
        line.startswith(str(broken)) and "NewInstancesProtectedFromScaleInn" in line
        for line in result.stdout.splitlines()
    )


def test_every_ignored_lint_check_is_explained(template: dict[str, Any]) -> None:
    text = TEMPLATE.read_text()
    ignored = [
        (logical, check)
        for logical, resource in template["Resources"].items()
        for check in resource.get("Metadata", {}).get("cfn-lint", {}).get("config", {}).get("ignore_checks", [])
    ]
    assert template.get("Metadata", {}).get("cfn-lint") is None, "no template-wide ignores"
    for logical, check in ignored:
        assert re.search(rf"^\s*# {check}: \S", text, re.M), f"{logical} ignores {check} without a comment saying why"


def test_queue_visibility_timeout_defaults_to_the_workers(template: dict[str, Any]) -> None:
    default = template["Parameters"]["VisibilityTimeoutSeconds"]["Default"]
    assert default == WorkerSettings.model_fields["visibility_timeout_seconds"].default


def kubelet_flag(template: dict[str, Any], flag: str) -> str:
    user_data = template["Resources"]["NodeLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    text = user_data["Fn::Base64"]["Fn::Sub"]
    (value,) = re.findall(rf"^\s*- --{flag}=(\S+)$", text, re.M)
    return str(value)


def parse_pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(","))


def tolerates(tolerations: list[dict[str, Any]], taint: str) -> bool:
    key_value, effect = taint.rsplit(":", 1)
    key, value = key_value.split("=", 1)
    return any(
        t.get("key") == key
        and t.get("effect", effect) == effect
        and (t.get("operator") == "Exists" or t.get("value") == value)
        for t in tolerations
    )


def test_nodes_register_with_what_the_chart_selects_and_tolerates(template: dict[str, Any]) -> None:
    defaults = yaml.safe_load(CHART_VALUES.read_text())["pipelineDefaults"]
    labels = parse_pairs(kubelet_flag(template, "node-labels"))
    assert labels[names.ACCELERATOR_NODE_LABEL] == "true"
    assert defaults["nodeGroup"]["nodeSelector"].items() <= labels.items()
    taint = kubelet_flag(template, "register-with-taints")
    assert tolerates(defaults["tolerations"], taint)
    # What the outputs say (and the values file selects) is what the kubelet registers.
    outputs = template["Outputs"]
    assert outputs["NodeLabels"]["Value"]["Fn::Sub"] == kubelet_flag(template, "node-labels")
    assert outputs["NodeTaints"]["Value"] == taint


def test_group_is_protected_and_hooked_as_the_operator_expects(template: dict[str, Any]) -> None:
    group = template["Resources"]["NodeGroup"]["Properties"]
    assert group["NewInstancesProtectedFromScaleIn"] is True
    assert "DesiredCapacity" not in group, "the operator owns the desired capacity"
    (hook,) = group["LifecycleHookSpecificationList"]
    assert hook["LifecycleHookName"] == names.DEFAULT_LIFECYCLE_HOOK_NAME
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["DefaultResult"] == "CONTINUE"
    assert template["Outputs"]["LifecycleHookName"]["Value"] == names.DEFAULT_LIFECYCLE_HOOK_NAME


def test_outputs_are_the_ones_helm_values_reads(template: dict[str, Any]) -> None:
    assert set(helm_values.OUTPUTS) <= set(template["Outputs"])
    for key in helm_values.OUTPUTS:
        assert "Condition" not in template["Outputs"][key], f"{key} must exist in every stack"


def test_trust_policies_name_the_service_accounts_the_outputs_give(template: dict[str, Any]) -> None:
    resources, outputs = template["Resources"], template["Outputs"]
    worker_trust = resources["WorkerRole"]["Properties"]["AssumeRolePolicyDocument"]["Fn::Sub"]
    assert f"system:serviceaccount:${{Namespace}}:{outputs['WorkerServiceAccountName']['Value']['Fn::Sub']}" in (
        worker_trust
    )
    operator_trust = resources["OperatorRole"]["Properties"]["AssumeRolePolicyDocument"]["Fn::Sub"]
    assert f"system:serviceaccount:${{Namespace}}:{outputs['OperatorServiceAccountName']['Value']}" in operator_trust


def test_eksctl_node_group_registers_like_the_templates(template: dict[str, Any]) -> None:
    config = yaml.safe_load(EKSCTL.read_text())
    (group,) = config["nodeGroups"]
    labels = {k: str(v) for k, v in group["labels"].items()}
    expected = parse_pairs(kubelet_flag(template, "node-labels").replace("${PipelineName}", "main"))
    assert labels == expected
    (taint,) = group["taints"]
    assert f"{taint['key']}={taint['value']}:{taint['effect']}" == kubelet_flag(template, "register-with-taints")
    text = EKSCTL.read_text()
    assert f"--lifecycle-hook-name {names.DEFAULT_LIFECYCLE_HOOK_NAME}" in text
    assert "--new-instances-protected-from-scale-in" in text
    assert "ExistingAutoScalingGroupName" in template["Parameters"]
