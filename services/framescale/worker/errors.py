"""How a job can fail, and what happens next for each kind.

Two families. ``ServiceError`` is what an outside service answered, as its adapter
(framescale.worker.adapters) or an in-memory fake reports it: a type per answer the worker
acts on (``NotFound``, ``AccessDenied``, ``Throttled`` ...), never a code to search for in a
text. ``JobError`` is what became of a job stage: permanent (dead-letter queue) or transient
(the message comes back later); ``job_error`` turns the first into the second at the stage
that knows what the call was for.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """An outside service (S3, SQS, SNS, the model server) refused or failed a call.

    ``what`` names the call (``GET s3://b/k``), ``detail`` the answer (``NoSuchKey The
    specified key does not exist.``). ``transient``: trying the same call again may work.
    """

    transient: ClassVar[bool] = False

    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(f"{what}: {detail}" if detail else what)
        self.what = what
        self.detail = detail


class NotFound(ServiceError):
    """The object (or key) is not there."""


class BucketNotFound(NotFound):
    """The bucket itself does not exist."""


class AccessDenied(ServiceError):
    """The caller's credentials do not allow the call."""


class ConditionFailed(ServiceError):
    """A conditional request (If-Match) found the object changed; a fresh look sees the new one."""

    transient = True


class Throttled(ServiceError):
    """Slow down: throttling or a concurrent conditional write to the same key."""

    transient = True


class Unavailable(ServiceError):
    """The service failed (5xx), timed out, or the connection broke."""

    transient = True


class InvalidRequest(ServiceError):
    """The request can never succeed as it is (a malformed name, an unsupported argument)."""


class ReceiptHandleGone(ServiceError):
    """SQS: this receipt handle no longer holds the message (it was deleted or received again)."""


class JobError(Exception):
    """Base: ``stage`` says where it failed (download, probe, decode, inference, upload, ...)."""

    def __init__(self, reason: str, *, stage: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage

    def __str__(self) -> str:
        return f"{self.stage}: {self.reason}"


class PermanentJobError(JobError):
    """Retrying cannot help (not a video, missing object, over a limit).

    Next: the message goes to the dead-letter queue with this reason, an error notification
    is published, and the message is deleted from the work queue.
    """


class TransientJobError(JobError):
    """Retrying later may help (model server down, throttling, network resets).

    Next: after bounded in-job retries, the message is handed back with a delay and comes
    back to some worker; never the dead-letter queue (unless the queue's redrive policy
    decides so after maxReceiveCount).
    """


class JobCancelled(Exception):
    """Shutdown asked for the job to be given up; the message is handed back at once."""


def job_error(error: ServiceError, *, stage: str) -> JobError:
    """What a service's answer means for the job stage that made the call."""
    kind = TransientJobError if error.transient else PermanentJobError
    return kind(str(error), stage=stage)
