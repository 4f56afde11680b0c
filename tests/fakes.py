"""In-memory fakes of the worker's outside world (framescale.worker.ports), for unit tests.

Each keeps what a test wants to assert on (messages and where they went, every write of
every key, the calls made) and takes faults to inject: ``store.fail("put", "commit.json",
Unavailable("PUT", "lost"), lost_answer=True)`` makes the next matching call land and then
answer with that error, as a connection reset after the request does.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from framescale.messages import S3Location
from framescale.tfserving import pb, to_tensor_proto
from framescale.worker.errors import (
    BucketNotFound,
    ConditionFailed,
    JobCancelled,
    NotFound,
    ReceiptHandleGone,
    ServiceError,
)
from framescale.worker.ports import MessageAttribute, ModelSignature, ObjectInfo, QueueMessage, StoredObject

# --------------------------------------------------------------------------- clock


class FakeClock:
    """A clock that moves only when told to.

    ``auto=True``: a wait in the thread that made the clock (the test's) moves the clock by
    its whole timeout at once, so retries and polls take no real time. Any other wait (a
    heartbeat thread's), and every wait with ``auto=False``, blocks until the clock has been
    moved past its deadline (or the event is set), so a test can step such a thread through time.
    """

    def __init__(self, *, start: float = 1_000_000.0, auto: bool = True) -> None:
        self.now = start
        self.auto = auto
        self._owner = threading.get_ident()
        self.waits: list[float] = []
        self._changed = threading.Condition()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._changed:
            self.now += seconds
            self._changed.notify_all()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        if event.is_set():
            return True
        if self.auto and threading.get_ident() == self._owner:
            self.advance(seconds)
            return event.is_set()
        deadline = self.now + seconds
        with self._changed:
            # The real-time bound only keeps a broken test from hanging for ever.
            while not event.is_set() and self.now < deadline:
                self._changed.wait(0.01)
        return event.is_set()


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    operation: str  # a method name of the fake: "put_if_absent", "get", "copy", "delete", "send" ...
    pattern: str  # a regular expression searched in the key or URL the call is about
    error: ServiceError
    times: int = 1
    lost_answer: bool = False  # do the call, then raise (the answer was lost on the way back)
    hits: int = 0


class _Faults:
    def __init__(self) -> None:
        self.rules: list[Fault] = []
        self.calls: list[tuple[str, str]] = []

    def fail(
        self, operation: str, pattern: str, error: ServiceError, *, times: int = 1, lost_answer: bool = False
    ) -> Fault:
        rule = Fault(operation, pattern, error, times, lost_answer)
        self.rules.append(rule)
        return rule

    def check(self, operation: str, subject: str) -> Fault | None:
        """Record the call; raise now, or return the rule to raise after the call (lost answer)."""
        self.calls.append((operation, subject))
        for rule in self.rules:
            if rule.operation == operation and rule.hits < rule.times and re.search(rule.pattern, subject):
                rule.hits += 1
                if rule.lost_answer:
                    return rule
                raise rule.error
        return None

    def count(self, operation: str, pattern: str = "") -> int:
        return sum(1 for op, subject in self.calls if op == operation and re.search(pattern, subject))


# --------------------------------------------------------------------------- queue


@dataclass
class _Held:
    message_id: str
    body: str
    attributes: Mapping[str, MessageAttribute]
    sent_at: float
    visible_at: float = 0.0
    receive_count: int = 0
    receipt_handle: str | None = None


class FakeQueue:
    """``ports.Queue`` in memory, with SQS's visibility and receipt handles."""

    def __init__(self, url: str = "https://sqs.us-east-1.amazonaws.com/1/jobs", *, clock: FakeClock | None = None):
        self.url = url
        self.clock = clock or FakeClock()
        self.messages: dict[str, _Held] = {}
        self.deleted: list[str] = []
        self.visibility_changes: list[tuple[str, int]] = []  # (message id, seconds)
        self.faults = _Faults()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def put(self, body: str, *, attributes: Mapping[str, MessageAttribute] | None = None) -> str:
        """Enqueue a message (what a producer does); returns its id."""
        message_id = f"m-{next(self._ids)}"
        self.messages[message_id] = _Held(message_id, body, dict(attributes or {}), self.clock.time())
        return message_id

    def take(self, body: str, **attributes: Any) -> QueueMessage:
        """Enqueue ``body`` and receive it at once: the message a slot has just been handed."""
        self.put(body, attributes=attributes or None)
        (message,) = self.receive(wait_seconds=0, visibility_seconds=120)
        return message

    def visible(self) -> list[str]:
        return [m.message_id for m in self.messages.values() if m.visible_at <= self.clock.monotonic()]

    # ports.Queue

    def receive(self, *, wait_seconds: int, visibility_seconds: int) -> list[QueueMessage]:
        self.faults.check("receive", self.url)
        with self._lock:
            now = self.clock.monotonic()
            for held in self.messages.values():
                if held.visible_at <= now:
                    held.receive_count += 1
                    held.receipt_handle = f"{held.message_id}/{held.receive_count}"
                    held.visible_at = now + visibility_seconds
                    return [
                        QueueMessage(
                            held.message_id,
                            held.receipt_handle,
                            held.body,
                            receive_count=held.receive_count,
                            sent_at=held.sent_at,
                            attributes=dict(held.attributes),
                        )
                    ]
        return []

    def delete(self, receipt_handle: str) -> None:
        self.faults.check("delete", receipt_handle)
        with self._lock:
            held = self._holding(receipt_handle)
            del self.messages[held.message_id]
            self.deleted.append(held.message_id)

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        self.faults.check("change_visibility", receipt_handle)
        with self._lock:
            held = self._holding(receipt_handle)
            held.visible_at = self.clock.monotonic() + seconds
            self.visibility_changes.append((held.message_id, seconds))

    def send(self, body: str, attributes: Mapping[str, MessageAttribute]) -> None:
        self.faults.check("send", self.url)
        self.put(body, attributes=attributes)

    def _holding(self, receipt_handle: str) -> _Held:
        message_id = receipt_handle.split("/", 1)[0]
        held = self.messages.get(message_id)
        if held is None or held.receipt_handle != receipt_handle:
            raise ReceiptHandleGone(f"receipt handle {receipt_handle}", "ReceiptHandleIsInvalid")
        return held


# --------------------------------------------------------------------------- object store


@dataclass
class _Object:
    body: bytes
    metadata: dict[str, str]
    written_at: float
    version: int

    @property
    def etag(self) -> str:
        return hashlib.md5(self.body).hexdigest()


class FakeStore:
    """``ports.ObjectStore`` in memory: buckets, conditional writes, versions counted per key."""

    def __init__(self, *buckets: str, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.buckets: set[str] = set(buckets)
        self.objects: dict[tuple[str, str], _Object] = {}
        self.writes: collections.Counter[tuple[str, str]] = collections.Counter()  # every version ever written
        self.faults = _Faults()
        self.on_call: Callable[[str, str], None] = lambda operation, subject: None
        self.content_types: dict[str, str] = {}  # URL -> the Content-Type it was last written with
        self.copies: list[tuple[str, str, int | None]] = []  # (source key, destination URL, size given)
        self._lock = threading.Lock()

    # test helpers

    def put(self, url: str, body: bytes, metadata: Mapping[str, str] | None = None) -> None:
        bucket, _, key = url[len("s3://") :].partition("/")
        self.buckets.add(bucket)
        self._write(bucket, key, body, dict(metadata or {}))

    def body(self, url: str) -> bytes | None:
        bucket, _, key = url[len("s3://") :].partition("/")
        found = self.objects.get((bucket, key))
        return found.body if found else None

    def keys(self, prefix: str = "") -> list[str]:
        """URLs of every object whose URL starts with ``prefix``."""
        return sorted(f"s3://{b}/{k}" for b, k in self.objects if f"s3://{b}/{k}".startswith(prefix))

    def written(self, url: str) -> int:
        bucket, _, key = url[len("s3://") :].partition("/")
        return self.writes[(bucket, key)]

    # ports.ObjectStore

    def head(self, where: S3Location, *, version_id: str | None = None) -> ObjectInfo:
        self._check("head", where.url)
        return self._info(where)

    def get(self, where: S3Location) -> StoredObject:
        rule = self._check("get", where.url)
        found = StoredObject(self._find(where).body, self._info(where))
        self._after(rule)
        return found

    def download(
        self,
        where: S3Location,
        path: Path,
        *,
        etag: str | None,
        version_id: str | None,
        should_stop: Callable[[], bool],
    ) -> None:
        rule = self._check("download", where.url)
        found = self._find(where)
        if etag is not None and found.etag != etag:
            raise ConditionFailed(f"GET {where.url}", "412 PreconditionFailed")
        path.write_bytes(found.body)
        if should_stop():
            raise JobCancelled("shutdown: job handed back during download")
        self._after(rule)

    def upload(self, path: Path, where: S3Location, *, content_type: str) -> None:
        rule = self._check("upload", where.url)
        self._bucket(where.bucket)
        self.content_types[where.url] = content_type
        self._write(where.bucket, where.key, path.read_bytes(), {})
        self._after(rule)

    def put_if_absent(self, where: S3Location, body: bytes, *, content_type: str) -> bool:
        rule = self._check("put_if_absent", where.url)
        self._bucket(where.bucket)
        self.content_types.setdefault(where.url, content_type)
        with self._lock:
            if (where.bucket, where.key) in self.objects:
                won = False
            else:
                self._write(where.bucket, where.key, body, {})
                won = True
        self._after(rule)
        return won

    def copy(self, source_key: str, where: S3Location, *, metadata: Mapping[str, str], size: int | None) -> None:
        rule = self._check("copy", where.url)
        self.copies.append((source_key, where.url, size))
        source = self.objects.get((where.bucket, source_key))
        if source is None:
            raise NotFound(f"COPY s3://{where.bucket}/{source_key}", "NoSuchKey")
        self._write(where.bucket, where.key, source.body, dict(metadata))
        self._after(rule)

    def list_keys(self, prefix: S3Location) -> list[str]:
        self._check("list_keys", prefix.url)
        self._bucket(prefix.bucket)
        return sorted(k for b, k in self.objects if b == prefix.bucket and k.startswith(prefix.key))

    def delete(self, where: S3Location) -> None:
        rule = self._check("delete", where.url)
        self.objects.pop((where.bucket, where.key), None)
        self._after(rule)

    def delete_keys(self, bucket: str, keys: Sequence[str]) -> list[tuple[str, str]]:
        self._check("delete_keys", f"s3://{bucket}/" + " ".join(keys))
        for key in keys:
            self.objects.pop((bucket, key), None)
        return []

    # inside

    def _check(self, operation: str, subject: str) -> Fault | None:
        self.on_call(operation, subject)
        return self.faults.check(operation, subject)

    def _after(self, rule: Fault | None) -> None:
        if rule is not None:
            raise rule.error

    def _bucket(self, bucket: str) -> None:
        if bucket not in self.buckets:
            raise BucketNotFound(f"s3://{bucket}", "NoSuchBucket The specified bucket does not exist")

    def _find(self, where: S3Location) -> _Object:
        self._bucket(where.bucket)
        found = self.objects.get((where.bucket, where.key))
        if found is None:
            raise NotFound(where.url, "NoSuchKey")
        return found

    def _info(self, where: S3Location) -> ObjectInfo:
        found = self._find(where)
        return ObjectInfo(
            size=len(found.body),
            etag=found.etag,
            version_id=str(found.version),
            metadata=dict(found.metadata),
            age_seconds=max(0.0, self.clock.time() - found.written_at),
        )

    def _write(self, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None:
        self.writes[(bucket, key)] += 1
        self.objects[(bucket, key)] = _Object(body, metadata, self.clock.time(), self.writes[(bucket, key)])


# --------------------------------------------------------------------------- publisher


class FakePublisher:
    """``ports.Publisher`` in memory: what was published, per topic."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, dict[str, str]]] = []
        self.faults = _Faults()

    def publish(self, topic_arn: str, message: str, attributes: Mapping[str, str]) -> None:
        self.faults.check("publish", topic_arn)
        self.published.append((topic_arn, message, dict(attributes)))

    def messages(self, topic_arn: str) -> list[dict[str, Any]]:
        import json

        return [json.loads(message) for topic, message, _ in self.published if topic == topic_arn]


# --------------------------------------------------------------------------- model server


@dataclass
class FakeCall:
    response: Any = None
    error: ServiceError | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def result(self, timeout: float) -> Any:
        if not self.done.wait(timeout):
            raise TimeoutError("Predict")
        if self.error is not None:
            raise self.error
        return self.response

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeModel:
    """``ports.ModelServer`` in memory: one detection per frame, its score the frame's mean pixel / 255.

    ``errors``: raised by the next calls' results, in order. ``hold``: calls do not answer
    until the test sets it (a Predict in flight).
    """

    model_name = "fake"
    signature_name = "serving_default"

    def __init__(self, *, input_size: tuple[int, int] | None = (32, 32), version: int = 7) -> None:
        self.input_size = input_size
        self.version = version
        self.is_ready = True
        self.errors: collections.deque[ServiceError] = collections.deque()
        self.hold: threading.Event | None = None
        self.batches: list[int] = []  # frames per Predict call, in call order
        self.calls: list[FakeCall] = []

    def ready(self) -> bool:
        return self.is_ready

    def signature(self) -> ModelSignature:
        height, width = self.input_size or (None, None)
        return ModelSignature("inputs", height, width, self.version)

    def submit(self, frames: np.ndarray) -> FakeCall:
        self.batches.append(len(frames))
        call = FakeCall()
        if self.errors:
            call.error = self.errors.popleft()
        else:
            call.response = detections_response(frames, self.version)
        if self.hold is None:
            call.done.set()
        else:
            hold = self.hold
            threading.Thread(target=lambda: (hold.wait(30), call.done.set()), daemon=True).start()
        self.calls.append(call)
        return call


def detections_response(frames: np.ndarray, version: int) -> pb.PredictResponse:
    count = len(frames)
    scores = frames.reshape(count, -1).mean(axis=1) / 255.0
    response = pb.PredictResponse()
    response.model_spec.name = FakeModel.model_name
    response.model_spec.version.value = version
    boxes = np.tile(np.array([[[0.25, 0.25, 0.75, 0.75]]], np.float32), (count, 1, 1))
    to_tensor_proto(boxes, out=response.outputs["detection_boxes"])
    to_tensor_proto(scores.reshape(count, 1).astype(np.float32), out=response.outputs["detection_scores"])
    to_tensor_proto(np.ones((count, 1), np.float32), out=response.outputs["detection_classes"])
    to_tensor_proto(np.ones(count, np.float32), out=response.outputs["num_detections"])
    return response


# --------------------------------------------------------------------------- Leases


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies ``application/merge-patch+json``."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeLeases:
    """Leases in memory behind framescale.worker.lease.LeaseApi; ``failing`` makes every call raise
    (an API server that is down). Thread-safe: a keeper and a test's "operator" share one."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.failing = False
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.failing:
            raise ConnectionError(f"{call}: the API server is not answering")

    def read(self, name: str, namespace: str) -> dict[str, Any] | None:
        with self._lock:
            self._check("read")
            stored = self.leases.get((namespace, name))
            return merge_patch({}, stored) if stored is not None else None

    def patch(self, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        from framescale.worker.lease import LeaseMissing

        with self._lock:
            self._check("patch")
            if (namespace, name) not in self.leases:
                raise LeaseMissing(name)
            self.leases[(namespace, name)] = merge_patch(self.leases[(namespace, name)], body)
            return merge_patch({}, self.leases[(namespace, name)])

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._check("create")
            name = body["metadata"]["name"]
            if (namespace, name) in self.leases:
                raise RuntimeError("409 AlreadyExists")
            self.leases[(namespace, name)] = merge_patch({}, body)
            return merge_patch({}, body)

    def operator_patch(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        """What the operator writes (admission, drain requests), never failing."""
        with self._lock:
            self.leases[(namespace, name)] = merge_patch(self.leases.get((namespace, name), {}), body)

    def annotations(self, name: str, namespace: str) -> dict[str, str]:
        with self._lock:
            return dict((self.leases.get((namespace, name)) or {}).get("metadata", {}).get("annotations") or {})
