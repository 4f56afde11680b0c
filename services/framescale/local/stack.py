"""The AWS side of a local run: queue with a dead-letter queue, buckets, notification topics.

Everything is created through boto3 against whatever AWS_ENDPOINT_URL points at (the
moto server in local runs). Each topic is subscribed by a queue, so a local run can read
the notifications it published.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from framescale import aws


@dataclass(frozen=True)
class LocalStack:
    queue_url: str
    dead_letter_queue_url: str
    input_bucket: str
    output_bucket: str
    success_topic_arn: str
    error_topic_arn: str
    success_inbox_url: str  # SQS queue subscribed to the success topic
    error_inbox_url: str

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = {
            "FRAMESCALE_WORKER_QUEUE_URL": self.queue_url,
            "FRAMESCALE_WORKER_DEAD_LETTER_QUEUE_URL": self.dead_letter_queue_url,
            "FRAMESCALE_WORKER_OUTPUT": f"s3://{self.output_bucket}/results/",
            "FRAMESCALE_WORKER_SUCCESS_TOPIC_ARN": self.success_topic_arn,
            "FRAMESCALE_WORKER_ERROR_TOPIC_ARN": self.error_topic_arn,
        }
        env.update(extra)
        return env


def provision(name: str, *, max_receive_count: int = 5, visibility_timeout: int = 60) -> LocalStack:
    """Create (or reuse: every call is idempotent) the resources for a pipeline called ``name``."""
    sqs, s3, sns = aws.client("sqs"), aws.client("s3"), aws.client("sns")
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = _queue_arn(sqs, dlq_url)
    queue_url = sqs.create_queue(
        QueueName=f"{name}-jobs",
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}),
        },
    )["QueueUrl"]
    buckets = {}
    for role in ("videos", "results"):
        bucket = f"{name}-{role}"
        _create_bucket(s3, bucket)
        buckets[role] = bucket
    topics, inboxes = {}, {}
    for kind in ("success", "error"):
        topic_arn = sns.create_topic(Name=f"{name}-{kind}")["TopicArn"]
        inbox_url = sqs.create_queue(QueueName=f"{name}-{kind}-inbox")["QueueUrl"]
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=_queue_arn(sqs, inbox_url),
            Attributes={"RawMessageDelivery": "true"},
        )
        topics[kind], inboxes[kind] = topic_arn, inbox_url
    return LocalStack(
        queue_url=queue_url,
        dead_letter_queue_url=dlq_url,
        input_bucket=buckets["videos"],
        output_bucket=buckets["results"],
        success_topic_arn=topics["success"],
        error_topic_arn=topics["error"],
        success_inbox_url=inboxes["success"],
        error_inbox_url=inboxes["error"],
    )


def _queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def _create_bucket(s3: Any, bucket: str) -> None:
    region = aws.region()
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(**kwargs)


def drain(sqs: Any, queue_url: str, *, wait: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """Receive and delete up to ``limit`` messages (for reading inboxes and dead-letter queues)."""
    out: list[dict[str, Any]] = []
    while len(out) < limit:
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            break
        for message in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        out.extend(messages)
    return out


def queue_depth(sqs: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages, as the queue reports them."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])
