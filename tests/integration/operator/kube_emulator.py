"""A Kubernetes API emulator for the operator's tests: kmock's, plus what kopf relies on.

kmock 0.8's ``KubernetesEmulator`` keeps objects in memory and serves list, watch, get,
create, merge/JSON patch and delete over real HTTP. This subclass adds what a real API
server does and kopf depends on:

* ``metadata.uid``, ``creationTimestamp`` and ``generation`` on create (and a name for
  ``generateName``, which kopf's Events use);
* a new ``metadata.resourceVersion`` on every write, carried by the watch event of that
  write (kopf waits for the version its own patch produced);
* ``generation`` + 1 when a write changes ``spec``; a write to ``/status`` changes only
  ``status``;
* a failed JSON-patch ``test`` (kopf's optimistic lock on finalizers) answers 422, and a
  merge patch carrying a stale ``resourceVersion`` answers 409;
* for the custom resources whose CRDs it is given (by default the chart's VideoPipeline CRD), what
  the apiextensions server does (``apiextensions``): structural defaults on every write, and the
  ``/scale`` subresource (GET 500 when the spec replicas field is absent, PATCH and PUT of the
  Scale writing back only ``spec.replicas``, with resourceVersion preconditions).

The emulator runs on its own event loop in a background thread (``EmulatorThread``), so
that a synchronous test and the operator in a child process both reach it over HTTP.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import secrets
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import dicts, enums, rendering

from tests.integration.operator import apiextensions
from tests.integration.operator.apiextensions import ScaleError, ScaleSubresource

WRITES = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)
CHART_CRD = (
    Path(__file__).resolve().parents[3] / "charts" / "framescale" / "files" / "videopipelines.framescale.io.yaml"
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CustomResource:
    """What the emulator knows of one served custom resource version from its CRD."""

    schema: dict[str, Any]
    scale: ScaleSubresource | None


def load_crd(path: Path = CHART_CRD) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def custom_resources(crds: list[dict[str, Any]]) -> dict[tuple[str, str, str], CustomResource]:
    result: dict[tuple[str, str, str], CustomResource] = {}
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (spec["group"], version["name"], spec["names"]["plural"])
            schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
            result[key] = CustomResource(schema=schema, scale=ScaleSubresource.from_crd_version(version))
    return result


class ScaleSpecMissing(kmock.KubernetesError):
    """The 500 a real apiextensions server answers; expected, not an emulator bug."""


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with resource versions, uids, generations and proper patch errors."""

    crds: list[dict[str, Any]] = attrs.field(factory=lambda: [load_crd()])
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _custom: dict[tuple[str, str, str], CustomResource] = attrs.field(factory=dict, init=False)
    # Writes by client (the Authorization header: each operator process of a test has its own
    # token): (method, path, top-level body keys), so a test can tell who wrote what.
    writes_by_client: dict[str, list[tuple[str, str, tuple[str, ...]]]] = attrs.field(factory=dict, init=False)
    # Run before a write is applied (a test interleaves its own write there: a race made certain).
    before_write: list[Callable[[rendering.Request], Awaitable[None]]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._custom = custom_resources(self.crds)

    def _next_version(self) -> str:
        self._last_version = next(self._versions)
        return str(self._last_version)

    def _custom_resource(self, request: rendering.Request) -> CustomResource | None:
        resource = request.resource
        if resource is None:
            return None
        return self._custom.get((resource.group or "", resource.version or "", resource.plural or ""))

    def _record_write(self, request: rendering.Request) -> None:
        method = str(getattr(request.method, "value", request.method)).upper()
        if method not in ("POST", "PUT", "PATCH", "DELETE"):
            return
        client = request.headers.get("Authorization") or request.headers.get("authorization") or ""
        keys = tuple(sorted(request.data)) if isinstance(request.data, dict) else ()
        self.writes_by_client.setdefault(client, []).append((method, request.url.path, keys))

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is not None:
            self._record_write(request)
        custom = self._custom_resource(request)
        if custom is not None and custom.scale is not None and request.subresource == "scale" and request.name:
            return await self._serve_scale(request, custom, custom.scale)
        if request.resource is None or request.action not in WRITES:
            return await super()._handle(request)
        for hook in list(self.before_write):
            await hook(request)
        async with self._write_lock:
            self._stamp(request)
            return await super()._handle(request)

    async def _serve_scale(
        self, request: rendering.Request, custom: CustomResource, scale: ScaleSubresource
    ) -> aiohttp.web.StreamResponse:
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        try:
            if method == "GET":
                async with self._lock:
                    stored = self._stored(request)
                    if stored is None:
                        raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.name} not found")
                    return aiohttp.web.json_response(apiextensions.get_scale(copy.deepcopy(stored.raw), scale))
            if method not in ("PATCH", "PUT"):
                raise kmock.KubernetesError(status=405, reason="MethodNotAllowed", message=f"{method} /scale")
            async with self._write_lock, self._lock:
                stored = self._stored(request)
                if stored is None:
                    raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.name} not found")
                current = copy.deepcopy(stored.raw)
                new_scale = request.data if method == "PUT" else self._patched_scale(request, current, scale)
                updated, precondition = apiextensions.updated_object(current, new_scale, scale)
                if precondition is not None and precondition != str(current["metadata"].get("resourceVersion")):
                    raise kmock.KubernetesError(
                        status=409,
                        reason="Conflict",
                        message="the object has been modified; please apply your changes to the latest version",
                    )
                problems = apiextensions.range_errors(updated, custom.schema)
                if problems:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message="; ".join(problems))
                changes: dict[str, Any] = {"spec": updated.get("spec"), "metadata": {}}
                if updated.get("spec") != current.get("spec"):
                    changes["metadata"]["generation"] = _generation(current) + 1
                changes["metadata"]["resourceVersion"] = self._next_version()
                stored.patch(changes)
                raw = stored.raw
                await self._buses[request.resource].put({"type": "MODIFIED", "object": copy.deepcopy(raw)})
                return aiohttp.web.json_response(apiextensions.get_scale(copy.deepcopy(raw), scale))
        except ScaleError as error:
            kind = ScaleSpecMissing if error.status == 500 else kmock.KubernetesError
            return await self._render_error(kind(status=error.status, reason=error.reason, message=error.message))
        except kmock.KubernetesError as error:
            return await self._render_error(error)

    def _patched_scale(self, request: rendering.Request, current: dict[str, Any], scale: ScaleSubresource) -> Any:
        old = apiextensions.old_scale_for_update(current, scale)
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        data = request.data
        if content_type == "application/json-patch+json":
            try:
                return jsonpatch.apply_patch(old, data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from error
        if not isinstance(data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="unsupported patch body")
        return dicts.patch_dict(old, data)  # merge patch (strategic merge is the same for a Scale)

    def _stored(self, request: rendering.Request) -> kmock.Object | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects:
            return None
        stored = self._objects[key]
        return None if stored.deleted else stored

    def _stamp(self, request: rendering.Request) -> None:
        if request.action == enums.action.CREATE:
            self._stamp_create(request)
        elif request.action == enums.action.UPDATE and request.name is not None:
            self._stamp_update(request)
        elif request.action == enums.action.DELETE and request.name is not None:
            stored = self._stored(request)
            if stored is not None:  # the DELETED/MODIFIED event carries a new version
                stored.patch({"metadata": {"resourceVersion": self._next_version()}})

    def _stamp_create(self, request: rendering.Request) -> None:
        data = request.data
        if not isinstance(data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body must be an object")
        metadata = data.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = f"{metadata['generateName']}{secrets.token_hex(3)}"
        if request.namespace and not metadata.get("namespace"):
            metadata["namespace"] = request.namespace
        metadata["uid"] = str(uuid.uuid4())
        metadata["resourceVersion"] = self._next_version()
        metadata["creationTimestamp"] = _now()
        metadata["generation"] = 1
        metadata.pop("deletionTimestamp", None)
        custom = self._custom_resource(request)
        if custom is not None:
            for path, value in apiextensions.default_additions(data, custom.schema):
                target = data
                for part in path[:-1]:
                    target = target[part]
                target[path[-1]] = value

    def _stamp_update(self, request: rendering.Request) -> None:
        stored = self._stored(request)
        if stored is None:
            return  # kmock answers 404
        current = copy.deepcopy(stored.raw)
        data = request.data
        status_only = request.subresource == "status"
        if isinstance(data, list):
            try:
                updated = jsonpatch.apply_patch(copy.deepcopy(current), data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from error
            extra = [{"op": "add", "path": "/metadata/resourceVersion", "value": self._next_version()}]
            custom = self._custom_resource(request)
            if custom is not None and not status_only:
                extra += [
                    {"op": "add", "path": "/" + "/".join(path), "value": value}
                    for path, value in apiextensions.default_additions(updated, custom.schema)
                ]
            if not status_only and updated.get("spec") != current.get("spec"):
                extra.append({"op": "add", "path": "/metadata/generation", "value": _generation(current) + 1})
            data.extend(extra)
            return
        if not isinstance(data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="unsupported patch body")
        given = (data.get("metadata") or {}).get("resourceVersion")
        if given is not None and str(given) != str(current.get("metadata", {}).get("resourceVersion")):
            raise kmock.KubernetesError(
                status=409, reason="Conflict", message="the object has been modified; please apply your changes"
            )
        if status_only:  # a status write changes nothing else
            for key in list(data):
                if key != "status":
                    del data[key]
        updated = dicts.patch_dict(current, data)
        custom = self._custom_resource(request)
        if custom is not None and not status_only:
            # The server defaults the patched object; as a patch: the defaults, where it set nothing.
            for path, value in apiextensions.default_additions(updated, custom.schema):
                target = data
                for part in path[:-1]:
                    if not isinstance(target.get(part), dict):
                        target[part] = {}
                    target = target[part]
                target[path[-1]] = value
        metadata = data.setdefault("metadata", {})
        metadata["resourceVersion"] = self._next_version()
        if not status_only and updated.get("spec") != current.get("spec"):
            metadata["generation"] = _generation(current) + 1

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_list(request)
        if isinstance(payload, dict):
            payload["metadata"] = {"resourceVersion": str(self._last_version)}
        return payload


def _generation(body: dict[str, Any]) -> int:
    value = body.get("metadata", {}).get("generation")
    return value if isinstance(value, int) else 1


# What the emulator serves, as API discovery shows it.
RESOURCES: dict[str, dict[str, Any]] = {
    "framescale.io/v1alpha1/videopipelines": {
        "namespaced": True,
        "kind": "VideoPipeline",
        "singular": "videopipeline",
        "shortnames": {"vp"},
        "verbs": {"get", "list", "watch", "create", "update", "patch", "delete"},
        "subresources": {"status", "scale"},
    },
    "coordination.k8s.io/v1/leases": {
        "namespaced": True,
        "kind": "Lease",
        "singular": "lease",
        "verbs": {"get", "list", "watch", "create", "update", "patch", "delete"},
    },
    "v1/nodes": {
        "namespaced": False,
        "kind": "Node",
        "singular": "node",
        "verbs": {"get", "list", "watch", "create", "update", "patch", "delete"},
    },
    # kopf waits for these two to be discoverable even when it watches the whole cluster.
    "v1/namespaces": {
        "namespaced": False,
        "kind": "Namespace",
        "singular": "namespace",
        "verbs": {"get", "list", "watch", "create", "delete"},
    },
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "namespaced": False,
        "kind": "CustomResourceDefinition",
        "singular": "customresourcedefinition",
        "verbs": {"get", "list", "watch", "create", "delete"},
    },
    "v1/events": {
        "namespaced": True,
        "kind": "Event",
        "singular": "event",
        "verbs": {"get", "list", "watch", "create", "patch"},
    },
}


REQUEST_LOG_PASS_SECONDS = 0.2  # how long a request stays in kmock's log (between one and two passes)


class EmulatorThread:
    """The emulator served over HTTP on 127.0.0.1 from a background event loop."""

    def __init__(self, crds: list[dict[str, Any]] | None = None) -> None:
        self.crds = crds
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kube-emulator", daemon=True)
        self.emulator: KubeEmulator | None = None
        self.server: kmock.Server | None = None

    async def _start(self) -> None:
        self.emulator = KubeEmulator() if self.crds is None else KubeEmulator(crds=self.crds)
        for resource, info in RESOURCES.items():
            self.emulator.resources[resource] = kmock.ResourceInfo(**info)
        await self.emulator.__aenter__()
        self.server = kmock.Server(self.emulator)
        await self.server.__aenter__()

    async def _stop(self) -> None:
        if self.server is not None:
            await self.server.__aexit__(None, None, None)
        if self.emulator is not None:
            await self.emulator.__aexit__(None, None, None)

    def start(self) -> EmulatorThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        self._trimming = asyncio.run_coroutine_threadsafe(self._bound_request_log(), self.loop)
        return self

    async def _bound_request_log(self) -> None:
        """Drop from kmock's request log what has been there a while. kmock keeps every request it
        served and matches each new one against its reactions by walking the whole log: after a few
        thousand requests (fake nodes polling their Leases) every answer took a tenth of a second
        or more. A request is matched as soon as it is parsed (or once the write lock is free, a
        few milliseconds), so one that has been in the log for a whole pass is done with it."""
        present = 0  # entries that were in the log at the previous pass
        while True:
            await asyncio.sleep(REQUEST_LOG_PASS_SECONDS)
            if self.emulator is None:
                continue
            log = self.emulator._requests
            del log[: min(present, len(log))]
            present = len(log)

    def stop(self) -> None:
        if getattr(self, "_trimming", None) is not None:
            self._trimming.cancel()
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    @property
    def url(self) -> str:
        assert self.server is not None, "the emulator is not started"
        return str(self.server.url).rstrip("/")

    def server_errors(self) -> list[Exception]:
        """What the emulator answered with a 5xx: a bug in it, or a request it does not understand."""
        if self.emulator is None or not self.emulator.active:
            return []
        return [
            error
            for error in self.emulator.errors
            if not (isinstance(error, kmock.KubernetesError) and error.status < 500)
            and not isinstance(error, ScaleSpecMissing)
        ]
