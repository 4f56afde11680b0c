"""The worker's runtime promises over the real local stack: heartbeat, limits, health, metrics, logs."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from framescale.local import stack as local_stack
from framescale.local.processes import free_port
from framescale.local.videos import write_synthetic_video
from framescale.worker.adapters import SqsQueue
from framescale.worker.heartbeat import VisibilityHeartbeat
from tests.conftest import worker_log
from tests.support import client, dead_letters, enqueue, failure_reason, read_summary, unique, upload, wait_for

pytestmark = [pytest.mark.integration]


def test_heartbeat_keeps_the_message_invisible_and_stops_with_the_job(aws_env) -> None:
    sqs = client("sqs")
    queue_url = sqs.create_queue(QueueName=unique("hb"))["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="{}")
    (message,) = sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=2, WaitTimeSeconds=1)["Messages"]
    with VisibilityHeartbeat(SqsQueue(sqs, queue_url), message["ReceiptHandle"], extension=2, period=0.5) as heartbeat:
        time.sleep(4.5)  # more than twice the visibility timeout
        assert sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0).get("Messages", []) == []
    assert heartbeat.beats >= 5
    # The heartbeat stopped with the job: the message comes back after its timeout.
    back = wait_for(
        lambda: sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages"),
        timeout=10,
        what="message to reappear",
    )
    assert back[0]["MessageId"] == message["MessageId"]


def test_a_beat_on_a_message_no_longer_held_is_logged_and_ends_the_heartbeat(
    aws_env, caplog: pytest.LogCaptureFixture
) -> None:
    sqs = client("sqs")
    queue_url = sqs.create_queue(QueueName=unique("hb-lost"))["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="{}")
    (message,) = sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=30, WaitTimeSeconds=1)["Messages"]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    with (
        caplog.at_level(logging.ERROR, logger="framescale.worker.heartbeat"),
        VisibilityHeartbeat(SqsQueue(sqs, queue_url), message["ReceiptHandle"], extension=30, period=0.2) as heartbeat,
    ):
        time.sleep(1.5)
    assert heartbeat.lost and heartbeat.failures == 1, "it kept beating on a receipt handle that cannot work"
    assert any("no longer held by this worker" in record.getMessage() for record in caplog.records)


def raw_mjpeg(path: Path, frames: int) -> Path:
    """Concatenated JPEGs: FFmpeg reads them at 25 fps, and the stream declares no length."""
    with path.open("wb") as out:
        for number in range(frames):
            out.write(cv2.imencode(".jpg", np.full((48, 64, 3), number % 250, np.uint8))[1].tobytes())
    return path


def truncated_avi(folder: Path) -> Path:
    """Half of an AVI: its header still declares 60 frames."""
    whole = write_synthetic_video(folder / "whole.avi", width=160, height=120, fps=30, frame_count=60).path
    cut = folder / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return cut


@pytest.mark.slow
def test_limits_and_damaged_videos_end_in_the_dead_letter_queue(aws_env, tmp_path: Path, start_worker) -> None:
    stack = local_stack.provision(unique("limits"))
    long_video = write_synthetic_video(tmp_path / "long.mp4", fps=10, frame_count=80)  # 8 s
    big_frame = write_synthetic_video(tmp_path / "big.mp4", width=640, height=480, frame_count=5)
    heavy = tmp_path / "heavy.avi"
    write_synthetic_video(heavy, width=320, height=240, frame_count=60)
    undeclared = raw_mjpeg(tmp_path / "undeclared.mjpeg", 200)  # 8 s: found out while decoding
    cases = {
        "too-long": (long_video.path, "FRAMESCALE_WORKER_MAX_DURATION_SECONDS"),
        "too-long-undeclared": (undeclared, "FRAMESCALE_WORKER_MAX_DURATION_SECONDS"),
        "too-big-frame": (big_frame.path, "FRAMESCALE_WORKER_MAX_PIXELS"),
        "too-many-bytes": (heavy, "FRAMESCALE_WORKER_MAX_OBJECT_BYTES"),
        "truncated": (truncated_avi(tmp_path), "truncated or corrupt: decoding stopped after"),
    }
    for job_id, (path, _) in cases.items():
        enqueue(stack, {"video": upload(stack, path, f"in/{job_id}{path.suffix}"), "job_id": job_id})
    limit_bytes = max(path.stat().st_size for job_id, (path, _) in cases.items() if job_id != "too-many-bytes") + 1
    assert heavy.stat().st_size > limit_bytes, "the heavy video must exceed the byte limit"
    start_worker(stack, max_duration_seconds="5", max_pixels=str(320 * 240), max_object_bytes=str(limit_bytes))
    letters: list[dict] = []
    wait_for(lambda: letters.extend(dead_letters(stack)) or len(letters) >= len(cases), what="limit failures")
    reasons = {json.loads(m["Body"])["job_id"]: failure_reason(m) for m in letters}
    for job_id, (_, variable) in cases.items():
        assert variable in reasons[job_id], reasons
        assert read_summary(stack, job_id) is None


@pytest.mark.slow
def test_health_readiness_metrics_and_structured_logs(aws_env, tmp_path: Path, start_worker) -> None:
    stack = local_stack.provision(unique("health"))
    video = write_synthetic_video(tmp_path / "m.mp4", fps=10, frame_count=30)
    port = free_port()
    worker = start_worker(stack, health_port=str(port))
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    assert wait_for(lambda: get("/healthz")[0] == 200, timeout=60, what="/healthz")
    assert wait_for(lambda: get("/readyz")[0] == 200, timeout=60, what="/readyz")
    enqueue(stack, {"video": upload(stack, video.path), "job_id": "metrics-job", "sample_fps": 5})
    wait_for(lambda: read_summary(stack, "metrics-job"), what="the job")
    enqueue(stack, "not json")
    wait_for(lambda: dead_letters(stack), what="the bad message")

    def metric(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return -1.0

    def counted() -> str | None:
        status, text = get("/metrics")
        done = metric(text, 'framescale_worker_invocations_total{outcome="deleted"}') == 1
        failed = metric(text, 'framescale_worker_invocations_total{outcome="dead_lettered"}') == 1
        return text if status == 200 and done and failed else None

    text = wait_for(counted, timeout=30, what="metrics to count both messages")
    assert metric(text, "framescale_worker_frames_sampled_total") == 15
    assert metric(text, "framescale_worker_model_latency_seconds_count") >= 2
    assert metric(text, "framescale_worker_total_processing_time_seconds_count") == 1
    assert metric(text, "framescale_worker_time_in_backlog_seconds_count") == 2
    assert metric(text, 'framescale_worker_invocation_failures_total{kind="permanent",stage="parse"}') == 1
    assert "metrics-job" not in text  # no job ids as labels

    records = worker_log(worker)
    done = [r for r in records if r.get("job_id") == "metrics-job" and r.get("stage") == "done"]
    assert done and done[0]["timings"]["decode_and_infer"] >= 0 and done[0]["frames_sampled"] == 15
    assert all({"time", "level", "component", "message"} <= set(r) for r in records)
    assert get("/nowhere")[0] == 404
