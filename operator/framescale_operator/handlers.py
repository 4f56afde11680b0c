"""kopf wiring, and nothing else: each handler hands typed values to ``reconcile``.

* start-up: settings, AWS and Kubernetes clients, the metrics endpoint, kopf's settings;
  clean-up closes them.
* indexes of the framescale busy Leases and of the Nodes (kept current by kopf's watches);
  a Lease event that flips busy/idle wakes the pipelines at their next tick.
* a 1-second timer per VideoPipeline that runs a reconcile pass when ``scheduling`` says one
  is due, and writes ``status``. A failed pass never raises ``kopf.TemporaryError`` here: kopf
  would sleep the whole timer through the delay, Lease changes included; the clock schedules
  the retry instead. The status and a Warning Event say it is retrying, a log line says when.
* the scale subresource's rules (``scale_mode``): before a pass, an outside write of
  ``spec.replicas`` pins the pipeline (spec.mode Manual, an Event); after an autoscaling pass, the
  decided count is mirrored into ``spec.replicas``, conditional on the version read.
* deletion releases every protection the pipeline holds (hence a finalizer).
* leader election (``leader``): only the replica holding the leader Lease runs passes and
  releases; the others keep their watches and indexes warm and write nothing.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from framescale import busy_lease, names
from framescale_operator import leader, metrics, models, protection, reconcile, scale_mode, scheduling
from framescale_operator.aws_actuators import AwsActuator, AwsError, AwsRetryable
from framescale_operator.kube import (
    KubeConflict,
    KubeError,
    KubeRetryable,
    LeaseClient,
    NodeAnnotator,
    PipelineWriter,
)
from framescale_operator.settings import OperatorSettings, load

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
FINALIZER = "framescale.io/operator"
LEASE_LABELS = {names.LEASE_COMPONENT_LABEL: names.LEASE_COMPONENT_VALUE}
RESOURCE = (names.GROUP, names.VERSION, names.PLURAL)


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorSettings = memo.get("settings") or load()
    memo.settings = config
    # Progress and the last-handled spec live in annotations, so status stays ours and typed.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="framescale.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="framescale.io", key="last-handled-configuration"
    )
    # Our own Events are posted explicitly; kopf's log lines become Events only when they warn.
    settings.posting.level = logging.WARNING
    settings.networking.error_backoffs = [1, 2, 5, 10]
    memo.lease_watch = scheduling.LeaseWatch()
    memo.aws = AwsActuator(max_attempts=config.aws_max_attempts)
    memo.nodes_api = NodeAnnotator()
    memo.pipelines_api = PipelineWriter(*RESOURCE)
    memo.election = None
    if config.leader_election:
        identity = config.leader_identity or f"{socket.gethostname()}-{os.getpid()}"
        memo.election = leader.LeaderElection(
            LeaseClient(),
            namespace=config.leader_lease_namespace,
            name=config.leader_lease_name,
            identity=identity,
            lease_duration=config.leader_lease_duration_seconds,
            renew_deadline=config.leader_renew_deadline_seconds,
            retry_period=config.leader_retry_period_seconds,
        ).start()
    memo.metrics_server = None
    if config.metrics_port:
        memo.metrics_server = metrics.serve(config.metrics_host, config.metrics_port)
    log.info(
        "framescale operator started",
        extra={"metrics_port": config.metrics_port, "lease_namespace": config.lease_namespace or "(pipeline's)"},
    )


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    election: leader.LeaderElection | None = memo.get("election")
    if election is not None:
        election.stop()  # releases the Lease: the other replica takes over at its next try
        election.api.close()  # type: ignore[attr-defined]
    for key in ("aws", "nodes_api", "pipelines_api"):
        resource = memo.get(key)
        if resource is not None:
            resource.close()
    server = memo.get("metrics_server")
    if server is not None:
        server.shutdown()
        server.server_close()
    log.info("framescale operator stopped")


@kopf.on.probe(id="busyLeaseChanges")
def probe(memo: kopf.Memo, **_: Any) -> int:
    """Shown in the liveness endpoint's body: how many busy/idle flips the operator has seen."""
    watch: scheduling.LeaseWatch | None = memo.get("lease_watch")
    return watch.epoch if watch is not None else 0


@kopf.index("coordination.k8s.io", "v1", "leases", labels=LEASE_LABELS)
def busy_leases(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, dict[str, Any]]:
    """Lease namespace -> plain copies of its framescale busy Leases."""
    metadata = body.get("metadata", {})
    return {
        namespace or "": {
            "metadata": {
                "name": metadata.get("name"),
                "namespace": namespace,
                "labels": dict(metadata.get("labels") or {}),
                "annotations": dict(metadata.get("annotations") or {}),
            },
            "spec": dict(body.get("spec") or {}),
        }
    }


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels=LEASE_LABELS)
def lease_changed(
    type: str | None, body: kopf.Body, name: str | None, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    watch: scheduling.LeaseWatch | None = memo.get("lease_watch")
    if watch is None:
        return
    busy: bool | None = None
    if type != "DELETED":
        view = busy_lease.read_lease(dict(body), datetime.now(UTC))
        busy = bool(view and view.busy)
    watch.observe(namespace or "", name or "", busy)


@kopf.index("v1", "nodes")
def nodes(body: kopf.Body, name: str | None, **_: Any) -> dict[str, protection.NodeRecord]:
    return {name or "": protection.NodeRecord.from_body(body)}


def _acting(memo: kopf.Memo) -> bool:
    """This replica may act: it holds the leader Lease, or leader election is off."""
    election: leader.LeaderElection | None = memo.get("election")
    return election is None or election.is_leader()


def _lease_namespace(config: OperatorSettings, namespace: str) -> str:
    return config.lease_namespace or namespace


async def _write_scale_fields(memo: kopf.Memo, ref: reconcile.PipelineRef, patch: dict[str, Any], what: str) -> bool:
    """One conditional merge patch of the pipeline's spec/metadata; False when it did not land."""
    try:
        await asyncio.to_thread(memo.pipelines_api.patch_pipeline, ref.namespace, ref.name, patch)
    except KubeConflict:
        # Someone wrote the object since it was read; the next tick sees what they wrote.
        log.info("%s not written: the pipeline changed since it was read", what, extra=ref.log_extra())
        return False
    except KubeError as error:
        log.warning("%s not written: %s; tried again at the next tick", what, error, extra=ref.log_extra())
        return False
    return True


async def _resolve_mode(
    body: kopf.Body, memo: kopf.Memo, ref: reconcile.PipelineRef
) -> tuple[scale_mode.ScaleState, scale_mode.Resolution]:
    """The mode this tick runs in; pins (or acknowledges a manual rescale) when the object says so."""
    state = scale_mode.ScaleState.from_body(dict(body))
    resolution = scale_mode.resolve(state)
    if resolution.pinned_now:
        if await _write_scale_fields(memo, ref, scale_mode.pin_patch(state), "switch to Manual"):
            message = (
                f"spec.replicas was set to {state.replicas} from outside the operator (kubectl scale, an HPA, "
                f"an edit): pinned, spec.mode is Manual; to autoscale again: {scale_mode.RETURN_TO_AUTOSCALING}"
            )
            kopf.event(body, type="Normal", reason="Pinned", message=message)
            log.info("%s", message, extra=ref.log_extra(reason="Pinned"))
    elif resolution.acknowledge:
        await _write_scale_fields(memo, ref, scale_mode.acknowledge_patch(state), "manual count acknowledgement")
    return state, resolution


def _decided_count(outcome: reconcile.Outcome) -> int | None:
    """The node count an autoscaling pass decided and carried out, if it did."""
    if outcome.decision is None or outcome.scaling_failure is not None:
        return None
    return outcome.decision.desired


def _nodes_snapshot(index: kopf.Index[str, protection.NodeRecord]) -> dict[str, protection.NodeRecord]:
    return {key: record for key, store in index.items() for record in store}


@kopf.timer(*RESOURCE, id="reconcile", interval=TICK_SECONDS)
async def tick(
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    if not _acting(memo):
        return  # a standby replica: no AWS call, no write
    # kopf injects the indexes by their function names.
    busy_leases: kopf.Index[str, dict[str, Any]] = kwargs["busy_leases"]
    nodes: kopf.Index[str, protection.NodeRecord] = kwargs["nodes"]
    namespace = namespace or ""
    config: OperatorSettings = memo.settings
    watch: scheduling.LeaseWatch = memo.lease_watch
    clock: scheduling.PipelineClock = memo.setdefault("clock", scheduling.PipelineClock())
    ref = reconcile.PipelineRef(namespace=namespace, name=name)
    state, resolution = await _resolve_mode(body, memo, ref)
    selector = scale_mode.selector_string(dict(spec.get("workerSelector") or {}) or scale_mode.default_selector(name))
    if status.get("selector") != selector:
        patch.status["selector"] = selector
    monotonic, now = time.monotonic(), datetime.now(UTC)
    generation = meta.get("generation")
    epoch = watch.epoch
    due = clock.due(
        monotonic=monotonic,
        now=now,
        poll_interval=scheduling.poll_interval(spec, config.default_poll_interval_seconds),
        resync_interval=config.protection_resync_seconds,
        generation=generation,
        lease_epoch=epoch,
    )
    if due is None:
        return

    snapshot = reconcile.Snapshot(
        # A copy (the pass runs in a thread; kopf may update the live body), in the resolved mode.
        spec={**copy.deepcopy(dict(spec)), "mode": resolution.mode.value},
        status=copy.deepcopy(dict(status)),
        generation=generation,
        leases=list(busy_leases.get(_lease_namespace(config, namespace), [])),
        nodes=_nodes_snapshot(nodes),
        now=now,
    )
    started = time.monotonic()
    outcome = await asyncio.to_thread(
        reconcile.reconcile, ref, snapshot, aws=memo.aws, nodes_api=memo.nodes_api, scale=due.scale
    )
    metrics.record(ref, outcome, time.monotonic() - started)
    retry_in = clock.ran(
        due,
        monotonic=monotonic,
        generation=generation,
        lease_epoch=epoch,
        next_expiry=outcome.next_expiry(),
        scaling_retry=bool(outcome.scaling_failure and outcome.scaling_failure.retryable),
        protection_retry=bool(outcome.protection_failure and outcome.protection_failure.retryable),
        base_delay=config.temporary_error_delay_seconds,
    )
    decided = _decided_count(outcome)
    if resolution.mode is models.Mode.AUTOSCALING and decided is not None:
        mirror = scale_mode.mirror_patch(state, decided)
        if mirror is not None:
            await _write_scale_fields(memo, ref, mirror, f"mirror of {decided} into spec.replicas")
    for key, value in outcome.status_patch.items():
        patch.status[key] = value
    for note in outcome.events:
        kopf.event(body, type=note.type, reason=note.reason, message=note.message)
    extra = ref.log_extra(
        backlog=outcome.depth.backlog if outcome.depth else None,
        desired=outcome.decision.desired if outcome.decision else None,
        reason=outcome.decision.reason.value if outcome.decision else None,
    )
    if outcome.status_patch or outcome.actions:
        log.info("pass (%s): %s", due.why, "; ".join(outcome.actions) or "status updated", extra=extra)
    if retry_in is not None:
        failed = "; ".join(f"{failure.reason}: {failure.message}" for failure in outcome.failures)
        log.warning("pass (%s) failed, retrying in %.0f s: %s", due.why, retry_in, failed, extra=extra)


@kopf.on.delete(*RESOURCE, id="release")
async def release(
    *,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    nodes: kopf.Index[str, protection.NodeRecord] = kwargs["nodes"]
    namespace = namespace or ""
    config: OperatorSettings = memo.settings
    ref = reconcile.PipelineRef(namespace=namespace, name=name)
    # A standby replica waits (writing nothing, so kopf records no retry) until it leads, or until
    # the leader has released the pipeline and the object is gone.
    while not _acting(memo):
        if not await asyncio.to_thread(memo.pipelines_api.exists, namespace, name):
            return
        await asyncio.sleep(config.leader_retry_period_seconds)
    try:
        actions = await asyncio.to_thread(
            reconcile.release,
            ref,
            copy.deepcopy(dict(spec)),
            _nodes_snapshot(nodes),
            aws=memo.aws,
            nodes_api=memo.nodes_api,
        )
    except (AwsRetryable, KubeRetryable) as error:
        delay = scheduling.backoff(config.temporary_error_delay_seconds, int(kwargs.get("retry") or 0) + 1)
        raise kopf.TemporaryError(str(error), delay=delay) from error
    except (AwsError, KubeError) as error:
        raise kopf.PermanentError(f"could not release protection: {error}") from error
    metrics.forget(ref)
    log.info("released: %s", "; ".join(actions) or "nothing was protected", extra=ref.log_extra())
