"""What the apiextensions API server does for a custom resource that kmock does not: pure parts.

Learnt from the behaviour of ``k8s.io/apiextensions-apiserver`` (``pkg/registry/customresource``,
the scale REST storage) and the CRD field documentation:

* **Structural defaulting.** A property with a ``default`` that is absent is filled in when an
  object is decoded from a request and when it is read from storage, so an object created before
  a default existed reads back with it. A default applies only inside an object that exists.
* **GET /scale** builds an ``autoscaling/v1`` ``Scale``: ``spec.replicas`` from
  ``specReplicasPath``; when that field is absent the answer is **500 InternalError** ``the spec
  replicas field ".spec.replicas" does not exist``. ``status.replicas`` from
  ``statusReplicasPath`` (absent: 0); ``status.selector`` from ``labelSelectorPath`` (absent: "").
  Its metadata carries the object's name, namespace, uid, resourceVersion and creationTimestamp.
* **PATCH /scale** applies the patch to that Scale (the current one, whose ``spec.replicas`` is a
  sentinel when the field is absent, so a merge patch that sets it still works), **PUT /scale**
  takes the Scale sent; either way only ``spec.replicas`` is written back into the object. A Scale
  still holding the sentinel is 400 (``cannot be empty``); a non-empty ``metadata.resourceVersion``
  is a precondition (409 when stale; a patch carries the current version unless it overrides it).
  The object is then validated against its schema (422) and the answer is the new Scale.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

# The server marks "spec.replicas was absent" with the smallest int32 before applying a patch.
ABSENT_REPLICAS = -(2**31)


@dataclass(frozen=True)
class ScaleSubresource:
    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str | None = None

    @classmethod
    def from_crd_version(cls, version: dict[str, Any]) -> ScaleSubresource | None:
        scale = (version.get("subresources") or {}).get("scale")
        if scale is None:
            return None
        return cls(scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath"))


class ScaleError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _parts(path: str) -> list[str]:
    return [part for part in path.lstrip(".").split(".") if part]


def nested(obj: Any, path: str) -> tuple[Any, bool]:
    for part in _parts(path):
        if not isinstance(obj, dict) or part not in obj:
            return None, False
        obj = obj[part]
    return obj, True


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScaleError(
            500,
            "InternalError",
            f"{path} accessor error: {value!r} is of the type {type(value).__name__}, expected int64",
        )
    return value


def scale_of(obj: dict[str, Any], scale: ScaleSubresource) -> tuple[dict[str, Any], bool]:
    """The Scale the server builds from ``obj``, and whether the spec replicas field exists."""
    spec_value, found = nested(obj, scale.spec_replicas_path)
    status_value, status_found = nested(obj, scale.status_replicas_path)
    selector = ""
    if scale.label_selector_path:
        value, selector_found = nested(obj, scale.label_selector_path)
        if selector_found and value is not None:
            if not isinstance(value, str):
                raise ScaleError(500, "InternalError", f"{scale.label_selector_path} accessor error: not a string")
            selector = value
    metadata = obj.get("metadata") or {}
    body = {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in metadata
        },
        "spec": {"replicas": _int(spec_value, scale.spec_replicas_path) if found else 0},
        "status": {
            "replicas": _int(status_value, scale.status_replicas_path) if status_found else 0,
            "selector": selector,
        },
    }
    return body, found


def get_scale(obj: dict[str, Any], scale: ScaleSubresource) -> dict[str, Any]:
    body, found = scale_of(obj, scale)
    if not found:
        raise ScaleError(500, "InternalError", f'the spec replicas field "{scale.spec_replicas_path}" does not exist')
    return body


def old_scale_for_update(obj: dict[str, Any], scale: ScaleSubresource) -> dict[str, Any]:
    """The Scale a PATCH applies to: a sentinel in spec.replicas when the field is absent."""
    body, found = scale_of(obj, scale)
    if not found:
        body["spec"]["replicas"] = ABSENT_REPLICAS
    return body


def updated_object(obj: dict[str, Any], new_scale: Any, scale: ScaleSubresource) -> tuple[dict[str, Any], str | None]:
    """The object with the Scale's spec.replicas written in, and the resourceVersion precondition."""
    if not isinstance(new_scale, dict):
        raise ScaleError(400, "BadRequest", "the body must be a Scale object")
    replicas = (new_scale.get("spec") or {}).get("replicas", 0)
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise ScaleError(400, "BadRequest", f"spec.replicas: {replicas!r} is not an integer")
    if replicas == ABSENT_REPLICAS:
        raise ScaleError(400, "BadRequest", f'the spec replicas field "{scale.spec_replicas_path}" cannot be empty')
    updated = copy.deepcopy(obj)
    target = updated
    parts = _parts(scale.spec_replicas_path)
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = replicas
    version = (new_scale.get("metadata") or {}).get("resourceVersion")
    return updated, (str(version) if version else None)


def default_additions(
    obj: Any, schema: dict[str, Any], path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    """Where structural defaulting fills ``obj`` in, parents before children: (path, value) pairs."""
    additions: list[tuple[tuple[str, ...], Any]] = []
    if not isinstance(obj, dict):
        return additions
    for name, prop in (schema.get("properties") or {}).items():
        if name in obj and obj[name] is not None:
            additions += default_additions(obj[name], prop, (*path, name))
        elif "default" in prop:
            value = copy.deepcopy(prop["default"])
            additions.append(((*path, name), value))
            additions += default_additions(value, prop, (*path, name))
    return additions


def apply_defaults(obj: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(obj)
    for path, value in default_additions(result, schema):
        target = result
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return result


def range_errors(obj: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Integer minimum/maximum violations (the part of schema validation the tests need)."""
    errors: list[str] = []
    if isinstance(obj, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if name in obj:
                errors += range_errors(obj[name], prop, f"{path}.{name}")
    elif isinstance(obj, int) and not isinstance(obj, bool):
        if "minimum" in schema and obj < schema["minimum"]:
            errors.append(
                f"{path.lstrip('.')}: Invalid value: {obj}: should be greater than or equal to {schema['minimum']}"
            )
        if "maximum" in schema and obj > schema["maximum"]:
            errors.append(
                f"{path.lstrip('.')}: Invalid value: {obj}: should be less than or equal to {schema['maximum']}"
            )
    return errors
