"""Node patches: merge-patch content type, and what each API answer means."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from framescale_operator.kube import MERGE_PATCH, KubeError, KubeRetryable, NodeAnnotator


class FakeCore:
    def __init__(self, status: int | None = None) -> None:
        self.status = status
        self.calls: list[tuple[str, Any, str]] = []

    def patch_node(self, name: str, body: Any, _content_type: str) -> None:
        self.calls.append((name, body, _content_type))
        if self.status is not None:
            raise ApiException(status=self.status, reason="x")


def annotator(status: int | None = None) -> tuple[NodeAnnotator, FakeCore]:
    made = NodeAnnotator(api_client=client.ApiClient(client.Configuration()))
    fake = FakeCore(status)
    made.core = fake  # type: ignore[assignment]
    return made, fake


def test_patches_are_merge_patches() -> None:
    made, fake = annotator()
    made.patch_node("n1", {"metadata": {"annotations": {"a": "true"}}})
    assert fake.calls == [("n1", {"metadata": {"annotations": {"a": "true"}}}, MERGE_PATCH)]
    made.close()


def test_a_missing_node_is_nothing_to_do() -> None:
    made, fake = annotator(404)
    # Asked once, and a 404 answer is the end of it: no error, no second try.
    assert made.patch_node("gone", {"metadata": {}}) is None
    assert fake.calls == [("gone", {"metadata": {}}, MERGE_PATCH)]
    made.close()


@pytest.mark.parametrize("status", [400, 422, 500])
def test_only_a_missing_node_is_swallowed(status: int) -> None:
    made, _ = annotator(status)
    with pytest.raises(KubeError):
        made.patch_node("n1", {"metadata": {}})
    made.close()


@pytest.mark.parametrize("status", [409, 429, 503])
def test_conflicts_and_throttling_are_retryable(status: int) -> None:
    made, _ = annotator(status)
    with pytest.raises(KubeRetryable):
        made.patch_node("n1", {"metadata": {}})
    made.close()


def test_forbidden_is_not_retryable() -> None:
    made, _ = annotator(403)
    with pytest.raises(KubeError) as caught:
        made.patch_node("n1", {"metadata": {}})
    assert not isinstance(caught.value, KubeRetryable)
    made.close()
