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
