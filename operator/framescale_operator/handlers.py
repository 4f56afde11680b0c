"""kopf wiring, and nothing else: each handler hands typed values to ``reconcile``.

* start-up: settings, AWS and Kubernetes clients, the metrics endpoint, kopf's settings;
  clean-up closes them.
* indexes of the framescale node Leases, of the Nodes and of the pipelines' claims on groups
  and queues (kept current by kopf's watches); a Lease event that changes what the plan reads
  (busy/idle, worker state, a drain reply, admission) wakes the pipelines at their next tick;
  every Lease event is also a sighting for ``LeaseLiveness`` (the operator's own clock).
* a 1-second timer per VideoPipeline that runs a reconcile pass when ``scheduling`` says one
  is due, and writes ``status``. A failed pass never raises ``kopf.TemporaryError`` here: kopf
  would sleep the whole timer through the delay, Lease changes included; the clock schedules
  the retry instead. The status and a Warning Event say it is retrying, a log line says when.
* the scale subresource's rules (``scale_mode``): before a pass, an outside write of
  ``spec.replicas`` pins the pipeline (spec.mode Manual, an Event); after an autoscaling pass, the
  decided count is mirrored into ``spec.replicas``, conditional on the version read.
* deletion drains the pipeline's nodes and releases each once drained; busy ones stay
  protected until they drain, up to a bound (hence a finalizer, retried until then).
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
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from framescale import busy_lease, names
from framescale_operator import leader, metrics, models, protection, reconcile, scale_mode, scheduling
from framescale_operator import plan as plan_
from framescale_operator.aws_actuators import AwsActuator
from framescale_operator.kube import (
    KubeConflict,
    KubeError,
    LeaseAnnotator,
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
    memo.leases_api = LeaseAnnotator()
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
    memo.liveness = busy_lease.LeaseLiveness()
    memo.idle = reconcile.IdleSince()
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
    for key in ("aws", "nodes_api", "leases_api", "pipelines_api"):
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
    liveness: busy_lease.LeaseLiveness | None = memo.get("liveness")
    if watch is None or liveness is None:
        return
    record = busy_lease.parse_lease(body) if type != "DELETED" else None
    if record is None:
        liveness.forget(namespace or "", name or "")
        watch.observe(namespace or "", name or "", None)
        return
    liveness.observe(record, time.monotonic())
    watch.observe(namespace or "", name or "", scheduling.lease_signature(record))


@kopf.index(*RESOURCE)
def claims(body: kopf.Body, name: str | None, namespace: str | None, **_: Any) -> dict[str, plan_.Claim]:
    """Every pipeline's claim on its group and queue, for one-owner-per-group-and-queue."""
    spec = body.get("spec") or {}
    group = (spec.get("nodeGroup") or {}).get("autoScalingGroupName")
    return {
        "all": plan_.Claim(
            owner=f"{namespace or ''}/{name or ''}",
            created=str(body.get("metadata", {}).get("creationTimestamp") or ""),
            group=group if isinstance(group, str) else "",
            queue=str(spec.get("queueUrl") or ""),
        )
    }


def _ownership(index: kopf.Index[str, plan_.Claim], spec: Mapping[str, Any]) -> plan_.Ownership:
    all_claims = list(index.get("all", []))
    group = (spec.get("nodeGroup") or {}).get("autoScalingGroupName")
    queue = spec.get("queueUrl")
    return plan_.Ownership(
        group_owner=plan_.owner_of(all_claims, group=group) if isinstance(group, str) and group else None,
        queue_owner=plan_.owner_of(all_claims, queue=queue) if isinstance(queue, str) and queue else None,
    )


def _limits(config: OperatorSettings) -> plan_.Limits:
    return plan_.Limits(
        lifecycle_hook=config.lifecycle_hook_name,
        lifecycle_max_hold_seconds=config.lifecycle_max_hold_seconds,
        lifecycle_heartbeat_seconds=config.lifecycle_heartbeat_seconds,
        deletion_max_hold_seconds=config.deletion_max_hold_seconds,
    )


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


def _snapshot(
    *,
    spec: kopf.Spec | dict[str, Any],
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str,
    memo: kopf.Memo,
    indexes: dict[str, Any],
    monotonic: float,
    now: datetime,
    deleting_since: datetime | None = None,
) -> reconcile.Snapshot:
    config: OperatorSettings = memo.settings
    raw_leases = list(indexes["busy_leases"].get(_lease_namespace(config, namespace), []))
    return reconcile.Snapshot(
        spec=copy.deepcopy(dict(spec)),  # the pass runs in a thread; kopf may update the live body
        status=copy.deepcopy(dict(status)),
        generation=meta.get("generation"),
        leases=reconcile.judge_leases(raw_leases, memo.liveness, memo.idle, monotonic),
        nodes=_nodes_snapshot(indexes["nodes"]),
        now=now,
        ownership=_ownership(indexes["claims"], spec),
        limits=_limits(config),
        deleting_since=deleting_since,
    )


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
    if meta.get("deletionTimestamp"):
        return  # the deletion handler drains and releases
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

    snapshot = _snapshot(
        spec={**copy.deepcopy(dict(spec)), "mode": resolution.mode.value},  # in the resolved mode
        status=status,
        meta=meta,
        namespace=namespace,
        memo=memo,
        indexes=kwargs,
        monotonic=monotonic,
        now=now,
    )
    started = time.monotonic()
    outcome = await asyncio.to_thread(
        reconcile.reconcile,
        ref,
        snapshot,
        aws=memo.aws,
        nodes_api=memo.nodes_api,
        leases_api=memo.leases_api,
        scale=due.scale,
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
    _write(body, patch, outcome)
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


def _write(body: kopf.Body, patch: kopf.Patch, outcome: reconcile.Outcome) -> None:
    for key, value in outcome.status_patch.items():
        patch.status[key] = value
    for note in outcome.events:
        kopf.event(body, type=note.type, reason=note.reason, message=note.message)


@kopf.on.delete(*RESOURCE, id="release")
async def release(
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
    """Drain the pipeline's nodes and release each once drained; retried until every node is
    released or the bound (deletion_max_hold_seconds) has passed."""
    namespace = namespace or ""
    config: OperatorSettings = memo.settings
    ref = reconcile.PipelineRef(namespace=namespace, name=name)
    # A standby replica waits (writing nothing, so kopf records no retry) until it leads, or until
    # the leader has released the pipeline and the object is gone.
    while not _acting(memo):
        if not await asyncio.to_thread(memo.pipelines_api.exists, namespace, name):
            return
        await asyncio.sleep(config.leader_retry_period_seconds)
    now = datetime.now(UTC)
    deleting_since = busy_lease.parse_time(meta.get("deletionTimestamp")) or now
    snapshot = _snapshot(
        spec=spec,
        status=status,
        meta=meta,
        namespace=namespace,
        memo=memo,
        indexes=kwargs,
        monotonic=time.monotonic(),
        now=now,
        deleting_since=deleting_since,
    )
    outcome = await asyncio.to_thread(
        reconcile.release, ref, snapshot, aws=memo.aws, nodes_api=memo.nodes_api, leases_api=memo.leases_api
    )
    _write(body, patch, outcome)
    if not outcome.released:
        kept = ", ".join(outcome.plan.kept) if outcome.plan is not None else ""
        failed = "; ".join(f.message for f in outcome.failures)
        raise kopf.TemporaryError(
            f"waiting for busy node(s) to drain: {kept or '(none)'}" + (f"; {failed}" if failed else ""),
            delay=config.temporary_error_delay_seconds
            if outcome.failures
            else min(5.0, config.temporary_error_delay_seconds),
        )
    metrics.forget(ref)
    log.info("released: %s", "; ".join(outcome.actions) or "nothing was protected", extra=ref.log_extra())
