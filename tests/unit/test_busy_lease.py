"""The busy-node Lease contract between worker and operator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from framescale import busy_lease, names

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def body(active: int, renewed: datetime = NOW, duration: int = 60) -> dict:
    return busy_lease.lease_body(
        node_name="ip-10-0-0-1.ec2.internal",
        namespace="framescale",
        holder="pod-a",
        active_jobs=active,
        duration_seconds=duration,
        now=renewed,
    )


def test_busy_until_it_expires() -> None:
    lease = body(2)
    view = busy_lease.read_lease(lease, NOW + timedelta(seconds=59))
    assert view is not None and view.busy and view.node_name == "ip-10-0-0-1.ec2.internal"
    expired = busy_lease.read_lease(lease, NOW + timedelta(seconds=61))
    assert expired is not None and not expired.busy


def test_idle_lease_is_not_busy_even_when_fresh() -> None:
    view = busy_lease.read_lease(body(0), NOW)
    assert view is not None and not view.busy


def test_foreign_leases_are_ignored() -> None:
    lease = body(1)
    lease["metadata"]["labels"] = {}
    assert busy_lease.read_lease(lease, NOW) is None


def test_round_trip_through_kubernetes_time_format() -> None:
    lease = body(1)
    assert lease["spec"]["renewTime"] == "2026-01-01T12:00:00.000000Z"
    assert lease["metadata"]["annotations"][names.LEASE_ACTIVE_JOBS_ANNOTATION] == "1"


def test_long_node_names_give_valid_distinct_lease_names() -> None:
    a = busy_lease.lease_name("n" * 300)
    b = busy_lease.lease_name("n" * 299 + "m")
    assert len(a) <= 253 and len(b) <= 253 and a != b


def test_garbage_times_mean_not_busy() -> None:
    lease = body(3)
    lease["spec"]["renewTime"] = "yesterday"
    lease["spec"]["acquireTime"] = None
    view = busy_lease.read_lease(lease, NOW)
    assert view is not None and not view.busy


# ---------------------------------------------------------------- version 2: the drain handshake


def v2(
    active: int = 0,
    state: busy_lease.WorkerState = busy_lease.WorkerState.IDLE,
    *,
    renewed: datetime = NOW,
    reply: busy_lease.DrainReply | None = None,
) -> dict:
    lease = busy_lease.worker_patch(
        node_name="ip-10-0-0-1.ec2.internal",
        namespace="framescale",
        holder="pod-a",
        duration_seconds=30,
        now=renewed,
        active_jobs=active,
        state=state,
        pipeline="detect",
        drain_reply=reply,
    )
    return lease


def merge(lease: dict, patch: dict) -> dict:
    """A JSON merge patch of the annotations, as the API server applies it."""
    annotations = dict(lease["metadata"]["annotations"])
    for key, value in patch["metadata"]["annotations"].items():
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
    return {**lease, "metadata": {**lease["metadata"], "annotations": annotations}}


def test_record_reads_what_the_worker_wrote_with_no_clock() -> None:
    record = busy_lease.parse_lease(v2(2, busy_lease.WorkerState.BUSY, renewed=NOW - timedelta(days=3)))
    assert record is not None
    assert (record.node_name, record.pipeline, record.holder) == ("ip-10-0-0-1.ec2.internal", "detect", "pod-a")
    assert record.busy and record.active_jobs == 2 and record.duration_seconds == 30
    assert record.drain_request is None and record.drain_reply is None
    assert busy_lease.parse_lease({"metadata": {"labels": {}}}) is None


def test_drained_only_for_the_request_it_answers() -> None:
    token = busy_lease.new_drain_token()
    requested = merge(v2(), busy_lease.drain_request_patch(token, "video/detect"))
    record = busy_lease.parse_lease(requested)
    assert record is not None and record.drain_request == token and record.drain_requested_by == "video/detect"
    assert not record.drained_for(token), "a request alone is no answer"
    reply = busy_lease.DrainReply(token, busy_lease.DrainVerdict.DRAINED)
    answered = merge(v2(0, busy_lease.WorkerState.DRAINED, reply=reply), busy_lease.drain_request_patch(token, "x"))
    record = busy_lease.parse_lease(answered)
    assert record is not None and record.drained_for(token)
    assert not record.drained_for(busy_lease.new_drain_token()), "an answer to another request"
    # A reply left from an earlier request does not answer a new one.
    newer = busy_lease.new_drain_token()
    record = busy_lease.parse_lease(merge(answered, busy_lease.drain_request_patch(newer, "x")))
    assert record is not None and not record.drained_for(newer)
    # Drained but with a job in hand is not drained.
    busy = merge(v2(1, busy_lease.WorkerState.DRAINED, reply=reply), busy_lease.drain_request_patch(token, "x"))
    record = busy_lease.parse_lease(busy)
    assert record is not None and not record.drained_for(token)


def test_refusal_and_withdrawal() -> None:
    token = busy_lease.new_drain_token()
    reply = busy_lease.DrainReply(token, busy_lease.DrainVerdict.REFUSED)
    lease = merge(v2(1, busy_lease.WorkerState.BUSY, reply=reply), busy_lease.drain_request_patch(token, "x"))
    record = busy_lease.parse_lease(lease)
    assert record is not None and record.refused(token) and not record.drained_for(token)
    withdrawn = busy_lease.parse_lease(merge(lease, busy_lease.withdraw_drain_patch()))
    assert withdrawn is not None and withdrawn.drain_request is None and not withdrawn.refused(token)


def test_garbled_replies_and_states_read_as_none() -> None:
    lease = v2()
    lease["metadata"]["annotations"][names.LEASE_DRAIN_REPLY_ANNOTATION] = "tok maybe"
    lease["metadata"]["annotations"][names.LEASE_STATE_ANNOTATION] = "sleeping"
    record = busy_lease.parse_lease(lease)
    assert record is not None and record.drain_reply is None and record.state is None


def test_liveness_is_judged_on_the_readers_clock_only() -> None:
    liveness = busy_lease.LeaseLiveness()
    # The writer's clock is two minutes behind: irrelevant, only changes of renewTime count.
    first = busy_lease.parse_lease(v2(1, busy_lease.WorkerState.BUSY, renewed=NOW - timedelta(seconds=120)))
    assert first is not None
    assert not liveness.live(first, 1000.0), "never observed: not live"
    liveness.observe(first, 1000.0)
    assert liveness.live(first, 1029.9)
    liveness.observe(first, 1020.0)  # the same renewal seen again does not extend it
    assert not liveness.live(first, 1030.0)
    renewed = busy_lease.parse_lease(v2(1, busy_lease.WorkerState.BUSY, renewed=NOW - timedelta(seconds=110)))
    assert renewed is not None
    liveness.observe(renewed, 1025.0)
    assert liveness.live(renewed, 1054.9) and not liveness.live(renewed, 1055.0)
    assert liveness.expires_at(renewed) == 1055.0
    assert not liveness.live(first, 1026.0), "a stale copy of the Lease is not the renewal seen"
    liveness.forget("framescale", renewed.name)
    assert not liveness.live(renewed, 1026.0)


def test_admission_gates_jobs() -> None:
    lease = v2()
    record = busy_lease.parse_lease(lease)
    assert record is not None and not record.may_take_jobs, "not admitted yet"
    admitted = merge(lease, busy_lease.admit_patch("video/detect"))
    record = busy_lease.parse_lease(admitted)
    assert record is not None and record.admitted_by == "video/detect" and record.may_take_jobs
    token = busy_lease.new_drain_token()
    draining = merge(admitted, busy_lease.drain_request_patch(token, "video/detect", busy_lease.DrainMode.FINISH))
    record = busy_lease.parse_lease(draining)
    assert record is not None and not record.may_take_jobs and record.drain_mode == busy_lease.DrainMode.FINISH
    record = busy_lease.parse_lease(merge(draining, busy_lease.withdraw_drain_patch()))
    assert record is not None and record.may_take_jobs and record.drain_mode == busy_lease.DrainMode.IF_IDLE


def test_drain_answers_by_mode() -> None:
    respond, mode, verdict = busy_lease.respond_to_drain, busy_lease.DrainMode, busy_lease.DrainVerdict
    assert respond(mode.IF_IDLE, 0) == verdict.DRAINED
    assert respond(mode.IF_IDLE, 1) == verdict.REFUSED
    assert respond(mode.FINISH, 0) == verdict.DRAINED
    assert respond(mode.FINISH, 2) is None, "finishing: no answer until the jobs are done"
