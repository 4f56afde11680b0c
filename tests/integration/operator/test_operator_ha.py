"""Two operator replicas over the Kubernetes API emulator and moto: exactly one acts.

Each replica has its own Kubernetes token (the emulator records who wrote what) and its own
counting proxy in front of moto (every AWS call it makes goes through it), so "the standby made
no AWS call and wrote no status" is counted, not assumed.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from framescale.local.faults import FaultProxy
from framescale.local.moto_server import MotoServer
from tests.integration.operator.conftest import AwsWorld, KubeClient, Pipeline, running_operator, wait_for
from tests.integration.operator.kube_emulator import EmulatorThread

pytestmark = [pytest.mark.integration, pytest.mark.operator, pytest.mark.slow]
LEASE = "framescale-operator-leader-ha"
LEASE_SECONDS = 4  # running_operator's FRAMESCALE_OPERATOR_LEADER_LEASE_DURATION_SECONDS
RETRY_SECONDS = 0.5


def _holder(kube: KubeClient) -> str:
    lease = kube.maybe_get(kube.lease_path("default", LEASE)) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _acting_writes(emulator: EmulatorThread, name: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """Writes of spec, status or Events by one replica (kopf's finalizer bookkeeping, metadata only,
    is not acting: both replicas' kopf may add the same finalizer)."""
    assert emulator.emulator is not None
    writes = emulator.emulator.writes_by_client.get(f"Bearer token-{name}", [])
    return [
        write
        for write in writes
        if (
            "/videopipelines/" in write[1]
            and (write[1].endswith(("/status", "/scale")) or {"spec", "status"} & set(write[2]))
        )
        or "/events" in write[1]
    ]


def test_two_replicas_one_acts_the_standby_makes_no_call_and_takes_over_when_the_leader_dies(
    kube_api: EmulatorThread, moto_server: MotoServer, kube: KubeClient, world: AwsWorld, tmp_path: Path
) -> None:
    proxies = {name: FaultProxy(moto_server.endpoint_url).start() for name in ("a", "b")}
    with contextlib.ExitStack() as stack:
        for proxy in proxies.values():
            stack.callback(proxy.stop)
        replicas: dict[str, Any] = {}
        for name, proxy in proxies.items():
            replicas[name] = stack.enter_context(
                running_operator(
                    kube_api.url,
                    {**moto_server.client_env, "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    tmp_path / name,
                    token=f"token-{name}",
                    extra_env={
                        "FRAMESCALE_OPERATOR_LEADER_LEASE_NAME": LEASE,
                        "FRAMESCALE_OPERATOR_LEADER_LEASE_NAMESPACE": "default",
                        "FRAMESCALE_OPERATOR_LEADER_IDENTITY": f"op-{name}",
                    },
                )
            )
        holder = wait_for(lambda: _holder(kube), "a leader")
        leader = holder.removeprefix("op-")
        standby = "b" if leader == "a" else "a"

        suffix = uuid.uuid4().hex[:8]
        pipeline = Pipeline(
            kube=kube,
            world=world,
            namespace=f"ha-{suffix}",
            name="detector",
            queue_url=world.queue(f"jobs-ha-{suffix}"),
            group=world.group(f"gpu-ha-{suffix}"),
        )
        pipeline.create(scaleInCooldownSeconds=1)
        doomed = pipeline.create(name="doomed")["metadata"]["name"]
        world.send(pipeline.queue_url, 4)
        wait_for(lambda: world.desired(pipeline.group) == 2, "the leader scales out to 2")
        wait_for(lambda: pipeline.condition("Ready").get("status") == "True", "Ready")
        kube.merge_patch(kube.vp_path(pipeline.namespace, pipeline.name, "scale"), {"spec": {"replicas": 3}})
        wait_for(lambda: world.desired(pipeline.group) == 3, "pinned to 3 by the leader")
        # Deleted while both run: the leader releases it and removes the finalizer; the standby's
        # deletion handler waits without writing and ends when the object is gone.
        wait_for(lambda: kube.vp(pipeline.namespace, doomed)["metadata"].get("finalizers"), "the finalizer")
        kube.delete(kube.vp_path(pipeline.namespace, doomed))
        wait_for(lambda: kube.maybe_get(kube.vp_path(pipeline.namespace, doomed)) is None, "the deleted pipeline gone")
        time.sleep(3)

        assert proxies[leader].requests > 0
        assert proxies[standby].requests == 0, "the standby called AWS"
        assert _acting_writes(kube_api, leader)
        assert _acting_writes(kube_api, standby) == [], "the standby wrote spec, status or Events"
        assert _holder(kube) == f"op-{leader}"

        # The leader dies without releasing: the standby takes over within the Lease duration.
        replicas[leader].process.kill()
        replicas[leader].process.wait(timeout=10)
        died = time.monotonic()
        wait_for(lambda: _holder(kube) == f"op-{standby}", "the standby holds the Lease", timeout=LEASE_SECONDS + 10)
        takeover = time.monotonic() - died
        assert takeover <= LEASE_SECONDS + 2 * RETRY_SECONDS + 1.5, f"took {takeover:.1f} s"
        kube.merge_patch(kube.vp_path(pipeline.namespace, pipeline.name, "scale"), {"spec": {"replicas": 1}})
        wait_for(lambda: world.desired(pipeline.group) == 1, "the new leader acts")
        assert proxies[standby].requests > 0
        print(f"takeover after the leader's death: {takeover:.2f} s (Lease {LEASE_SECONDS} s)")
