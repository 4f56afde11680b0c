"""Who owns ``spec.replicas``: the rules of the scale subresource, as pure functions.

``spec.replicas`` is the field the ``/scale`` subresource reads and writes, so it is always
present (schema default 0) and a real API server never answers ``GET /scale`` with 500. The mode
lives in ``spec.mode``:

* **Autoscaling**: the operator decides the node count and mirrors it into ``spec.replicas``,
  recording the value it wrote in the annotation ``framescale.io/mirrored-replicas``, both in one
  merge patch that carries the ``resourceVersion`` it read (a precondition: if anyone wrote the
  object in between, the API server answers 409 and the mirror is simply not written).
* A pass that finds ``spec.replicas`` different from that annotation knows someone else wrote it
  (``kubectl scale``, an HPA, KEDA, an edit): the pipeline is **pinned**: the operator patches
  ``spec.mode`` to Manual (same precondition) and posts a ``Pinned`` Event. Because the mirror
  write is conditional, a ``kubectl scale`` that lands between the operator's read and its write
  makes the write fail instead of being overwritten: no pin is lost.
* **Manual**: the node group is held at ``spec.replicas``; the operator keeps the annotation equal
  to it (acknowledging each rescale), so that the documented return to autoscaling,
  ``kubectl patch vp/NAME --type=merge -p '{"spec":{"mode":"Autoscaling"}}'``, finds them equal
  and does not pin again at once.

A pipeline without the annotation has never been mirrored: with ``spec.replicas`` 0 (the default)
it autoscales; with any other value somebody asked for that count (a manifest that sets it, or an
object written before ``spec.mode`` existed, when a set ``spec.replicas`` meant "pinned"), so it is
pinned. An annotation that is not a non-negative integer is treated as absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from framescale_operator.models import Mode

MIRROR_ANNOTATION = "framescale.io/mirrored-replicas"
RETURN_TO_AUTOSCALING = 'kubectl patch vp/NAME --type=merge -p \'{"spec":{"mode":"Autoscaling"}}\''


@dataclass(frozen=True)
class ScaleState:
    """What the pipeline object says about its count, as read at the start of a pass."""

    mode: Mode
    replicas: int
    mirrored: int | None  # the annotation, parsed; None when absent or unreadable
    resource_version: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ScaleState:
        spec = body.get("spec") or {}
        metadata = body.get("metadata") or {}
        mode = Mode.MANUAL if spec.get("mode") == Mode.MANUAL.value else Mode.AUTOSCALING
        replicas = spec.get("replicas")
        annotation = (metadata.get("annotations") or {}).get(MIRROR_ANNOTATION)
        version = metadata.get("resourceVersion")
        return cls(
            mode=mode,
            replicas=replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 0,
            mirrored=parse_count(annotation),
            resource_version=str(version) if version is not None else None,
        )


def parse_count(value: object) -> int | None:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        return None
    return int(value)


@dataclass(frozen=True)
class Resolution:
    """The mode this pass runs in, and the write (if any) that records it."""

    mode: Mode
    pinned_now: bool  # Autoscaling found an outside write of spec.replicas: switch to Manual
    acknowledge: bool  # Manual whose annotation lags spec.replicas: record the value seen


def resolve(state: ScaleState) -> Resolution:
    if state.mode is Mode.MANUAL:
        return Resolution(Mode.MANUAL, pinned_now=False, acknowledge=state.mirrored != state.replicas)
    # Never mirrored: only the schema default (0) is the operator's; else the mirror is the reference.
    reference = 0 if state.mirrored is None else state.mirrored
    outside = state.replicas != reference
    if outside:
        return Resolution(Mode.MANUAL, pinned_now=True, acknowledge=False)
    return Resolution(Mode.AUTOSCALING, pinned_now=False, acknowledge=False)


def _precondition(state: ScaleState) -> dict[str, Any]:
    return {"resourceVersion": state.resource_version} if state.resource_version is not None else {}


def pin_patch(state: ScaleState) -> dict[str, Any]:
    """Switch to Manual at the replicas someone wrote, and acknowledge that count, in one write."""
    return {
        "metadata": {**_precondition(state), "annotations": {MIRROR_ANNOTATION: str(state.replicas)}},
        "spec": {"mode": Mode.MANUAL.value},
    }


def acknowledge_patch(state: ScaleState) -> dict[str, Any]:
    """In Manual mode: record the count seen so that returning to Autoscaling does not re-pin."""
    return {"metadata": {**_precondition(state), "annotations": {MIRROR_ANNOTATION: str(state.replicas)}}}


def mirror_patch(state: ScaleState, desired: int) -> dict[str, Any] | None:
    """In Autoscaling mode: write the operator's count into spec.replicas and the annotation
    together, conditional on the version read; None when both already say ``desired``."""
    if state.replicas == desired and state.mirrored == desired:
        return None
    return {
        "metadata": {**_precondition(state), "annotations": {MIRROR_ANNOTATION: str(desired)}},
        "spec": {"replicas": desired},
    }


def default_selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/component": "worker", "framescale.io/pipeline": name}


def selector_string(labels: dict[str, str]) -> str:
    """A label selector in its string form (``k=v,k2=v2``, sorted), as the scale subresource serves it."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
