"""The real outside world behind framescale.worker.ports: boto3 for SQS, S3 and SNS.

Each adapter is a thin shell: one boto3 call per method, and every failure translated into
the ServiceError type the worker acts on (``translate``). The logic (retries, the commit
protocol, what a failure means for the job) lives behind the Protocols, where the in-memory
fakes test it. The gRPC model client is framescale.worker.inference.ModelClient.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from framescale.aws import client_error_code
from framescale.messages import S3Location
from framescale.worker import errors
from framescale.worker.errors import JobCancelled, ServiceError
from framescale.worker.ports import MessageAttribute, ObjectInfo, QueueMessage, StoredObject

# The video streams to disk in bounded chunks, never whole into memory.
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# Objects stream to and from disk in bounded chunks, never whole into memory.
TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)
# CopyObject copies up to 5 GiB in one request; larger objects need the multipart copy.
SINGLE_COPY_LIMIT = 5 * 1024**3

# What each AWS answer means for the worker. Codes not listed: a permanent ServiceError.
_CODES: dict[str, type[ServiceError]] = {
    "NoSuchBucket": errors.BucketNotFound,
    "NoSuchKey": errors.NotFound,
    "NoSuchVersion": errors.NotFound,
    "NotFound": errors.NotFound,
    "404": errors.NotFound,
    "AccessDenied": errors.AccessDenied,
    "Forbidden": errors.AccessDenied,
    "403": errors.AccessDenied,
    "PreconditionFailed": errors.ConditionFailed,  # If-Match: the object changed under us
    "412": errors.ConditionFailed,
    "SlowDown": errors.Throttled,
    "Throttling": errors.Throttled,
    "ThrottlingException": errors.Throttled,
    "RequestThrottled": errors.Throttled,
    "RequestTimeout": errors.Throttled,
    "RequestTimeTooSkewed": errors.Throttled,
    "ConditionalRequestConflict": errors.Throttled,  # 409: a concurrent conditional write to the same key
    "InternalError": errors.Unavailable,
    "ServiceUnavailable": errors.Unavailable,
    "ReceiptHandleIsInvalid": errors.ReceiptHandleGone,
    "MessageNotInflight": errors.ReceiptHandleGone,
}


def classify(error: Exception, what: str) -> ServiceError | None:
    """The ServiceError for a boto3/botocore failure of ``what``; None for anything else (a bug)."""
    if isinstance(error, ParamValidationError):
        # botocore refused to send the request (a malformed bucket name or key): the same
        # request can never succeed.
        return errors.InvalidRequest(
            what, f"invalid request ({error}); check the message's URLs and FRAMESCALE_WORKER_OUTPUT"
        )
    if isinstance(error, S3UploadFailedError) and isinstance(error.__context__, ClientError):
        return classify(error.__context__, what)  # the managed upload wraps the answer in text
    if isinstance(error, ClientError):
        code = client_error_code(error)
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = str(error.response.get("Error", {}).get("Message", "") or "")
        detail = f"{code or status} {message}".strip()
        kind = _CODES.get(code)
        if kind is None and code == "InvalidParameterValue" and "ReceiptHandle" in message:
            kind = errors.ReceiptHandleGone
        if kind is None:
            kind = errors.Unavailable if status >= 500 or status == 429 else ServiceError
        return kind(what, detail)
    if isinstance(error, BotoCoreError | OSError | S3UploadFailedError):
        return errors.Unavailable(what, f"{type(error).__name__}: {error}")
    return None


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    try:
        yield
    except (JobCancelled, ServiceError):
        raise
    except Exception as error:
        translated = classify(error, what)
        if translated is None:
            raise
        raise translated from error


# --------------------------------------------------------------------------- SQS


class SqsQueue:
    """``ports.Queue`` over a boto3 SQS client."""

    def __init__(self, sqs: Any, url: str) -> None:
        self.sqs = sqs
        self.url = url

    def receive(self, *, wait_seconds: int, visibility_seconds: int) -> list[QueueMessage]:
        with translate(f"ReceiveMessage {self.url}"):
            response = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=wait_seconds,
                VisibilityTimeout=visibility_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=["All"],
            )
        return [_message(raw) for raw in response.get("Messages", [])]

    def delete(self, receipt_handle: str) -> None:
        with translate(f"DeleteMessage {self.url}"):
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt_handle)

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        with translate(f"ChangeMessageVisibility {self.url}"):
            self.sqs.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )

    def send(self, body: str, attributes: Mapping[str, MessageAttribute]) -> None:
        with translate(f"SendMessage {self.url}"):
            self.sqs.send_message(QueueUrl=self.url, MessageBody=body, MessageAttributes=dict(attributes))


def _message(raw: dict[str, Any]) -> QueueMessage:
    system = raw.get("Attributes", {})
    sent_ms = int(system.get("SentTimestamp", "0") or 0)
    return QueueMessage(
        message_id=str(raw.get("MessageId", "")),
        receipt_handle=str(raw["ReceiptHandle"]),
        body=str(raw.get("Body", "")),
        receive_count=int(system.get("ApproximateReceiveCount", "1") or 1),
        sent_at=sent_ms / 1000 if sent_ms else None,
        attributes=dict(raw.get("MessageAttributes") or {}),
    )


def find_dead_letter_queue(sqs: Any, queue_url: str) -> str | None:
    """The DLQ named by the queue's RedrivePolicy, as a queue URL."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    policy = attributes.get("RedrivePolicy")
    if not policy:
        return None
    arn = json.loads(policy).get("deadLetterTargetArn", "")
    parts = arn.split(":")
    if len(parts) < 6:
        return None
    return str(sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"])


# --------------------------------------------------------------------------- SNS


class SnsPublisher:
    """``ports.Publisher`` over a boto3 SNS client."""

    def __init__(self, sns: Any) -> None:
        self.sns = sns

    def publish(self, topic_arn: str, message: str, attributes: Mapping[str, str]) -> None:
        with translate(f"Publish {topic_arn}"):
            self.sns.publish(
                TopicArn=topic_arn,
                Message=message,
                MessageAttributes={
                    key: {"DataType": "String", "StringValue": value} for key, value in attributes.items()
                },
            )


# --------------------------------------------------------------------------- S3


class S3Store:
    """``ports.ObjectStore`` over a boto3 S3 client."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3

    def head(self, where: S3Location, *, version_id: str | None = None) -> ObjectInfo:
        with translate(f"HEAD {_url(where, version_id)}"):
            meta = self.s3.head_object(Bucket=where.bucket, Key=where.key, **_version(version_id))
        return _info(meta)

    def get(self, where: S3Location) -> StoredObject:
        with translate(f"GET {where.url}"):
            response = self.s3.get_object(Bucket=where.bucket, Key=where.key)
            body = response["Body"].read()
        return StoredObject(body, _info(response))

    def download(
        self,
        where: S3Location,
        path: Path,
        *,
        etag: str | None,
        version_id: str | None,
        should_stop: Callable[[], bool],
    ) -> None:
        condition = {"IfMatch": f'"{etag}"'} if etag else {}
        with translate(f"GET {_url(where, version_id)}"):
            body = self.s3.get_object(Bucket=where.bucket, Key=where.key, **condition, **_version(version_id))["Body"]
            try:
                with path.open("wb") as out:
                    for chunk in body.iter_chunks(DOWNLOAD_CHUNK_BYTES):
                        out.write(chunk)
                        if should_stop():
                            raise JobCancelled("shutdown: job handed back during download")
            finally:
                body.close()

    def upload(self, path: Path, where: S3Location, *, content_type: str) -> None:
        with translate(f"PUT {where.url}"):
            self.s3.upload_file(
                str(path), where.bucket, where.key, ExtraArgs={"ContentType": content_type}, Config=TRANSFER
            )

    def put_if_absent(self, where: S3Location, body: bytes, *, content_type: str) -> bool:
        try:
            with translate(f"PUT {where.url}"):
                self.s3.put_object(
                    Bucket=where.bucket, Key=where.key, Body=body, ContentType=content_type, IfNoneMatch="*"
                )
        except errors.ConditionFailed:
            return False
        return True

    def copy(self, source_key: str, where: S3Location, *, metadata: Mapping[str, str], size: int | None) -> None:
        source = {"Bucket": where.bucket, "Key": source_key}
        extra = {"ContentType": "application/x-ndjson", "Metadata": dict(metadata), "MetadataDirective": "REPLACE"}
        with translate(f"COPY s3://{where.bucket}/{source_key} to {where.url}"):
            if size is not None and size < SINGLE_COPY_LIMIT:
                # One request; the managed copy below first asks S3 for the size.
                self.s3.copy_object(CopySource=source, Bucket=where.bucket, Key=where.key, **extra)
            else:
                self.s3.copy(source, where.bucket, where.key, ExtraArgs=extra, Config=TRANSFER)

    def list_keys(self, prefix: S3Location) -> list[str]:
        with translate(f"LIST {prefix.url}"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def delete(self, where: S3Location) -> None:
        with translate(f"DELETE {where.url}"):
            self.s3.delete_object(Bucket=where.bucket, Key=where.key)

    def delete_keys(self, bucket: str, keys: Sequence[str]) -> list[tuple[str, str]]:
        with translate(f"DELETE {len(keys)} objects in s3://{bucket}"):
            answer = self.s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
            )
        return [(str(failure.get("Key")), str(failure.get("Code"))) for failure in answer.get("Errors", [])]


def _version(version_id: str | None) -> dict[str, str]:
    return {"VersionId": version_id} if version_id else {}


def _url(where: S3Location, version_id: str | None) -> str:
    return f"{where.url}?versionId={version_id}" if version_id else where.url


def _info(response: Mapping[str, Any]) -> ObjectInfo:
    version = response.get("VersionId")
    return ObjectInfo(
        size=int(response.get("ContentLength", 0) or 0),
        etag=str(response.get("ETag", "")).strip('"'),
        version_id=str(version) if version and version != "null" else None,
        metadata=dict(response.get("Metadata") or {}),
        age_seconds=_age_seconds(response),
    )


def _age_seconds(response: Mapping[str, Any]) -> float:
    """Seconds since the object was written, from S3's own Date header (no clock skew); inf when unknown."""
    try:
        now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
        return max(0.0, (now - response["LastModified"]).total_seconds())
    except (KeyError, TypeError, ValueError):
        return float("inf")
