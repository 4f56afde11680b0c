"""Bounded exponential backoff for transient failures inside a job."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    ParamValidationError,
)

from framescale.worker.errors import JobCancelled, PermanentJobError, TransientJobError

T = TypeVar("T")
log = logging.getLogger(__name__)

# S3 answers that mean "not now" rather than "never".
_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
        "PreconditionFailed",  # the object changed under us: the retry sees the new version
        "412",
        "ConditionalRequestConflict",  # 409: a concurrent conditional write to the same key is in progress
    }
)


def aws_error(error: Exception, *, stage: str, what: str) -> TransientJobError | PermanentJobError:
    """Classify a botocore error for ``what`` (e.g. 'GET s3://b/k')."""
    if isinstance(error, ParamValidationError):
        # botocore refused to send the request (a malformed bucket name or key): retrying
        # the same request can never succeed.
        return PermanentJobError(
            f"{what}: invalid request ({error}); check the message's URLs and FRAMESCALE_WORKER_OUTPUT",
            stage=stage,
        )
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = error.response.get("Error", {}).get("Message", "") or code
        if code in _TRANSIENT_S3_CODES or status >= 500 or status == 429:
            return TransientJobError(f"{what}: {code or status} {message}".strip(), stage=stage)
        return PermanentJobError(f"{what}: {code or status} {message}".strip(), stage=stage)
    if isinstance(error, ConnectionError | EndpointConnectionError | BotoCoreError | OSError):
        return TransientJobError(f"{what}: {type(error).__name__}: {error}", stage=stage)
    return PermanentJobError(f"{what}: {type(error).__name__}: {error}", stage=stage)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, including the first
    base_seconds: float = 0.5
    max_seconds: float = 10.0

    def delay(self, attempt: int) -> float:
        """Full-jitter backoff before try ``attempt + 1`` (attempt counts from 1)."""
        ceiling = min(self.max_seconds, self.base_seconds * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)

    def call(
        self,
        operation: Callable[[], T],
        *,
        classify: Callable[[Exception], TransientJobError | PermanentJobError],
        cancel: threading.Event | None = None,
        on_retry: Callable[[TransientJobError], None] | None = None,
    ) -> T:
        """Run ``operation``, retrying transient failures; a set ``cancel`` ends the wait at once."""
        cancel = cancel or threading.Event()
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except (PermanentJobError, JobCancelled):
                raise
            except TransientJobError as error:
                failure = error
            except Exception as error:
                classified = classify(error)
                if isinstance(classified, PermanentJobError):
                    raise classified from error
                failure = classified
            if cancel.is_set():
                raise JobCancelled(f"shutdown: job handed back after a transient failure ({failure.reason})")
            if attempt >= self.attempts:
                raise failure
            if on_retry is not None:
                on_retry(failure)
            pause = self.delay(attempt)
            log.warning(
                "transient failure, retrying",
                extra={"stage": failure.stage, "reason": failure.reason, "attempt": attempt, "delay": round(pause, 2)},
            )
            if cancel.wait(pause):
                raise JobCancelled(f"shutdown: job handed back while waiting to retry ({failure.reason})")
