"""The CRD: generated from the models, committed in the chart without drift, and a valid schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from framescale import names
from framescale_operator import crd, models

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_CRD = REPO_ROOT / "charts" / "framescale" / "files" / "videopipelines.framescale.io.yaml"


def test_the_chart_file_is_what_the_models_generate() -> None:
    assert CHART_CRD.exists(), "run: python -m framescale_operator.crd --write"
    assert CHART_CRD.read_text(encoding="utf-8") == crd.render(), (
        "the CRD in the chart drifted from operator/framescale_operator/models.py; "
        "run: python -m framescale_operator.crd --write"
    )


def test_check_and_write_commands(tmp_path: Path) -> None:
    target = tmp_path / "crd.yaml"
    assert crd.main(["--check", "--path", str(target)]) == 1
    assert crd.main(["--write", "--path", str(target)]) == 0
    assert crd.main(["--check", "--path", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == crd.render()


def test_names_subresources_and_columns() -> None:
    body = yaml.safe_load(crd.render())
    assert body["metadata"]["name"] == "videopipelines.framescale.io"
    spec = body["spec"]
    assert spec["group"] == names.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "VideoPipeline"
    assert spec["names"]["shortNames"] == ["vp"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns["Mode"] == ".status.mode"
    assert columns["Backlog"] == ".status.backlog"
    assert columns["Desired"] == ".status.desiredReplicas"
    assert columns["Ready"] == ".status.replicas"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_the_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(crd.crd(), "1.30", strict=True)


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, prop in schema.get("properties", {}).items():
        found += _walk(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += _walk(schema["additionalProperties"], f"{path}{{}}")
    return found


def test_the_schema_is_structural() -> None:
    """Every node has a type, no JSON-Schema-only constructs survive, descriptions come through."""
    for path, node in _walk(crd.openapi_schema()):
        assert "type" in node, f"{path or 'root'} has no type"
        for key in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const"):
            assert key not in node, f"{path}: {key} is not allowed in a structural schema"
        if "properties" in node:
            assert "additionalProperties" not in node, path
    spec = crd.openapi_schema()["properties"]["spec"]
    assert spec["properties"]["queueUrl"]["description"].startswith("URL of the SQS queue")


def _as_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The structural schema as plain JSON Schema, so jsonschema can stand in for the API server."""
    schema = copy.deepcopy(schema)
    for _, node in _walk(schema):
        node.pop("x-kubernetes-validations", None)
        if "properties" in node:
            node["additionalProperties"] = False  # the API server would prune; here, flag them
    return schema


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The API server's defaulting: a property's default fills in only when its parent exists."""
    if not isinstance(value, dict):
        return value
    for name, prop in schema.get("properties", {}).items():
        if name not in value and "default" in prop:
            value[name] = copy.deepcopy(prop["default"])
        if name in value:
            value[name] = _apply_defaults(prop, value[name])
    return value


MINIMAL = {"queueUrl": "https://sqs.us-east-1.amazonaws.com/1/jobs", "nodeGroup": {"autoScalingGroupName": "g"}}


def test_schema_defaults_match_the_models() -> None:
    """What the API server stores for a minimal spec is what the operator assumes."""
    schema = crd.openapi_schema()["properties"]["spec"]
    defaulted = _apply_defaults(schema, copy.deepcopy(MINIMAL))
    parsed = models.parse_spec(copy.deepcopy(MINIMAL))
    assert defaulted == parsed.model_dump(by_alias=True, exclude_none=True)


@pytest.mark.parametrize(
    "spec",
    [
        MINIMAL,
        {**MINIMAL, "replicas": 3},
        {**MINIMAL, "mode": "Manual", "replicas": 3},
        {**MINIMAL, "workerSelector": {"app.kubernetes.io/component": "worker"}},
        {**MINIMAL, "daemonSetName": "framescale-worker", "autoscaling": {"minReplicas": 0, "maxReplicas": 40}},
        {**MINIMAL, "autoscaling": {"pollIntervalSeconds": 5, "activationBacklog": 10}},
    ],
)
def test_valid_specs_pass_both_the_schema_and_the_models(spec: dict[str, Any]) -> None:
    jsonschema.validate(spec, _as_json_schema(crd.openapi_schema()["properties"]["spec"]))
    models.parse_spec(copy.deepcopy(spec))


@pytest.mark.parametrize(
    "spec",
    [
        {"nodeGroup": {"autoScalingGroupName": "g"}},
        {**MINIMAL, "queueUrl": "jobs"},
        {**MINIMAL, "nodeGroup": {"autoScalingGroupName": ""}},
        {**MINIMAL, "nodeGroup": {"autoScalingGroupName": "arn:aws:autoscaling:x"}},
        {**MINIMAL, "replicas": -1},
        {**MINIMAL, "mode": "Pinned"},
        {**MINIMAL, "autoscaling": {"maxReplicas": 0}},
        {**MINIMAL, "autoscaling": {"targetBacklogPerReplica": 0}},
        {**MINIMAL, "autoscaling": {"pollIntervalSeconds": 0}},
        {**MINIMAL, "autoscaling": {"scaleInCooldownSeconds": -5}},
        {**MINIMAL, "autoscaling": {"minReplicas": "two"}},
    ],
)
def test_invalid_specs_fail_both_the_schema_and_the_models(spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, _as_json_schema(crd.openapi_schema()["properties"]["spec"]))
    with pytest.raises(ValueError):
        models.parse_spec(copy.deepcopy(spec))


def test_no_field_is_nullable_and_replicas_always_has_a_value() -> None:
    """/scale reads spec.replicas and a real API server answers GET /scale with 500 when it is
    absent. Without ``nullable`` the server prunes a null it is sent and a merge patch's null deletes
    the field; the schema default (0) then fills it in again, so it is always an integer."""
    schema = crd.openapi_schema()
    nullable = [path or "root" for path, node in _walk(schema) if "nullable" in node]
    assert nullable == []
    spec_schema = _as_json_schema(schema["properties"]["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**MINIMAL, "replicas": None}, spec_schema)
    replicas = schema["properties"]["spec"]["properties"]["replicas"]
    assert replicas["default"] == 0
    assert schema["properties"]["spec"]["properties"]["mode"]["default"] == "Autoscaling"
    parsed = models.parse_spec(copy.deepcopy(MINIMAL))
    assert (parsed.replicas, parsed.mode) == (0, models.Mode.AUTOSCALING)


def test_min_above_max_is_a_cel_rule_and_a_model_error() -> None:
    autoscaling = crd.openapi_schema()["properties"]["spec"]["properties"]["autoscaling"]
    assert autoscaling["x-kubernetes-validations"] == [
        {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}
    ]
    with pytest.raises(ValueError, match="minReplicas must not exceed maxReplicas"):
        models.parse_spec({**MINIMAL, "autoscaling": {"minReplicas": 4, "maxReplicas": 2}})


def test_conditions_are_a_map_list_keyed_by_type() -> None:
    conditions = crd.openapi_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_status_written_by_the_operator_fits_the_schema() -> None:
    status = {
        "mode": "Autoscaling",
        "replicas": 2,
        "desiredReplicas": 3,
        "backlog": 12,
        "inFlight": 4,
        "busyNodes": ["ip-10-0-0-1.ec2.internal"],
        "protectedInstances": ["i-0123456789abcdef0"],
        "lastScaleTime": "2026-01-01T12:00:00.000000Z",
        "lastScaleDirection": "Out",
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reconciled",
                "message": "ok",
                "lastTransitionTime": "2026-01-01T12:00:00Z",
                "observedGeneration": 2,
            }
        ],
    }
    jsonschema.validate(status, _as_json_schema(crd.openapi_schema()["properties"]["status"]))
    models.VideoPipelineStatus.model_validate(status)
