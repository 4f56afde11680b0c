"""The Kubernetes side the operator writes itself: Node annotations and the pipeline's scale fields.

kopf watches and patches the VideoPipelines, Leases and Nodes it is told about; setting
annotations on a Node (not the object being handled) needs a client of our own. It is made
once at start-up from the in-cluster service account or the current kubeconfig, the same
way kopf logs in, and closed on clean-up.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from framescale import kubeconfig
from framescale_operator.leader import Conflict

MERGE_PATCH = "application/merge-patch+json"
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class KubeError(Exception):
    """A Kubernetes API call failed."""

    def __init__(self, operation: str, status: int | None, message: str) -> None:
        super().__init__(f"{operation}: HTTP {status}: {message}")
        self.operation = operation
        self.status = status


class KubeRetryable(KubeError):
    """A conflict, throttling or an unavailable API server: try again shortly."""


class NodeApi(Protocol):
    """What the reconciler needs from the Kubernetes API (a test hands in a fake)."""

    def patch_node(self, name: str, patch: dict[str, Any]) -> None: ...


def load_api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, else the current kubeconfig."""
    configuration = client.Configuration()
    kubeconfig.load(configuration)
    return client.ApiClient(configuration)


class NodeAnnotator:
    """``NodeApi`` over the official client: merge-patches a Node's metadata."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or load_api_client()
        self.core = client.CoreV1Api(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    def patch_node(self, name: str, patch: dict[str, Any]) -> None:
        try:
            self.core.patch_node(name, patch, _content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return  # the node is gone: nothing left to annotate
            if error.status in RETRYABLE_STATUSES:
                raise KubeRetryable("PatchNode", error.status, str(error.reason)) from error
            raise KubeError("PatchNode", error.status, str(error.reason)) from error
        except HTTPError as error:
            raise KubeRetryable("PatchNode", None, str(error)) from error


class KubeConflict(KubeRetryable):
    """A write's ``resourceVersion`` precondition failed: the object changed since it was read."""


class PipelineApi(Protocol):
    """Writes to the VideoPipeline object itself (spec and metadata), outside kopf's own patches."""

    def patch_pipeline(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


class PipelineWriter:
    """``PipelineApi`` over the official client: a merge patch of the VideoPipeline.

    A patch that carries ``metadata.resourceVersion`` is conditional: the API server answers 409
    when the object has changed since, raised here as ``KubeConflict``.
    """

    def __init__(self, group: str, version: str, plural: str, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or load_api_client()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.group, self.version, self.plural = group, version, plural

    def close(self) -> None:
        self.api_client.close()

    def patch_pipeline(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        try:
            result = self.custom.patch_namespaced_custom_object(
                self.group, self.version, namespace, self.plural, name, patch, _content_type=MERGE_PATCH
            )
        except ApiException as error:
            if error.status == 409:
                raise KubeConflict("PatchVideoPipeline", error.status, str(error.reason)) from error
            if error.status in RETRYABLE_STATUSES:
                raise KubeRetryable("PatchVideoPipeline", error.status, str(error.reason)) from error
            raise KubeError("PatchVideoPipeline", error.status, str(error.reason)) from error
        except HTTPError as error:
            raise KubeRetryable("PatchVideoPipeline", None, str(error)) from error
        return dict(result) if isinstance(result, dict) else {}

    def exists(self, namespace: str, name: str) -> bool:
        """Whether the pipeline is still there (a read; errors count as "still there")."""
        try:
            self.custom.get_namespaced_custom_object(
                self.group, self.version, namespace, self.plural, name, _preload_content=False
            )
        except ApiException as error:
            return error.status != 404
        except HTTPError:
            return True
        return True


class LeaseClient:
    """``leader.LeaseApi`` over the official client, with plain dicts (no model round trip)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or load_api_client()
        self.coordination = client.CoordinationV1Api(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self.coordination.read_namespaced_lease(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise KubeError("ReadLease", error.status, str(error.reason)) from error
        loaded = json.loads(response.data or b"{}")
        return loaded if isinstance(loaded, dict) else None

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.coordination.create_namespaced_lease(namespace, body, _preload_content=False)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(str(error.reason)) from error
            raise KubeError("CreateLease", error.status, str(error.reason)) from error

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        try:
            self.coordination.patch_namespaced_lease(
                name, namespace, patch, _content_type=MERGE_PATCH, _preload_content=False
            )
        except ApiException as error:
            if error.status in (404, 409):  # changed, or deleted, since it was read
                raise Conflict(str(error.reason)) from error
            raise KubeError("PatchLease", error.status, str(error.reason)) from error


class LeaseApi(Protocol):
    """The operator's writes to node Leases (admission, drain requests); a test hands in a fake."""

    def patch_lease(self, namespace: str, name: str, patch: dict[str, Any]) -> None: ...


class LeaseAnnotator:
    """``LeaseApi`` over the official client: merge-patches the operator's own Lease annotations."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or load_api_client()
        self.coordination = client.CoordinationV1Api(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    def patch_lease(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        try:
            self.coordination.patch_namespaced_lease(name, namespace, patch, _content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return  # the worker's Lease is gone: its node is leaving anyway
            if error.status in RETRYABLE_STATUSES:
                raise KubeRetryable("PatchLease", error.status, str(error.reason)) from error
            raise KubeError("PatchLease", error.status, str(error.reason)) from error
        except HTTPError as error:
            raise KubeRetryable("PatchLease", None, str(error)) from error
