"""Fake nodes (framescale.local.fake_node) over the real local stack: the Kubernetes API emulator
over HTTP and the moto server. They run the worker's own Lease keeper and job-start gate; here the
test plays the operator with the busy_lease patch builders."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from framescale import busy_lease
from framescale.busy_lease import DrainMode, WorkerState
from framescale.local import stack as local_stack
from framescale.local.fake_node import FakeNode, FakeNodeConfig, write_kubeconfig
from framescale.worker.adapters import SqsQueue
from framescale.worker.gate import JobGate
from framescale.worker.lease import renewal_margin
from framescale.worker.loop import SlotWorker
from framescale.worker.settings import WorkerSettings
from tests.integration.operator.kube_emulator import EmulatorThread
from tests.support import client, unique, wait_for

pytestmark = [pytest.mark.integration]

NS = "video"
OWNER = "video/detect"


def lease_url(server: str, node: str) -> str:
    return f"{server}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{busy_lease.lease_name(node)}"


def read_record(server: str, node: str) -> busy_lease.LeaseRecord | None:
    try:
        with urllib.request.urlopen(lease_url(server, node), timeout=5) as response:
            return busy_lease.parse_lease(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def operator_patch(server: str, node: str, body: dict[str, Any]) -> None:
    """What the operator writes on a node's Lease: a merge patch of its own keys."""
    request = urllib.request.Request(
        lease_url(server, node),
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Content-Type": "application/merge-patch+json"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def admit_when_seen(server: str, node: str) -> None:
    wait_for(lambda: read_record(server, node), timeout=30, what=f"{node}'s Lease")
    operator_patch(server, node, busy_lease.admit_patch(OWNER))


def send(queue_url: str, count: int, prefix: str = "job") -> None:
    sqs = client("sqs")
    for n in range(count):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"job": f"{prefix}-{n}"}))


def queue_counts(queue_url: str) -> tuple[int, int]:
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def done(events: list[dict[str, Any]]) -> list[str]:
    return [e["message_id"] for e in events if e["event"] == "job_ended" and e["outcome"] == "done"]


def config(tmp_path: Path, server: str, queue_url: str, node: str, **changes: Any) -> FakeNodeConfig:
    values: dict[str, Any] = {
        "node_name": node,
        "queue_url": queue_url,
        "namespace": NS,
        "pipeline": "detect",
        "kubeconfig": str(write_kubeconfig(tmp_path / f"kubeconfig-{node}", server)),
        "record_path": tmp_path / f"{node}.jsonl",
        "job_seconds": (0.1, 0.3),
        "lease_duration_seconds": 10.0,
        "lease_poll_seconds": 0.2,
        "wait_seconds": 1,
        "seed": 1,
    }
    values.update(changes)
    return FakeNodeConfig(**values)


def test_a_fake_node_waits_for_admission_works_drains_and_reopens(
    aws_env: dict[str, str], tmp_path: Path, kube_api: EmulatorThread
) -> None:
    stack = local_stack.provision(unique("fake"))
    node_name = unique("ip-10-0-0")
    send(stack.queue_url, 3, "early")
    node = FakeNode(config(tmp_path, kube_api.url, stack.queue_url, node_name)).start()
    try:
        lease = wait_for(lambda: read_record(kube_api.url, node_name), timeout=30, what="the Lease")
        assert lease.state == WorkerState.STARTING
        time.sleep(1.5)
        assert node.events == [] and queue_counts(stack.queue_url) == (3, 0), "a job before admission"
        operator_patch(kube_api.url, node_name, busy_lease.admit_patch(OWNER))
        wait_for(lambda: len(done(node.events)) == 3, timeout=30, what="the 3 jobs")

        token = busy_lease.new_drain_token()
        operator_patch(kube_api.url, node_name, busy_lease.drain_request_patch(token, OWNER))
        asked = time.monotonic()
        drained = wait_for(
            lambda: (r := read_record(kube_api.url, node_name)) is not None and r.drained_for(token),
            timeout=10,
            what="the drained reply",
            interval=0.05,
        )
        assert drained and time.monotonic() - asked < 2.0, "a drain is answered within about the poll period"
        send(stack.queue_url, 2, "late")
        time.sleep(2.0)
        assert len(done(node.events)) == 3, "a drained node took a job"
        assert queue_counts(stack.queue_url)[0] == 2
        operator_patch(kube_api.url, node_name, busy_lease.withdraw_drain_patch())
        wait_for(lambda: len(done(node.events)) == 5, timeout=30, what="the jobs after withdrawal")
    finally:
        node.stop()
    assert Counter(done(node.events)).most_common(1)[0][1] == 1, "a message done twice"
    final = read_record(kube_api.url, node_name)
    assert final is not None and final.state == WorkerState.STOPPING and final.active_jobs == 0
    assert kube_api.server_errors() == []


def test_a_node_whose_clock_is_120_s_behind_is_admitted_works_and_drains_the_same(
    aws_env: dict[str, str], tmp_path: Path, kube_api: EmulatorThread
) -> None:
    stack = local_stack.provision(unique("fake"))
    node_name = unique("ip-10-0-6")
    node = FakeNode(config(tmp_path, kube_api.url, stack.queue_url, node_name, wall_skew_seconds=-120.0)).start()
    try:
        admit_when_seen(kube_api.url, node_name)
        send(stack.queue_url, 2)
        wait_for(lambda: len(done(node.events)) == 2, timeout=30, what="the jobs")
        lease = read_record(kube_api.url, node_name)
        renewed = busy_lease.parse_time(lease.renew_time) if lease else None
        assert renewed is not None and datetime.now(UTC) - renewed > timedelta(seconds=100), "the clock is not off"
        token = busy_lease.new_drain_token()
        operator_patch(kube_api.url, node_name, busy_lease.drain_request_patch(token, OWNER))
        wait_for(lambda: read_record(kube_api.url, node_name).drained_for(token), timeout=5, what="drained")  # type: ignore[union-attr]
    finally:
        node.stop()


def test_finish_drain_waits_for_the_job_in_hand(
    aws_env: dict[str, str], tmp_path: Path, kube_api: EmulatorThread
) -> None:
    stack = local_stack.provision(unique("fake"))
    node_name = unique("ip-10-0-1")
    node = FakeNode(config(tmp_path, kube_api.url, stack.queue_url, node_name, job_seconds=(3.0, 3.0))).start()
    try:
        admit_when_seen(kube_api.url, node_name)
        send(stack.queue_url, 1)
        wait_for(lambda: node.jobs_in_hand() == 1, timeout=30, what="a job in hand")
        token = busy_lease.new_drain_token()
        operator_patch(kube_api.url, node_name, busy_lease.drain_request_patch(token, OWNER, DrainMode.FINISH))
        draining = wait_for(
            lambda: (r := read_record(kube_api.url, node_name)) is not None and r.state == WorkerState.DRAINING and r,
            timeout=5,
            what="the Lease to say draining",
        )
        assert draining.active_jobs == 1 and draining.drain_reply is None
        wait_for(
            lambda: (r := read_record(kube_api.url, node_name)) is not None and r.drained_for(token),
            timeout=15,
            what="drained once the job is done",
        )
        assert len(done(node.events)) == 1, "drained before the job was done"
    finally:
        node.stop()


def test_a_node_that_cannot_renew_its_lease_takes_no_job_after_it_could_lapse(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The API server goes away (here: the emulator stops): the gate shuts by itself at the last
    renewal + duration - margin, and messages sent after that stay in the queue."""
    stack = local_stack.provision(unique("fake"))
    emulator = EmulatorThread().start()
    node_name = unique("ip-10-0-2")
    duration = 6.0
    node = FakeNode(config(tmp_path, emulator.url, stack.queue_url, node_name, lease_duration_seconds=duration)).start()
    try:
        admit_when_seen(emulator.url, node_name)
        wait_for(lambda: node.gate.is_open, timeout=10, what="the gate to open")
        emulator.stop()
        renewed = node.keeper.renewed_at
        assert renewed is not None
        lapse = renewed + duration - renewal_margin(duration)
        wait_for(lambda: time.monotonic() > lapse + 0.2, timeout=duration + 5, what="the lapse moment")
        # The keeper may have renewed once more just before the emulator stopped.
        last = node.keeper.renewed_at
        assert last is not None
        wait_for(lambda: time.monotonic() > last + duration, timeout=duration + 5, what="the last lapse")
        assert not node.gate.is_open and node.keeper.renew_failures > 0
        send(stack.queue_url, 2)
        time.sleep(2.5)
        assert [e for e in node.events if e["event"] == "job_started"] == [], "a job started without a live Lease"
    finally:
        node.kill()


def test_a_fake_node_process_sigtermed_mid_job_hands_back_and_another_completes_it_once(
    aws_env: dict[str, str], tmp_path: Path, kube_api: EmulatorThread
) -> None:
    stack = local_stack.provision(unique("fake"))
    first, second = unique("ip-10-0-3"), unique("ip-10-0-4")
    record = tmp_path / "first.jsonl"
    command = [
        sys.executable,
        "-m",
        "framescale.local.fake_node",
        "--node", first,
        "--queue-url", stack.queue_url,
        "--namespace", NS,
        "--kubeconfig", str(write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)),
        "--record", str(record),
        "--job-seconds", "30:30",
        "--lease-duration", "10",
        "--lease-poll", "0.2",
    ]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, **aws_env})
    node = None
    try:
        admit_when_seen(kube_api.url, first)
        send(stack.queue_url, 1)

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

        started = wait_for(
            lambda: [e for e in lines() if e["event"] == "job_started"], timeout=30, what="the job to start"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        ended = [e for e in lines() if e["event"] == "job_ended"]
        assert [(e["message_id"], e["outcome"]) for e in ended] == [(started[0]["message_id"], "handed_back")]
        assert read_record(kube_api.url, first).state == WorkerState.STOPPING  # type: ignore[union-attr]
        node = FakeNode(config(tmp_path, kube_api.url, stack.queue_url, second)).start()
        admit_when_seen(kube_api.url, second)
        wait_for(lambda: done(node.events), timeout=20, what="the second node to complete the job")
        assert done(node.events) == [started[0]["message_id"]]
        time.sleep(1.5)
        assert queue_counts(stack.queue_url) == (0, 0) and len(done(node.events)) == 1, "done more than once"
    finally:
        if process.poll() is None:
            process.kill()
        if node is not None:
            node.stop()


def test_a_slot_whose_long_poll_returns_after_the_fence_hands_the_message_back_at_once(aws_env) -> None:
    """The worker's own slot loop (SlotWorker) over SQS in moto: the gate shuts while a long poll
    is under way; the message it then returns is handed back with visibility 0, no job started."""

    stack = local_stack.provision(unique("fence"), visibility_timeout=300)
    gate = JobGate.for_threads(1)
    gate.open()
    events: list[dict[str, Any]] = []
    queue = SqsQueue(client("sqs"), stack.queue_url)
    worker = SlotWorker(
        WorkerSettings(queue_url=stack.queue_url, wait_time_seconds=5, visibility_timeout_seconds=300),
        queue=queue,
        dead_letters=queue,
        store=None,  # type: ignore[arg-type]
        publisher=None,  # type: ignore[arg-type]
        model=SimpleNamespace(ready=lambda: True),  # type: ignore[arg-type]
        events=events.append,
        gate=gate.slot(0),
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: worker.receiving, timeout=10, what="the long poll", interval=0.01)
        assert gate.close() == 0  # the fence, as the keeper closes it for a drain request
        send(stack.queue_url, 1)
        wait_for(lambda: any(e["type"] == "fenced_hand_back" for e in events), timeout=15, what="the hand-back")
        handed_back = time.monotonic()
        visible = wait_for(lambda: queue_counts(stack.queue_url) == (1, 0), timeout=5, what="the message visible again")
        assert visible and time.monotonic() - handed_back < 5, "not handed back at once (visibility 300 s)"
        assert [e["type"] for e in events] == ["fenced_hand_back", "job_finished"], "a job started"
        assert gate.jobs_in_hand() == 0
    finally:
        worker.stopping.set()
        thread.join(10)


def test_a_fake_node_restarted_under_a_standing_request_stays_drained_until_withdrawn(
    aws_env: dict[str, str], tmp_path: Path, kube_api: EmulatorThread
) -> None:
    stack = local_stack.provision(unique("fake"))
    node_name = unique("ip-10-0-5")
    node = FakeNode(config(tmp_path, kube_api.url, stack.queue_url, node_name)).start()
    admit_when_seen(kube_api.url, node_name)
    token = busy_lease.new_drain_token()
    operator_patch(kube_api.url, node_name, busy_lease.drain_request_patch(token, OWNER))
    wait_for(lambda: read_record(kube_api.url, node_name).drained_for(token), timeout=5, what="drained")  # type: ignore[union-attr]
    node.kill()  # the worker dies; its Lease stays, request and all
    send(stack.queue_url, 2)
    restarted = FakeNode(config(tmp_path, kube_api.url, stack.queue_url, node_name, holder="restarted")).start()
    try:
        wait_for(
            lambda: (r := read_record(kube_api.url, node_name)) is not None and r.holder == "restarted",
            timeout=10,
            what="the restarted node's renewal",
        )
        time.sleep(2.0)
        assert [e["event"] for e in restarted.events] == ["drain_answered"], "a job under a standing request"
        assert read_record(kube_api.url, node_name).drained_for(token)  # type: ignore[union-attr]
        operator_patch(kube_api.url, node_name, busy_lease.withdraw_drain_patch())
        wait_for(lambda: len(done(restarted.events)) == 2, timeout=30, what="the jobs after withdrawal")
    finally:
        restarted.stop()


def race_drains_over_the_api(
    tmp_path: Path, server: str, *, requests: int, nodes: int = 2, seed: int = 3
) -> dict[str, Any]:
    """Fake nodes (2 slots each) take short jobs from a busy queue while an "operator" asks them to
    drain (if-idle) at random moments over the API; after each "drained" it holds the node as if
    terminating it (0-0.3 s), then withdraws. Violations: a job in hand on a node at any moment
    between the test seeing "drained" and its withdrawal. Every message must be done exactly once."""
    stack = local_stack.provision(unique("race"), visibility_timeout=60)
    names_ = [unique(f"ip-10-7-{n}") for n in range(nodes)]
    fakes = [
        FakeNode(
            config(
                tmp_path, server, stack.queue_url, name, slots=2, job_seconds=(0.02, 0.4), lease_poll_seconds=0.05,
                seed=seed + n,
            )
        ).start()
        for n, name in enumerate(names_)
    ]  # fmt: skip
    rng = random.Random(seed)
    sent = requests * 2
    send(stack.queue_url, sent, "race")
    for name in names_:
        admit_when_seen(server, name)
    windows: list[tuple[str, float, float]] = []  # (node, drained seen, withdrawn)
    latencies: list[float] = []
    verdicts: Counter[str] = Counter()
    try:
        for _ in range(requests):
            time.sleep(rng.uniform(0, 0.1))
            index = rng.randrange(nodes)
            name = names_[index]
            token = busy_lease.new_drain_token()
            asked = time.monotonic()
            operator_patch(server, name, busy_lease.drain_request_patch(token, OWNER))

            def answered(name: str = name, token: str = token) -> busy_lease.LeaseRecord | None:
                current = read_record(server, name)
                ok = current is not None and current.drain_reply is not None and current.drain_reply.token == token
                return current if ok else None

            current = wait_for(answered, timeout=10, what="a drain answer", interval=0.01)
            seen = time.monotonic()
            latencies.append(seen - asked)
            assert current.drain_reply is not None
            verdicts[current.drain_reply.verdict.value] += 1
            if current.drained_for(token):
                time.sleep(rng.uniform(0, 0.3))  # the operator terminating the instance
                windows.append((fakes[index].config.node_name, seen, time.monotonic()))
            operator_patch(server, name, busy_lease.withdraw_drain_patch())
        for name in names_:  # let them finish the queue
            operator_patch(server, name, busy_lease.withdraw_drain_patch())
        wait_for(lambda: sum(len(done(f.events)) for f in fakes) >= sent, timeout=120, what="every message done")
    finally:
        for fake in fakes:
            fake.stop()
    jobs = [e for f in fakes for e in f.events if e["event"] == "job_ended"]
    violations = [
        (job["message_id"], node)
        for node, start, end in windows
        for job in jobs
        if job["node"] == node and job["started_monotonic"] <= end and job["ended_monotonic"] >= start
    ]
    done_ids = [job["message_id"] for job in jobs if job["outcome"] == "done"]
    twice = {m for m, n in Counter(done_ids).items() if n > 1}
    # moto's ReceiveMessage checks a message's visibility and marks it received without a lock,
    # so two concurrent long polls now and then both get one message: two jobs of it in hand at
    # once, on two slots. That is moto's, not the handshake's: a message done again *after* it
    # was done (a delete lost, a hand-back of a finished job) is what must never happen.
    sequential = {
        message_id
        for message_id in twice
        if not _overlapping([job for job in jobs if job["message_id"] == message_id and job["outcome"] == "done"])
    }
    latencies.sort()
    return {
        "requests": requests,
        "drained": verdicts["drained"],
        "refused": verdicts["refused"],
        "jobs": len(jobs),
        "violations": len(violations),
        "done": len(done_ids),
        "distinct_done": len(set(done_ids)),
        "done_twice": len(twice),  # overlapping deliveries by moto's receive race (see above)
        "done_again": len(sequential),
        "twice": [e for f in fakes for e in f.events if e.get("message_id") in twice],
        "sent": sent,
        "left": queue_counts(stack.queue_url),
        "answer_median_s": round(latencies[len(latencies) // 2], 3),
        "answer_p95_s": round(latencies[int(len(latencies) * 0.95)], 3),
    }


def _overlapping(jobs: list[dict[str, Any]]) -> bool:
    """Every pair of these jobs was in hand at the same moment."""
    return all(
        a["started_monotonic"] <= b["ended_monotonic"] and b["started_monotonic"] <= a["ended_monotonic"]
        for n, a in enumerate(jobs)
        for b in jobs[n + 1 :]
    )


def check_race(result: dict[str, Any]) -> None:
    assert result["drained"] > 10 and result["refused"] > 10, f"the race did not exercise both answers: {result}"
    assert result["violations"] == 0, result
    assert (result["distinct_done"], result["done_again"], result["left"]) == (
        result["sent"],
        0,
        (0, 0),
    ), result
    assert result["answer_p95_s"] < 2.0, f"drains answered too slowly: {result}"


def test_race_drains_over_the_api_never_find_a_job_in_hand(
    aws_env: dict[str, str], tmp_path: Path, kube_api: EmulatorThread
) -> None:
    result = race_drains_over_the_api(tmp_path, kube_api.url, requests=120)
    print("race over the API:", result)
    check_race(result)


@pytest.mark.soak
def test_soak_race_drains_over_the_api(aws_env: dict[str, str], tmp_path: Path, kube_api: EmulatorThread) -> None:
    result = race_drains_over_the_api(tmp_path, kube_api.url, requests=500, nodes=3, seed=11)
    print("race over the API (soak):", result)
    check_race(result)
