"""Helpers shared by integration, e2e and chaos tests (not fixtures: plain functions)."""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framescale import aws, results
from framescale.local import stack as local_stack

DEFAULT_TIMEOUT = 120.0


@functools.lru_cache(maxsize=64)
def _client(service: str, endpoint: str) -> Any:
    return aws.client(service)


def client(service: str) -> Any:
    """A boto3 client per service and endpoint, made once: making one costs ~0.1 s of model loading."""
    return _client(service, os.environ.get("AWS_ENDPOINT_URL", ""))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(check: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition", interval=0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def upload(stack: local_stack.LocalStack, path: Path, key: str | None = None) -> str:
    key = key or f"incoming/{path.name}"
    client("s3").upload_file(str(path), stack.input_bucket, key)
    return f"s3://{stack.input_bucket}/{key}"


def enqueue(stack: local_stack.LocalStack, body: dict[str, Any] | str) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody=text)


def result_prefix(job_id: str) -> str:
    return f"results/{job_id}/"


def read_summary(stack: local_stack.LocalStack, job_id: str) -> dict[str, Any] | None:
    s3 = client("s3")
    try:
        body = s3.get_object(Bucket=stack.output_bucket, Key=result_prefix(job_id) + results.SUMMARY_FILE)["Body"]
    except s3.exceptions.NoSuchKey:
        return None
    return dict(json.loads(body.read()))


def read_lines(stack: local_stack.LocalStack, job_id: str) -> list[dict[str, Any]]:
    s3 = client("s3")
    body = s3.get_object(Bucket=stack.output_bucket, Key=result_prefix(job_id) + results.DETECTIONS_FILE)["Body"]
    return [json.loads(line) for line in body.read().decode().splitlines()]


def result_objects(stack: local_stack.LocalStack) -> dict[str, dict[str, Any]]:
    """Every object under results/, with its version count (the bucket is unversioned: LastModified)."""
    s3 = client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.output_bucket, Prefix="results/"):
        for item in page.get("Contents", []):
            out[item["Key"]] = item
    return out


def iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, bottom - top) * max(0.0, right - left)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def dead_letters(stack: local_stack.LocalStack) -> list[dict[str, Any]]:
    return local_stack.drain(client("sqs"), stack.dead_letter_queue_url)


def failure_reason(message: dict[str, Any]) -> str:
    return str(message.get("MessageAttributes", {}).get("framescale-failure-reason", {}).get("StringValue", ""))


def notifications(inbox_url: str) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in local_stack.drain(client("sqs"), inbox_url)]
