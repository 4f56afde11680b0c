"""Faults over the real local stack: no job lost, none written twice.

Each test ends with ``assert_exactly_once``: in a versioned bucket every job has exactly
one version of its summary and of its detections (all of its lines), no staged object is
left, and the queues are empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from framescale import results
from framescale.local import stack as local_stack
from framescale.local.faults import FaultProxy, FaultRule
from framescale.local.videos import write_synthetic_video
from tests.chaos.conftest import assert_exactly_once, chaos_stack, in_flight_pids, versions
from tests.conftest import worker_log
from tests.support import client, dead_letters, enqueue, failure_reason, read_summary, upload, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# Short visibility so a killed worker's message comes back within seconds.
FAST_RECOVERY = {"visibility_timeout_seconds": "10", "retry_delay_seconds": "1", "backoff_max_seconds": "1"}


def seconds_until_handed_back(stack: local_stack.LocalStack) -> float:
    """Seconds until the one job's message is visible again."""
    started = time.monotonic()
    sqs = client("sqs")

    def back() -> bool:
        return local_stack.queue_depth(sqs, stack.queue_url) == (1, 0)

    wait_for(back, timeout=30, what="the message handed back", interval=0.1)
    return time.monotonic() - started


def test_kill_9_mid_job_at_random_points(aws_env, start_worker, make_jobs) -> None:
    stack = chaos_stack("kill9")
    jobs = make_jobs(stack, 6, frames=60, sample_fps=10.0)
    worker = start_worker(stack, slots=2, **FAST_RECOVERY)
    rng = random.Random(7)
    killed: list[int] = []
    deadline = time.monotonic() + 60
    while len(killed) < 4 and time.monotonic() < deadline:
        # Only a slot that holds a job: killing an idle one proves nothing.
        busy = sorted(in_flight_pids(worker) & set(worker.slot_pids()) - set(killed))
        if not busy:
            time.sleep(0.05)
            continue
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the download, decode, inference or commit
        pid = rng.choice(busy)
        with contextlib.suppress(ProcessLookupError):  # it finished and exited meanwhile
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    # A dead slot whose last message was never settled was killed with the job in hand.
    mid_job = [pid for pid in killed if pid in in_flight_pids(worker)]
    assert len(mid_job) >= 3, f"only {len(mid_job)} of {len(killed)} kills hit a job in flight"
    assert_exactly_once(stack, jobs)
    assert worker.alive()


def test_a_job_longer_than_the_visibility_timeout_runs_once_while_another_worker_polls(
    aws_env, moto_server, start_worker, make_jobs
) -> None:
    stack = chaos_stack("longjob")
    jobs = make_jobs(stack, 1, frames=20, sample_fps=10.0)
    proxy = FaultProxy(moto_server.endpoint_url).start()
    try:
        # The first worker's download takes 15 s, one and a half visibility timeouts: only
        # its heartbeat keeps the message from the second worker.
        slow = proxy.add(FaultRule("GET", rf"^/{stack.input_bucket}/", delay=15.0))
        first = start_worker(
            stack, env_overrides={"AWS_ENDPOINT_URL": proxy.endpoint_url}, visibility_timeout_seconds="10"
        )
        wait_for(lambda: slow.failed >= 1, timeout=60, what="the slow download under way")
        second = start_worker(stack, visibility_timeout_seconds="10")
        assert_exactly_once(stack, jobs, timeout=90)
    finally:
        proxy.stop()
    started = [r for w in (first, second) for r in worker_log(w) if r.get("message") == "job started"]
    assert [r["job_id"] for r in started] == ["job-0"], "the job ran more than once"
    # The message was received once, by the first worker, and settled on that receive: it never
    # became visible to the second one, which was polling all the while.
    received = [(w, r) for w in (first, second) for r in worker_log(w) if r.get("message") == "message received"]
    assert [(w, r["receive_count"]) for w, r in received] == [(first, 1)]
    (settled,) = [r for r in worker_log(first) if r.get("message") == "message settled"]
    assert settled["action"] == "deleted" and settled["receive_count"] == 1
    (polling,) = [r for r in worker_log(second) if r.get("message") == "worker started"]
    assert polling["time"] < settled["time"], "the second worker was not polling while the job ran"


def test_model_server_stopped_mid_job_and_restarted(aws_env, start_worker, make_jobs, own_model_server) -> None:
    stack = chaos_stack("modelsrv")
    # The person model is slow enough here (~30 ms a frame) that each job takes seconds.
    jobs = make_jobs(stack, 3, frames=120, sample_fps=10.0)
    worker = start_worker(
        stack, model="person", model_server=own_model_server.grpc_target, transient_retries="2", **FAST_RECOVERY
    )
    sqs = client("sqs")
    wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url)[1] >= 1, what="first job under way")
    time.sleep(1.0)
    own_model_server.stop()
    time.sleep(3)
    own_model_server.start()
    assert_exactly_once(stack, jobs, timeout=240)
    log = worker_log(worker)
    retried = {
        "transient failure; message will be retried",
        "transient failure, retrying",
        "Predict failed, retrying batch",
    }
    assert any(record.get("message") in retried for record in log), "the outage was never noticed"
    assert worker.alive()


def test_s3_errors_on_get_and_put(aws_env, moto_server, start_worker, make_jobs) -> None:
    stack = chaos_stack("s3faults")
    jobs = make_jobs(stack, 5, frames=20, sample_fps=5.0)
    proxy = FaultProxy(moto_server.endpoint_url, seed=3).start()
    try:
        bucket_in, bucket_out = stack.input_bucket, stack.output_bucket
        # The commit record lands but its answer is lost: the retried PUT then meets the
        # worker's own record (412) and must not take it for another attempt's.
        lost_rule = proxy.add(FaultRule("PUT", r"/_staging/commit\.json$", lose_answer=True, limit=2))
        head_rule = proxy.add(FaultRule("HEAD", rf"^/{bucket_in}/", probability=0.5, status=503, code="SlowDown"))
        get_rule = proxy.add(FaultRule("GET", rf"^/{bucket_in}/", probability=0.5, status=503, code="SlowDown"))
        put_rule = proxy.add(FaultRule("PUT", rf"^/{bucket_out}/", probability=0.4, status=500, code="InternalError"))
        reset_rule = proxy.add(FaultRule("GET", rf"^/{bucket_in}/", reset=True, limit=2))
        # Only the worker goes through the proxy; the test reads results from moto directly.
        start_worker(stack, env_overrides={"AWS_ENDPOINT_URL": proxy.endpoint_url}, **FAST_RECOVERY)
        assert_exactly_once(stack, jobs)
        rules = (lost_rule, head_rule, get_rule, put_rule, reset_rule)
        assert all(rule.failed > 0 for rule in rules), [rule.failed for rule in rules]
    finally:
        proxy.stop()


def test_same_message_twice_and_finished_job_resent(aws_env, start_worker, tmp_path: Path) -> None:
    stack = chaos_stack("dupes")
    video = write_synthetic_video(tmp_path / "d.mp4", frame_count=30)
    url = upload(stack, video.path)
    body = {"video": url, "job_id": "dup", "sample_fps": 10}
    enqueue(stack, body)
    enqueue(stack, body)  # the same job twice at once: two slots may race on it
    worker = start_worker(stack, slots=2, **FAST_RECOVERY)
    assert_exactly_once(stack, {"dup": (video, 10.0)})
    first = read_summary(stack, "dup")
    seen = len(worker_log(worker))
    # A finished job sent again: the work is not redone and the results are not rewritten.
    enqueue(stack, body)

    def done_since() -> list[dict]:
        return [r for r in worker_log(worker)[seen:] if r.get("stage") == "done"]

    (again,) = wait_for(done_since, what="re-sent job handled")
    assert again["message"] == "job skipped"
    assert "decode_and_infer" not in again["timings"], "the finished job was decoded again"
    sqs = client("sqs")
    assert wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (0, 0), what="re-sent job deleted")
    assert read_summary(stack, "dup") == first
    assert versions(stack, "dup") == 1
    assert versions(stack, "dup", results.DETECTIONS_FILE) == 1, "detections.jsonl was rewritten"


def test_a_failed_delete_after_the_commit_costs_neither_the_slot_nor_a_second_run(
    aws_env, moto_server, start_worker, make_jobs
) -> None:
    stack = chaos_stack("nodelete")
    jobs = make_jobs(stack, 1, frames=20, sample_fps=10.0)
    proxy = FaultProxy(moto_server.endpoint_url).start()
    try:
        # Six failures outlast botocore's own tries (1 + 5 retries) of the first DeleteMessage.
        deletes = proxy.add(
            FaultRule("POST", "^/", target="AmazonSQS.DeleteMessage", status=500, code="InternalError", limit=6)
        )
        worker = start_worker(stack, env_overrides={"AWS_ENDPOINT_URL": proxy.endpoint_url}, **FAST_RECOVERY)
        slots = wait_for(worker.slot_pids, what="the slot process")
        assert_exactly_once(stack, jobs)  # the message came back after its visibility timeout
    finally:
        proxy.stop()
    assert deletes.failed == 6
    log = worker_log(worker)
    assert any(r["message"].startswith("could not delete the message") for r in log)
    assert [r["message"] for r in log if r.get("stage") == "done"] == ["job succeeded", "job skipped"]
    assert worker.slot_pids() == slots, "the slot died"


@pytest.mark.parametrize("how", ["sigterm-to-the-supervisor", "ctrl-c-to-the-process-group"])
def test_a_stop_request_with_enough_grace_finishes_the_job(aws_env, start_worker, make_jobs, how: str) -> None:
    stack = chaos_stack("grace")
    jobs = make_jobs(stack, 1, frames=300, fps=30, sample_fps=30.0, width=640, height=360)
    worker = start_worker(stack, model="person", shutdown_grace_seconds="120", **FAST_RECOVERY)
    sqs = client("sqs")
    wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url)[1] == 1, what="job in flight")
    time.sleep(1.0)
    if how == "sigterm-to-the-supervisor":
        worker.signal(signal.SIGTERM)  # what Kubernetes sends the container's first process
    else:
        # A terminal's Ctrl-C reaches every process of the group, slots included: that is one
        # request to stop (with the grace), not two (hand back at once).
        os.killpg(worker.pid, signal.SIGINT)
    assert worker.wait(150) == 0
    assert_exactly_once(stack, jobs)
    # Finished in the grace period: settled by deleting it, on its first receive, not handed back.
    settled = [r for r in worker_log(worker) if r.get("message") == "message settled"]
    assert [(r["action"], r["disposition"], r["receive_count"]) for r in settled] == [("deleted", "deleted", 1)]


def test_sigterm_without_enough_grace_hands_the_job_back(aws_env, start_worker, make_jobs) -> None:
    stack = chaos_stack("nograce")
    jobs = make_jobs(stack, 1, frames=300, fps=30, sample_fps=30.0, width=640, height=360)
    worker = start_worker(stack, model="person", shutdown_grace_seconds="1", visibility_timeout_seconds="300")
    sqs = client("sqs")
    wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url)[1] == 1, what="job in flight")
    time.sleep(1.0)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    # Handed back at once (visibility 0), not after the 300 s visibility timeout.
    assert wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (1, 0), timeout=20, what="message back")
    assert time.monotonic() - started < 30
    assert read_summary(stack, "job-0") is None
    # A second SIGTERM case: hand back at once even with a long grace.
    second = start_worker(stack, model="person", shutdown_grace_seconds="600", visibility_timeout_seconds="300")
    wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url)[1] == 1, what="job in flight again")
    time.sleep(1.0)
    second.signal(signal.SIGTERM)
    time.sleep(0.5)
    second.signal(signal.SIGTERM)
    assert seconds_until_handed_back(stack) < 5, "the second SIGTERM did not hand the job back at once"
    assert second.wait(20) == 0
    start_worker(stack, model="person")
    assert_exactly_once(stack, jobs, timeout=240)


def test_a_slot_stuck_past_the_second_signal_is_killed_and_its_message_handed_back(
    aws_env, moto_server, start_worker, make_jobs
) -> None:
    stack = chaos_stack("stuck")
    jobs = make_jobs(stack, 1, frames=20, sample_fps=10.0)
    proxy = FaultProxy(moto_server.endpoint_url).start()
    try:
        # The download hangs before its first byte, where no cancel can reach it.
        stuck = proxy.add(FaultRule("GET", rf"^/{stack.input_bucket}/", delay=120.0))
        worker = start_worker(
            stack,
            env_overrides={"AWS_ENDPOINT_URL": proxy.endpoint_url},
            shutdown_grace_seconds="600",
            visibility_timeout_seconds="300",
        )
        wait_for(lambda: stuck.failed >= 1, timeout=60, what="the download hanging")
        worker.signal(signal.SIGTERM)
        time.sleep(0.5)
        worker.signal(signal.SIGTERM)
        # Not the 300 s visibility timeout: the supervisor hands it back once it killed the slot.
        assert seconds_until_handed_back(stack) < 10
        assert worker.wait(20) == 0
    finally:
        proxy.stop()
    assert any(r.get("message") == "message of a killed slot handed back" for r in worker_log(worker))
    start_worker(stack, **FAST_RECOVERY)
    assert_exactly_once(stack, jobs)


def test_burst_of_200_jobs_across_worker_processes(aws_env, start_worker, tmp_path: Path) -> None:
    stack = chaos_stack("burst")
    video = write_synthetic_video(tmp_path / "tiny.mp4", width=96, height=72, fps=5, frame_count=5)
    url = upload(stack, video.path)
    sqs = client("sqs")
    jobs = {}
    for batch in range(20):
        entries = []
        for number in range(10):
            job_id = f"burst-{batch * 10 + number:03d}"
            jobs[job_id] = (video, 5.0)
            entries.append(
                {"Id": str(number), "MessageBody": json.dumps({"video": url, "job_id": job_id, "sample_fps": 5})}
            )
        sqs.send_message_batch(QueueUrl=stack.queue_url, Entries=entries)
    for _ in range(3):
        start_worker(stack, **FAST_RECOVERY)
    assert_exactly_once(stack, jobs, timeout=300)


def test_poison_message_that_kills_its_worker_ends_in_the_dead_letter_queue(aws_env, start_worker, make_jobs) -> None:
    stack = chaos_stack("poison", max_receive_count=2)
    make_jobs(stack, 1, frames=400, sample_fps=10.0, width=640, height=360)
    worker = start_worker(stack, model="person", **FAST_RECOVERY)
    sqs = client("sqs")
    # Each time the message is in flight, its slot process dies: the message is poison.
    kills = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and local_stack.queue_depth(sqs, stack.dead_letter_queue_url)[0] == 0:
        if local_stack.queue_depth(sqs, stack.queue_url)[1] == 1 and worker.slot_pids():
            os.kill(worker.slot_pids()[0], signal.SIGKILL)
            kills += 1
            time.sleep(2)
        time.sleep(0.2)
    assert kills >= 2
    letters = wait_for(lambda: dead_letters(stack), what="poison message in the dead-letter queue")
    assert json.loads(letters[0]["Body"])["job_id"] == "job-0"
    assert failure_reason(letters[0]) == ""  # moved by SQS's redrive policy, not by the worker
    assert read_summary(stack, "job-0") is None
    assert worker.alive()
