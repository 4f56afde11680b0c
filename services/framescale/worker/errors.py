"""How a job can fail, and what happens next for each kind."""

from __future__ import annotations


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
