"""Every bad input ends in the dead-letter queue with its reason; the same slot serves the next job."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from framescale.local import stack as local_stack
from framescale.local.videos import write_synthetic_video
from tests.support import (
    client,
    dead_letters,
    enqueue,
    failure_reason,
    notifications,
    read_summary,
    unique,
    upload,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def zero_frame_avi(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    writer.release()  # a valid container header, no frames
    return path


def test_bad_inputs_are_dead_lettered_with_their_reasons(aws_env, tmp_path: Path, start_worker) -> None:
    stack = local_stack.provision(unique("bad"))
    worker = start_worker(stack, model="synthetic")
    # A message that crashes its slot comes back until the redrive policy gives up on it,
    # with no reason attached: the slot's PID must not change while the bad messages pass.
    slots = wait_for(worker.slot_pids, what="the worker's slot process")
    text = tmp_path / "notes.mp4"
    text.write_text("this is a shopping list, not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated_source = write_synthetic_video(tmp_path / "whole.mp4", frame_count=20).path
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(truncated_source.read_bytes()[:2000])
    cases = {
        "not-json": ("{this is not json", "not JSON"),
        "no-video-field": (json.dumps({"vid": "s3://x/y.mp4"}), "no 'video' field"),
        "missing-object": (
            json.dumps({"video": f"s3://{stack.input_bucket}/nowhere/missing.mp4", "job_id": "missing-object"}),
            "video not found",
        ),
        "not-a-video": (
            json.dumps({"video": upload(stack, text), "job_id": "not-a-video"}),
            "not a video FFmpeg can read",
        ),
        "zero-frames": (
            json.dumps({"video": upload(stack, zero_frame_avi(tmp_path / "zero.avi")), "job_id": "zero-frames"}),
            "no decodable frames",
        ),
        "empty-object": (json.dumps({"video": upload(stack, empty), "job_id": "empty-object"}), "empty (0 bytes)"),
        "truncated": (
            json.dumps({"video": upload(stack, truncated), "job_id": "truncated"}),
            "not a video FFmpeg can read",
        ),
        # Bodies that used to raise out of the parser (RecursionError, ValueError, UnicodeEncodeError).
        "deeply-nested": ("[" * 200_000, "nests arrays or objects more than"),
        "long-number": ('{"video": "s3://videos/a.mp4", "sample_fps": 1' + "0" * 5_000 + "}", "number of 5001 digits"),
        "lone-surrogate": (f'{{"video": "s3://{stack.input_bucket}/\\ud800.mp4"}}', "not valid Unicode"),
        "boolean-sample-fps": (json.dumps({"video": "s3://videos/a.mp4", "sample_fps": True}), "sample_fps"),
        "empty-output": (json.dumps({"video": "s3://videos/a.mp4", "output": ""}), "output is empty"),
        "unknown-sample-mode": (
            json.dumps({"video": "s3://videos/a.mp4", "sample": "every-frame"}),
            "sample: Input should be 'fps' or 'keyframes'",
        ),
        "keyframes-with-a-rate": (
            json.dumps({"video": "s3://videos/a.mp4", "sample": "keyframes", "sample_fps": 2}),
            "cannot be combined",
        ),
    }
    for body, _ in cases.values():
        enqueue(stack, body)

    collected: list[dict] = []

    def all_dead_lettered() -> bool:
        collected.extend(dead_letters(stack))
        return len(collected) >= len(cases)

    wait_for(all_dead_lettered, what="every bad message in the dead-letter queue")
    by_body = {message["Body"]: message for message in collected}
    assert len(collected) == len(cases), [m["Body"] for m in collected]
    for name, (body, says) in cases.items():
        assert body in by_body, f"{name} did not reach the dead-letter queue"
        reason = failure_reason(by_body[body])
        assert says in reason, (name, reason)
        assert by_body[body]["MessageAttributes"]["framescale-failure-stage"]["StringValue"]

    errors: list[dict] = []
    wait_for(lambda: errors.extend(notifications(stack.error_inbox_url)) or len(errors) >= len(cases), what="errors")
    assert len(errors) == len(cases)
    assert all(n["invocationStatus"] == "Failed" and n["failureReason"] for n in errors)
    assert {n["inferenceId"] for n in errors} >= {"missing-object", "not-a-video", "zero-frames", "empty-object"}

    # The same slot, never restarted, still does real work.
    good = write_synthetic_video(tmp_path / "good.mp4", frame_count=20)
    enqueue(stack, {"video": upload(stack, good.path), "job_id": "after-the-bad-ones"})
    summary = wait_for(lambda: read_summary(stack, "after-the-bad-ones"), what="a good job after bad ones")
    assert summary["status"] == "succeeded" and summary["frames"]["sampled"] > 0
    sqs = client("sqs")
    assert wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (0, 0), what="queue to drain")
    assert worker.alive()
    assert worker.slot_pids() == slots
