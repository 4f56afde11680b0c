"""The emulator extension the operator tests rely on: versions, uids, generations, 422 and 409."""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator

import pytest

from tests.integration.operator.conftest import KubeClient
from tests.integration.operator.kube_emulator import EmulatorThread

pytestmark = [pytest.mark.integration, pytest.mark.operator]

PATH = "/apis/framescale.io/v1alpha1/namespaces/ns/videopipelines"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    running = EmulatorThread().start()
    yield running
    running.stop()


@pytest.fixture
def kube(emulator: EmulatorThread) -> KubeClient:
    return KubeClient(emulator.url)


def _create(kube: KubeClient, name: str) -> dict:
    return kube.create(
        PATH,
        {
            "apiVersion": "framescale.io/v1alpha1",
            "kind": "VideoPipeline",
            "metadata": {"name": name},
            "spec": {"replicas": 1},
        },
    )


def test_create_stamps_identity_and_version(kube: KubeClient) -> None:
    body = _create(kube, "a")
    metadata = body["metadata"]
    assert metadata["namespace"] == "ns"
    assert metadata["uid"] and metadata["creationTimestamp"]
    assert metadata["generation"] == 1
    assert int(metadata["resourceVersion"]) > 0


def test_every_write_gets_a_new_version_and_spec_writes_a_new_generation(kube: KubeClient) -> None:
    first = _create(kube, "b")["metadata"]
    spec = kube.merge_patch(f"{PATH}/b", {"spec": {"replicas": 2}})["metadata"]
    status = kube.merge_patch(f"{PATH}/b/status", {"status": {"replicas": 2}, "spec": {"replicas": 9}})
    assert int(first["resourceVersion"]) < int(spec["resourceVersion"]) < int(status["metadata"]["resourceVersion"])
    assert spec["generation"] == 2
    assert status["metadata"]["generation"] == 2
    assert status["spec"]["replicas"] == 2  # a status write changes only status


def test_failed_json_patch_test_is_422_and_stale_merge_patch_is_409(kube: KubeClient) -> None:
    _create(kube, "c")
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}]
    with pytest.raises(urllib.error.HTTPError) as caught:
        kube.request("PATCH", f"{PATH}/c", stale, "application/json-patch+json")
    assert caught.value.code == 422
    with pytest.raises(urllib.error.HTTPError) as caught:
        kube.merge_patch(f"{PATH}/c", {"metadata": {"resourceVersion": "0"}, "spec": {"replicas": 5}})
    assert caught.value.code == 409


def test_generate_name(kube: KubeClient) -> None:
    first = kube.create("/api/v1/namespaces/ns/events", {"metadata": {"generateName": "e-"}, "reason": "X"})
    second = kube.create("/api/v1/namespaces/ns/events", {"metadata": {"generateName": "e-"}, "reason": "X"})
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["metadata"]["name"].startswith("e-")
