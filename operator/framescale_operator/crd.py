"""Generate the VideoPipeline CRD from the typed models in ``models.py``.

``python -m framescale_operator.crd`` prints the CRD as YAML; ``--write`` rewrites the chart's
copy (``charts/framescale/files/videopipelines.framescale.io.yaml``); ``--check`` exits 1 when
that copy differs from what the models say.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema. The
conversion inlines ``$ref``s, drops titles and ``additionalProperties: false`` (the API server
prunes unknown fields instead), and gives object-typed spec fields a ``{}`` default so their own
defaults apply when they are omitted.

An optional field (``X | None`` in the models) becomes plain ``X``, never ``nullable``: absent
is how the API says "unset". The API server then prunes a null it is sent instead of storing
it, and a merge patch's null deletes the field.

The scale subresource reads ``spec.replicas`` (``specReplicasPath``); the apiextensions server
answers ``GET /scale`` with 500 when that field is absent, so it has a schema default (0), which
the server applies on every read and write; the mode lives in ``spec.mode`` (``scale_mode``).
``labelSelectorPath`` points at ``status.selector``, the worker pods' label selector.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from framescale import names
from framescale_operator import models

GENERATED_HEADER = (
    "# Generated from operator/framescale_operator/models.py; do not edit.\n"
    "# Regenerate with: python -m framescale_operator.crd --write\n"
)
CHART_CRD_PATH = Path("charts") / "framescale" / "files" / f"{names.CRD_NAME}.yaml"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Mode", "type": "string", "jsonPath": ".status.mode", "description": "Autoscaling or Manual."},
    {"name": "Backlog", "type": "integer", "jsonPath": ".status.backlog", "description": "Visible + in flight."},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas", "description": "Desired nodes."},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.replicas", "description": "Nodes in service."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Group", "type": "string", "jsonPath": ".spec.nodeGroup.autoScalingGroupName", "priority": 1},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.queueUrl", "priority": 1},
]

_DROPPED_KEYS = {"title", "$defs"}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` (keeping sibling keys such as description); ``X | None`` becomes ``X``."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types in a structural schema: {schema}")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return _resolve({**_resolve(options[0], defs), **rest}, defs)
    return schema


def _convert(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    schema = _resolve(schema, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and value is None:
            continue  # absent and null mean the same to the operator; no null defaults in the API
        if key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _convert(value, defs)
            continue  # `false`: the API server prunes unknown fields anyway
        if key == "properties":
            out[key] = {name: _convert(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    return _ordered(out)


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Description first, then the other keys alphabetically: a stable, readable file."""
    keys = sorted(schema, key=lambda key: (key != "description", key))
    return {key: schema[key] for key in keys}


def _object_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Give object-typed fields built by a factory a ``{}`` default, recursively.

    The API server applies a property's defaults only when its parent object exists; ``{}``
    makes an omitted ``spec.autoscaling`` come back with every field defaulted.
    """
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema.get("properties", {}).get(alias)
        if prop is None:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if field.default_factory is not None:
                prop["default"] = {}
            _object_defaults(annotation, prop)
        elif field.default_factory is not None and "default" not in prop:
            value = field.get_default(call_default_factory=True)
            if value:  # empty lists and dicts add nothing
                prop["default"] = value


def openapi_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a VideoPipeline (spec and status)."""
    raw = models.VideoPipeline.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema = _convert(raw, defs)
    spec = schema["properties"]["spec"]
    _object_defaults(models.VideoPipelineSpec, spec)
    status = schema["properties"]["status"]
    _strip_defaults(status)  # the operator writes every status field itself
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def _strip_defaults(schema: dict[str, Any]) -> None:
    schema.pop("default", None)
    for prop in schema.get("properties", {}).values():
        _strip_defaults(prop)
    if isinstance(schema.get("items"), dict):
        _strip_defaults(schema["items"])


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": names.CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "framescale"},
        },
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names.KIND,
                "listKind": f"{names.KIND}List",
                "plural": names.PLURAL,
                "singular": names.SINGULAR,
                "shortNames": [names.SHORT_NAME],
                "categories": ["framescale"],
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                }
            ],
        },
    }


def render() -> str:
    """The CRD as the YAML text stored in the chart."""
    body = yaml.safe_dump(crd(), sort_keys=False, width=100, default_flow_style=False, allow_unicode=True)
    return GENERATED_HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framescale_operator.crd", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"rewrite {CHART_CRD_PATH} in the repository")
    action.add_argument("--check", action="store_true", help=f"exit 1 when {CHART_CRD_PATH} is out of date")
    parser.add_argument("--path", type=Path, default=None, help="file to write or check instead of the chart's")
    args = parser.parse_args(argv)
    path = args.path or repo_root() / CHART_CRD_PATH
    text = render()
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run python -m framescale_operator.crd --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
