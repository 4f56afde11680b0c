"""The scale subresource's rules: who owns spec.replicas, when a write pins, what each write says."""

from __future__ import annotations

from typing import Any

import pytest

from framescale_operator import scale_mode
from framescale_operator.models import Mode
from framescale_operator.scale_mode import MIRROR_ANNOTATION, ScaleState


def body(mode: str | None = None, replicas: Any = 0, annotation: str | None = None, version: str = "7") -> dict:
    spec: dict[str, Any] = {"replicas": replicas}
    if mode is not None:
        spec["mode"] = mode
    metadata: dict[str, Any] = {"resourceVersion": version}
    if annotation is not None:
        metadata["annotations"] = {MIRROR_ANNOTATION: annotation}
    return {"metadata": metadata, "spec": spec}


@pytest.mark.parametrize(
    ("mode", "replicas", "annotation", "expected"),
    [
        # Autoscaling, never mirrored: the default 0 autoscales, anything else was asked for.
        ("Autoscaling", 0, None, (Mode.AUTOSCALING, False, False)),
        (None, 0, None, (Mode.AUTOSCALING, False, False)),
        ("Autoscaling", 3, None, (Mode.MANUAL, True, False)),
        (None, 3, None, (Mode.MANUAL, True, False)),  # an object from before spec.mode: replicas meant pinned
        # Autoscaling, mirrored: equal is the operator's own value; different is kubectl scale.
        ("Autoscaling", 2, "2", (Mode.AUTOSCALING, False, False)),
        ("Autoscaling", 0, "2", (Mode.MANUAL, True, False)),  # kubectl scale --replicas=0
        ("Autoscaling", 4, "2", (Mode.MANUAL, True, False)),
        # An unreadable annotation counts as absent.
        ("Autoscaling", 0, "two", (Mode.AUTOSCALING, False, False)),
        ("Autoscaling", 2, "-2", (Mode.MANUAL, True, False)),
        ("Autoscaling", 2, "²", (Mode.MANUAL, True, False)),
        # Manual: held at replicas; the annotation follows so that a return to autoscaling is clean.
        ("Manual", 3, "3", (Mode.MANUAL, False, False)),
        ("Manual", 3, "1", (Mode.MANUAL, False, True)),
        ("Manual", 0, None, (Mode.MANUAL, False, True)),
    ],
)
def test_resolve(mode: str | None, replicas: int, annotation: str | None, expected: tuple[Mode, bool, bool]) -> None:
    """expected: (the mode the pass runs in, pin now, acknowledge a manual count)."""
    resolution = scale_mode.resolve(ScaleState.from_body(body(mode, replicas, annotation)))
    assert (resolution.mode, resolution.pinned_now, resolution.acknowledge) == expected


@pytest.mark.parametrize("replicas", [None, "3", True, 2.5])
def test_unreadable_replicas_read_as_zero(replicas: Any) -> None:
    assert ScaleState.from_body(body("Autoscaling", replicas)).replicas == 0


def test_unknown_mode_reads_as_autoscaling() -> None:
    assert ScaleState.from_body(body("manual", 0)).mode is Mode.AUTOSCALING


def test_every_write_is_conditional_on_the_version_read() -> None:
    state = ScaleState.from_body(body("Autoscaling", 4, "2", version="41"))
    for patch in (scale_mode.pin_patch(state), scale_mode.acknowledge_patch(state), scale_mode.mirror_patch(state, 3)):
        assert patch is not None
        assert patch["metadata"]["resourceVersion"] == "41"


def test_pin_switches_mode_and_acknowledges_the_written_count_in_one_patch() -> None:
    state = ScaleState.from_body(body("Autoscaling", 4, "2"))
    assert scale_mode.pin_patch(state) == {
        "metadata": {"resourceVersion": "7", "annotations": {MIRROR_ANNOTATION: "4"}},
        "spec": {"mode": "Manual"},
    }


def test_after_a_pin_and_the_documented_return_nothing_pins_again() -> None:
    state = ScaleState.from_body(body("Autoscaling", 4, "2"))
    pinned = scale_mode.pin_patch(state)
    # The user runs the documented edit: only spec.mode changes.
    returned = body("Autoscaling", 4, pinned["metadata"]["annotations"][MIRROR_ANNOTATION])
    assert scale_mode.resolve(ScaleState.from_body(returned)).mode is Mode.AUTOSCALING


def test_mirror_writes_replicas_and_annotation_together_and_only_when_they_differ() -> None:
    state = ScaleState.from_body(body("Autoscaling", 2, "2"))
    assert scale_mode.mirror_patch(state, 2) is None
    assert scale_mode.mirror_patch(state, 5) == {
        "metadata": {"resourceVersion": "7", "annotations": {MIRROR_ANNOTATION: "5"}},
        "spec": {"replicas": 5},
    }
    fresh = ScaleState.from_body(body("Autoscaling", 0))
    assert scale_mode.mirror_patch(fresh, 0) is not None  # records the annotation once


def test_selector_string_is_sorted_and_has_a_default() -> None:
    assert scale_mode.selector_string({"b": "2", "a": "1"}) == "a=1,b=2"
    assert scale_mode.selector_string(scale_mode.default_selector("detector")) == (
        "app.kubernetes.io/component=worker,framescale.io/pipeline=detector"
    )
