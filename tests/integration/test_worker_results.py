"""What the worker does with results already in S3, and with a message whose records fare differently.

The objects a crashed attempt leaves behind are planted directly in S3; the worker runs as
a real process against moto.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framescale import results
from framescale.local import stack as local_stack
from framescale.local.videos import write_synthetic_video
from tests.conftest import worker_log
from tests.support import (
    client,
    dead_letters,
    enqueue,
    failure_reason,
    notifications,
    read_summary,
    result_objects,
    unique,
    upload,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def put(stack: local_stack.LocalStack, key: str, body: bytes) -> None:
    client("s3").put_object(Bucket=stack.output_bucket, Key=key, Body=body)


def body_of(stack: local_stack.LocalStack, key: str) -> bytes:
    return bytes(client("s3").get_object(Bucket=stack.output_bucket, Key=key)["Body"].read())


def test_committed_results_are_finished_and_foreign_summaries_stop_the_job(
    aws_env, tmp_path: Path, start_worker
) -> None:
    stack = local_stack.provision(unique("results"))
    url = upload(stack, write_synthetic_video(tmp_path / "v.mp4", frame_count=20).path)
    # An attempt that committed, then died before copying its lines and writing the summary.
    lines = b'{"frame":0,"pts_ms":0,"detections":[]}\n'
    staged = "results/repair/_staging/0123abcd/detections.jsonl"
    summary = {"job_id": "repair", "status": "succeeded", "frames": {"sampled": 1}, "planted": True}
    put(stack, staged, lines)
    record = {"format_version": 1, "job_id": "repair", "attempt": "0123abcd", "staged": staged, "summary": summary}
    put(stack, "results/repair/_staging/commit.json", json.dumps(record).encode())
    # Summaries the worker did not write: unreadable, and another job's.
    put(stack, "results/corrupt/summary.json", b'{"job_id": "corr')
    put(stack, "results/foreign/summary.json", json.dumps({"job_id": "other", "status": "succeeded"}).encode())
    for job_id in ("repair", "corrupt", "foreign"):
        enqueue(stack, {"video": url, "job_id": job_id})
    worker = start_worker(stack)

    assert wait_for(lambda: read_summary(stack, "repair"), what="the repaired summary") == summary
    assert body_of(stack, "results/repair/" + results.DETECTIONS_FILE) == lines
    letters: list[dict] = []
    wait_for(lambda: letters.extend(dead_letters(stack)) or len(letters) >= 2, what="foreign summaries refused")
    reasons = {json.loads(m["Body"])["job_id"]: failure_reason(m) for m in letters}
    for job_id in ("corrupt", "foreign"):
        assert f"s3://{stack.output_bucket}/results/{job_id}/summary.json" in reasons[job_id], reasons
        assert "delete it to run the job again" in reasons[job_id]
    # Left as they were, not overwritten by a re-run.
    assert body_of(stack, "results/corrupt/summary.json") == b'{"job_id": "corr'
    assert set(result_objects(stack)) == {
        "results/repair/summary.json",
        "results/repair/detections.jsonl",
        "results/corrupt/summary.json",
        "results/foreign/summary.json",
    }
    sqs = client("sqs")
    assert wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (0, 0), what="queue to drain")
    repaired = [r for r in worker_log(worker) if r.get("job_id") == "repair" and r.get("stage") == "done"]
    assert [r["message"] for r in repaired] == ["job repaired"]
    assert "decode_and_infer" not in repaired[0]["timings"], "the committed job was run again"


def test_records_that_succeeded_are_notified_when_a_later_record_fails(aws_env, tmp_path: Path, start_worker) -> None:
    stack = local_stack.provision(unique("records"))
    good_url = upload(stack, write_synthetic_video(tmp_path / "good.mp4", frame_count=20).path)
    missing_url = f"s3://{stack.input_bucket}/incoming/missing.mp4"

    def record(url: str) -> dict:
        bucket, _, key = url[len("s3://") :].partition("/")
        return {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}

    event = json.dumps({"Records": [record(good_url), record(missing_url)]})
    enqueue(stack, event)
    start_worker(stack)
    (letter,) = wait_for(lambda: dead_letters(stack), what="the message in the dead-letter queue")
    assert letter["Body"] == event and "video not found" in failure_reason(letter)
    (done,) = wait_for(lambda: notifications(stack.success_inbox_url), what="the good record's notification")
    assert done["invocationStatus"] == "Completed" and done["requestParameters"]["inputLocation"] == good_url
    assert read_summary(stack, done["inferenceId"])["status"] == "succeeded"
    (failed,) = wait_for(lambda: notifications(stack.error_inbox_url), what="the missing record's notification")
    assert failed["requestParameters"]["inputLocation"] == missing_url
