"""Faults over the real local stack: no job lost, none written twice.

Each test ends with ``assert_exactly_once``: every job has exactly one summary version in
a versioned bucket (the commit marker), all of its lines, and the queues are empty.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from framescale.local import stack as local_stack
from framescale.local.faults import FaultProxy, FaultRule
from framescale.local.videos import write_synthetic_video
from tests.chaos.conftest import assert_exactly_once, chaos_stack, summary_versions
from tests.conftest import worker_log
from tests.support import client, dead_letters, enqueue, failure_reason, read_summary, upload, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# Short visibility so a killed worker's message comes back within seconds.
FAST_RECOVERY = {"visibility_timeout_seconds": "10", "retry_delay_seconds": "1", "backoff_max_seconds": "1"}


def test_kill_9_mid_job_at_random_points(aws_env, start_worker, make_jobs) -> None:
    stack = chaos_stack("kill9")
    jobs = make_jobs(stack, 6, frames=60, sample_fps=10.0)
    worker = start_worker(stack, slots=2, **FAST_RECOVERY)
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 4 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 2.0))
        slots = worker.slot_pids()
        if slots:
            os.kill(rng.choice(slots), signal.SIGKILL)
            kills += 1
    assert kills >= 3, "could not kill slot processes mid-run"
    assert_exactly_once(stack, jobs)
    assert worker.alive()


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
        get_rule = proxy.add(FaultRule("GET", rf"^/{bucket_in}/", probability=0.5, status=503, code="SlowDown"))
        put_rule = proxy.add(FaultRule("PUT", rf"^/{bucket_out}/", probability=0.4, status=500, code="InternalError"))
        reset_rule = proxy.add(FaultRule("GET", rf"^/{bucket_in}/", reset=True, limit=2))
        # Only the worker goes through the proxy; the test reads results from moto directly.
        start_worker(stack, env_overrides={"AWS_ENDPOINT_URL": proxy.endpoint_url}, **FAST_RECOVERY)
        assert_exactly_once(stack, jobs)
        assert get_rule.failed > 0 and put_rule.failed > 0 and reset_rule.failed > 0
    finally:
        proxy.stop()


def test_same_message_twice_and_finished_job_resent(aws_env, start_worker, tmp_path: Path) -> None:
    stack = chaos_stack("dupes")
    video = write_synthetic_video(tmp_path / "d.mp4", frame_count=30)
    url = upload(stack, video.path)
    body = {"video": url, "job_id": "dup", "sample_fps": 10}
    enqueue(stack, body)
    enqueue(stack, body)  # the same job twice at once: two slots may race on it
    start_worker(stack, slots=2, **FAST_RECOVERY)
    assert_exactly_once(stack, {"dup": (video, 10.0)})
    first = read_summary(stack, "dup")
    # A finished job sent again: the work is not redone and the results are not rewritten.
    enqueue(stack, body)
    sqs = client("sqs")
    time.sleep(1)
    assert wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (0, 0), what="re-sent job handled")
    assert read_summary(stack, "dup") == first
    assert summary_versions(stack, "dup") == 1


def test_sigterm_with_enough_grace_finishes_the_job(aws_env, start_worker, make_jobs) -> None:
    stack = chaos_stack("grace")
    jobs = make_jobs(stack, 1, frames=300, fps=30, sample_fps=30.0, width=640, height=360)
    worker = start_worker(stack, model="person", shutdown_grace_seconds="120", **FAST_RECOVERY)
    sqs = client("sqs")
    wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url)[1] == 1, what="job in flight")
    time.sleep(1.0)
    worker.signal(signal.SIGTERM)
    assert worker.wait(150) == 0
    assert_exactly_once(stack, jobs)


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
    assert second.wait(60) == 0
    assert wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (1, 0), timeout=20, what="message back")
    start_worker(stack, model="person")
    assert_exactly_once(stack, jobs, timeout=240)


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
