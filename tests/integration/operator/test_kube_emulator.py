"""The emulator extension the operator tests rely on: versions, uids, generations, 422 and 409."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.operator.conftest import KubeClient
from tests.integration.operator.kube_emulator import EmulatorThread, load_crd

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


# ---------------------------------------------------------------- the apiextensions scale subresource

MINIMAL_SPEC = {"queueUrl": "http://sqs.local/1/jobs", "nodeGroup": {"autoScalingGroupName": "gpu"}}


def _vp(kube: KubeClient, name: str, spec: dict | None = None) -> dict:
    return kube.create(
        PATH,
        {
            "apiVersion": "framescale.io/v1alpha1",
            "kind": "VideoPipeline",
            "metadata": {"name": name},
            "spec": dict(spec if spec is not None else MINIMAL_SPEC),
        },
    )


def _error(call: Any) -> tuple[int, dict]:
    with pytest.raises(urllib.error.HTTPError) as caught:
        call()
    return caught.value.code, json.loads(caught.value.read() or b"{}")


def test_crd_defaults_fill_in_replicas_mode_and_nested_objects(kube: KubeClient) -> None:
    spec = _vp(kube, "defaults")["spec"]
    assert spec["replicas"] == 0
    assert spec["mode"] == "Autoscaling"
    assert spec["autoscaling"]["maxReplicas"] == 10  # an omitted object comes back defaulted
    # A merge patch's null deletes a field; the server defaults it again before storing.
    after = kube.merge_patch(f"{PATH}/defaults", {"spec": {"replicas": None}})
    assert after["spec"]["replicas"] == 0


def test_get_scale_reads_spec_status_and_selector(kube: KubeClient) -> None:
    created = _vp(kube, "reads", {**MINIMAL_SPEC, "replicas": 3})
    kube.merge_patch(f"{PATH}/reads/status", {"status": {"replicas": 2, "selector": "a=1,b=2"}})
    scale = kube.get(f"{PATH}/reads/scale")
    assert scale["apiVersion"] == "autoscaling/v1" and scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 2, "selector": "a=1,b=2"}
    assert scale["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(scale["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


def test_without_a_default_get_scale_is_500_as_on_a_real_server_and_a_merge_patch_still_works() -> None:
    # The CRD as it was before spec.replicas had a default (the object then lacks the field).
    old = load_crd()
    del old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicas"][
        "default"
    ]
    running = EmulatorThread(crds=[old]).start()
    try:
        kube = KubeClient(running.url)
        _vp(kube, "old")
        code, status = _error(lambda: kube.get(f"{PATH}/old/scale"))
        assert code == 500
        assert status["reason"] == "InternalError"
        assert status["message"] == 'the spec replicas field ".spec.replicas" does not exist'
        code, status = _error(lambda: kube.merge_patch(f"{PATH}/old/scale", {"metadata": {"labels": {"x": "y"}}}))
        assert (code, status["message"]) == (400, 'the spec replicas field ".spec.replicas" cannot be empty')
        assert kube.merge_patch(f"{PATH}/old/scale", {"spec": {"replicas": 2}})["spec"]["replicas"] == 2
        assert kube.get(f"{PATH}/old/scale")["spec"]["replicas"] == 2
    finally:
        running.stop()


def test_patch_scale_writes_only_spec_replicas_with_a_new_version_and_generation(kube: KubeClient) -> None:
    before = _vp(kube, "patched", {**MINIMAL_SPEC, "mode": "Manual", "replicas": 1})
    scale = kube.merge_patch(
        f"{PATH}/patched/scale", {"spec": {"replicas": 4}, "status": {"replicas": 9, "selector": "x=y"}}
    )
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4
    after = kube.get(f"{PATH}/patched")
    assert after["spec"] == {**before["spec"], "replicas": 4}
    assert "status" not in after  # the Scale's status is read-only
    assert after["metadata"]["generation"] == 2
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    json_patch = [{"op": "replace", "path": "/spec/replicas", "value": 5}]
    assert kube.request("PATCH", f"{PATH}/patched/scale", json_patch, "application/json-patch+json")["spec"] == {
        "replicas": 5
    }


def test_scale_writes_honour_resource_version_preconditions(kube: KubeClient) -> None:
    created = _vp(kube, "preconditions")
    stale = created["metadata"]["resourceVersion"]
    kube.merge_patch(f"{PATH}/preconditions", {"metadata": {"labels": {"moved": "on"}}})
    code, _ = _error(
        lambda: kube.merge_patch(
            f"{PATH}/preconditions/scale", {"metadata": {"resourceVersion": stale}, "spec": {"replicas": 2}}
        )
    )
    assert code == 409
    current = kube.get(f"{PATH}/preconditions/scale")
    put = {**current, "spec": {"replicas": 3}}
    assert kube.request("PUT", f"{PATH}/preconditions/scale", put)["spec"]["replicas"] == 3
    code, _ = _error(lambda: kube.request("PUT", f"{PATH}/preconditions/scale", put))  # its version is now stale
    assert code == 409
    # A write after a scale change that carries the version read before it conflicts: what keeps a
    # kubectl scale from being overwritten by the operator's mirror.
    code, _ = _error(
        lambda: kube.merge_patch(
            f"{PATH}/preconditions",
            {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "spec": {"replicas": 0}},
        )
    )
    assert code == 409


@pytest.mark.parametrize(
    ("body", "code"),
    [({"spec": {"replicas": -1}}, 422), ({"spec": {"replicas": "2"}}, 400), ({"spec": {"replicas": 10_001}}, 422)],
)
def test_bad_scale_patches_are_refused_and_change_nothing(kube: KubeClient, body: dict, code: int) -> None:
    name = f"bad-{code}-{abs(hash(str(body))) % 1000}"
    _vp(kube, name, {**MINIMAL_SPEC, "replicas": 1})
    assert _error(lambda: kube.merge_patch(f"{PATH}/{name}/scale", body))[0] == code
    assert kube.get(f"{PATH}/{name}")["spec"]["replicas"] == 1


def test_scale_of_a_missing_object_is_404(kube: KubeClient) -> None:
    assert _error(lambda: kube.get(f"{PATH}/absent/scale"))[0] == 404
