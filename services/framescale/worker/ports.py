"""The worker's outside world, as small Protocols handed in through constructors.

A slot talks to five things: the job queue (and its dead-letter queue), the object store,
the notification publisher, the model server, and the clock. Each is a Protocol here; the
real ones (boto3, gRPC, the system clock) are thin adapters in framescale.worker.adapters,
and in-memory fakes in tests/fakes.py let a unit test drive the whole loop in milliseconds.

Adapters report a failed call as a framescale.worker.errors.ServiceError subclass
(``NotFound``, ``AccessDenied``, ``Throttled`` ...), never as a library's own exception, so
the logic behind them and the fakes speak the same language.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from framescale.messages import S3Location

# --------------------------------------------------------------------------- clock


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (for ages measured against other machines' stamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and timers)."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``event``; True when it is set."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.perf_counter()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


# --------------------------------------------------------------------------- queue

# An SQS message attribute as SQS takes and gives it: {"DataType": "String", "StringValue": "..."}.
MessageAttribute = Mapping[str, Any]


@dataclass(frozen=True)
class QueueMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1  # ApproximateReceiveCount: 1 on the first delivery
    sent_at: float | None = None  # epoch seconds (SentTimestamp), None when not known
    attributes: Mapping[str, MessageAttribute] = field(default_factory=dict)


class Queue(Protocol):
    """One SQS queue. Raises ``ReceiptHandleGone`` when a receipt handle no longer holds its message."""

    url: str

    def receive(self, *, wait_seconds: int, visibility_seconds: int) -> list[QueueMessage]: ...

    def delete(self, receipt_handle: str) -> None: ...

    def change_visibility(self, receipt_handle: str, seconds: int) -> None: ...

    def send(self, body: str, attributes: Mapping[str, MessageAttribute]) -> None: ...


# --------------------------------------------------------------------------- object store


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # without quotes
    version_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    age_seconds: float = 0.0  # since it was written, by the store's own clock (no skew)


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    info: ObjectInfo


class ObjectStore(Protocol):
    """S3 as the worker uses it: what the job reads and the commit protocol writes.

    Every method raises ``NotFound`` (``BucketNotFound`` when the bucket itself is missing)
    for an absent object, and other ServiceError types for the other answers.
    """

    def head(self, where: S3Location, *, version_id: str | None = None) -> ObjectInfo: ...

    def get(self, where: S3Location) -> StoredObject: ...

    def download(
        self,
        where: S3Location,
        path: Path,
        *,
        etag: str | None,
        version_id: str | None,
        should_stop: Callable[[], bool],
    ) -> None:
        """Stream the object to ``path``; only that ETag (``ConditionFailed`` otherwise) and version.
        Raises JobCancelled as soon as ``should_stop()`` says so."""
        ...

    def upload(self, path: Path, where: S3Location, *, content_type: str) -> None: ...

    def put_if_absent(self, where: S3Location, body: bytes, *, content_type: str) -> bool:
        """Write only if nothing is there (If-None-Match: *); False when something already was."""
        ...

    def copy(self, source_key: str, where: S3Location, *, metadata: Mapping[str, str], size: int | None) -> None:
        """Server-side copy of ``source_key`` (same bucket) to ``where``, with ``metadata``."""
        ...

    def list_keys(self, prefix: S3Location) -> list[str]: ...

    def delete(self, where: S3Location) -> None: ...

    def delete_keys(self, bucket: str, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Delete up to 1000 keys at once; the (key, code) pairs that failed."""
        ...


# --------------------------------------------------------------------------- publisher


class Publisher(Protocol):
    def publish(self, topic_arn: str, message: str, attributes: Mapping[str, str]) -> None: ...


# --------------------------------------------------------------------------- model server


@dataclass(frozen=True)
class ModelSignature:
    input_name: str
    input_height: int | None  # None when the model accepts any size
    input_width: int | None
    version: int | None


class PredictCall(Protocol):
    """A Predict in flight."""

    def result(self, timeout: float) -> Any:
        """The PredictResponse; TimeoutError if it is not there within ``timeout``, ServiceError if it failed."""
        ...

    def cancel(self) -> bool: ...


class ModelServer(Protocol):
    model_name: str
    signature_name: str

    def ready(self) -> bool:
        """True when a version of the model is loaded and serving."""
        ...

    def signature(self) -> ModelSignature: ...

    def submit(self, frames: np.ndarray) -> PredictCall:
        """Start a Predict for a batch ``[N, H, W, 3]`` uint8."""
        ...
