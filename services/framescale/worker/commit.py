"""Publishing a job's results once, whatever crashes and duplicates happen: stage, commit, finalize.

Under the job's folder (the result paths of DESIGN.md stay as they are):

    _staging/<attempt>/detections.jsonl   one attempt's lines (the attempt id is random)
    _staging/commit.json                  written once (If-None-Match): the winning attempt's summary and staged key
    detections.jsonl                      copied from the committed staged object
    summary.json                          written once, last: its presence means the result set is complete

Only the attempt whose commit record lands, or a later attempt repairing it after a crash,
writes detections.jsonl, and always before summary.json; framescale's own _staging/ objects go
once summary.json exists. So a reader sees summary.json only when detections.jsonl is
complete, and in a versioned bucket each of the two has one version. Files under the folder
that framescale did not write are never overwritten or deleted: the job stops instead.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from framescale import results
from framescale.messages import S3Location
from framescale.worker.errors import (
    BucketNotFound,
    JobCancelled,
    NotFound,
    PermanentJobError,
    ServiceError,
    TransientJobError,
)
from framescale.worker.ports import Clock, ObjectStore, StoredObject, SystemClock
from framescale.worker.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

STAGING_DIR = "_staging"
COMMIT_FILE = "commit.json"
ATTEMPT_METADATA = "framescale-attempt"
COMMIT_FORMAT_VERSION = 1
# A commit record younger than this may belong to an attempt that is finalizing right now
# (a duplicate message running in parallel): wait for its summary instead of copying too.
FINALIZE_WINDOW_SECONDS = 10.0
POLL_SECONDS = 0.5
DELETE_BATCH = 1000  # DeleteObjects' limit per request
JSON = "application/json"
JSON_LINES = "application/x-ndjson"
# The only names framescale writes under _staging/: the clean-up deletes these and nothing else.
_OWN_STAGING_KEY = re.compile(r"(?:commit\.json|[0-9a-f]+/detections\.jsonl)")


class Completion(enum.Enum):
    """How a job's results came to be complete."""

    SUCCEEDED = "succeeded"  # this attempt ran the job and published its results
    SKIPPED = "skipped"  # they were complete already (or another attempt won): left as they are
    REPAIRED = "repaired"  # a committed attempt had died before publishing; this one finished it


@dataclass(frozen=True)
class CommitResult:
    status: Completion
    summary: dict[str, Any]


@dataclass(frozen=True)
class Staged:
    """This attempt's lines, uploaded where no reader looks."""

    key: str
    size: int


@dataclass(frozen=True)
class Commit:
    attempt: str
    staged_key: str
    summary: dict[str, Any]
    staged_bytes: int | None = None  # unknown in records written before it was kept


class ResultStore:
    """The results of one job. ``completed()`` before the work; ``stage()`` and ``commit()`` after.

    Calls to the store are retried by ``retry``; what is left of a failure comes out as a
    ServiceError (the caller names the stage) or a JobError this protocol decided on.
    """

    def __init__(
        self,
        store: ObjectStore,
        folder: S3Location,
        job_id: str,
        *,
        retry: RetryPolicy,
        cancel: threading.Event,
        clock: Clock | None = None,
        on_failure: Callable[[ServiceError], None] | None = None,
        attempt: str | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.retry = retry
        self.cancel = cancel
        self.clock = clock or SystemClock()
        self.on_failure = on_failure
        self.attempt = attempt or uuid.uuid4().hex
        self.summary_at = folder.child(results.SUMMARY_FILE)
        self.detections_at = folder.child(results.DETECTIONS_FILE)
        self.staging_at = folder.child(STAGING_DIR, "")
        self.commit_at = folder.child(STAGING_DIR, COMMIT_FILE)
        self.staged_at = folder.child(STAGING_DIR, self.attempt, results.DETECTIONS_FILE)

    # ------------------------------------------------------------------ before the work

    def completed(self) -> CommitResult | None:
        """SKIPPED when the job is complete, REPAIRED when a committed attempt crashed before
        finishing and this call finished it; None: do the work."""
        summary = self._summary()
        if summary is not None:
            self._clean_staging()  # what an attempt that crashed after its summary left behind
            return CommitResult(Completion.SKIPPED, summary)
        found = self._read_commit()
        if found is None:
            self._refuse_foreign_detections()
            return None
        commit, age = found
        summary = self._wait_for_summary(FINALIZE_WINDOW_SECONDS - age)
        if summary is not None:
            return CommitResult(Completion.SKIPPED, summary)
        log.warning(
            "results were committed but never finalized (the attempt crashed); finalizing them without re-running",
            extra={"attempt": commit.attempt, "stage": "commit"},
        )
        self._finalize(commit)
        return CommitResult(Completion.REPAIRED, commit.summary)

    # ------------------------------------------------------------------ after the work

    def stage(self, detections: Path) -> Staged:
        """Upload this attempt's lines where no reader looks and no other attempt writes."""
        self._call(lambda: self.store.upload(detections, self.staged_at, content_type=JSON_LINES))
        return Staged(self.staged_at.key, detections.stat().st_size)

    def commit(self, staged: Staged, summary: dict[str, Any]) -> CommitResult:
        """Publish the staged lines with ``summary``: SUCCEEDED, or SKIPPED with the summary of
        another attempt that committed first (its results stand)."""
        record = {
            "format_version": COMMIT_FORMAT_VERSION,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "staged": staged.key,
            "staged_bytes": staged.size,
            "summary": summary,
        }
        won = self._put_once(self.commit_at, json.dumps(record).encode())
        if not won:
            # A retried PUT meets its own first try when only the answer to that was lost.
            found = self._read_commit()
            won = found is not None and found[0].attempt == self.attempt
        if not won:
            # The loser never finalizes: it would overwrite the winner's detections.
            self._delete(self.staged_at)
            theirs = self._wait_for_summary(FINALIZE_WINDOW_SECONDS)
            if theirs is None:
                raise TransientJobError(
                    f"another attempt committed job {self.job_id} but has not finished publishing it; "
                    "the message comes back later to check (and repair it if that attempt died)",
                    stage="commit",
                )
            log.info("another attempt committed this job first; its results stand", extra={"stage": "commit"})
            return CommitResult(Completion.SKIPPED, theirs)
        # A commit can only land after another attempt finished and cleaned up: theirs stands.
        theirs = self._summary()
        if theirs is not None:
            self._delete(self.commit_at)
            self._delete(self.staged_at)
            log.info("this job was finished by another attempt meanwhile; its results stand", extra={"stage": "commit"})
            return CommitResult(Completion.SKIPPED, theirs)
        self._finalize(Commit(self.attempt, staged.key, summary, staged.size), fresh=True)
        return CommitResult(Completion.SUCCEEDED, summary)

    # ------------------------------------------------------------------ steps

    def _finalize(self, commit: Commit, *, fresh: bool = False) -> None:
        """Committed record → detections.jsonl, then summary.json, then no more _staging/.

        ``fresh``: this attempt's commit landed just now, so nothing can have copied it yet.
        """
        # A crashed finalizer may have copied already: copying again would add a version.
        copied = (not fresh and self._copied_attempt() == commit.attempt) or self._copy(commit)
        if not copied:
            if self._summary() is not None:  # another finalizer finished and cleaned up meanwhile
                return
            raise PermanentJobError(
                f"commit record {self.commit_at.url} names staged results s3://{self.commit_at.bucket}/"
                f"{commit.staged_key} that no longer exist; delete the commit record to run the job again",
                stage="commit",
            )
        # False here: a parallel finalizer of the same commit wrote the identical summary.
        self._put_once(self.summary_at, json.dumps(commit.summary, indent=2).encode())
        self._clean_staging()

    def _summary(self) -> dict[str, Any] | None:
        """The finished summary, None when there is none; anything else there stops the job."""
        got = self._get(self.summary_at)
        if got is None:
            return None
        summary = _json_object(got.body)
        if summary is None or summary.get("job_id") != self.job_id or summary.get("status") != "succeeded":
            raise PermanentJobError(
                f"{self.summary_at.url} exists but is not a finished framescale summary of job {self.job_id}; "
                "it was left as it is and the job was not run: delete it to run the job again",
                stage="resolve",
            )
        return summary

    def _read_commit(self) -> tuple[Commit, float] | None:
        """The commit record and its age in seconds (by the store's clock), None when there is none."""
        got = self._get(self.commit_at)
        if got is None:
            return None
        record = _json_object(got.body) or {}
        attempt, staged, summary = record.get("attempt"), record.get("staged"), record.get("summary")
        if not (isinstance(attempt, str) and isinstance(staged, str) and isinstance(summary, dict)):
            raise PermanentJobError(
                f"commit record {self.commit_at.url} is unreadable; it was left as it is and the job was not run: "
                "delete it to run the job again",
                stage="resolve",
            )
        size = record.get("staged_bytes")
        return Commit(attempt, staged, summary, size if isinstance(size, int) else None), got.info.age_seconds

    def _refuse_foreign_detections(self) -> None:
        """A detections.jsonl framescale did not copy there is someone else's: stop rather than overwrite it."""
        try:
            info = self._call(lambda: self.store.head(self.detections_at))
        except NotFound:
            return
        if ATTEMPT_METADATA not in info.metadata:
            raise PermanentJobError(
                f"{self.detections_at.url} exists but was not written by framescale; it was left as it is and "
                "the job was not run: move it away, or send the job with another job_id",
                stage="resolve",
            )

    def _wait_for_summary(self, seconds: float) -> dict[str, Any] | None:
        """Poll for the summary another attempt is about to write, for up to ``seconds``."""
        remaining = seconds
        while remaining > 0:
            if self.clock.wait(self.cancel, min(POLL_SECONDS, remaining)):
                raise JobCancelled("shutdown: job handed back while waiting for another attempt to finish it")
            remaining -= POLL_SECONDS
            summary = self._summary()
            if summary is not None:
                return summary
        return None

    def _copied_attempt(self) -> str | None:
        """Which attempt's lines detections.jsonl holds (None: it does not exist or is not ours)."""
        try:
            info = self._call(lambda: self.store.head(self.detections_at))
        except NotFound:
            return None
        return info.metadata.get(ATTEMPT_METADATA)

    def _copy(self, commit: Commit) -> bool:
        """Server-side copy of the staged lines to detections.jsonl; False if they are gone."""
        try:
            self._call(
                lambda: self.store.copy(
                    commit.staged_key,
                    self.detections_at,
                    metadata={ATTEMPT_METADATA: commit.attempt},
                    size=commit.staged_bytes,
                )
            )
        except NotFound:
            return False
        return True

    def _clean_staging(self) -> None:
        """Delete framescale's own objects under _staging/ (the results are complete by now)."""
        try:
            found = self._call(lambda: self.store.list_keys(self.staging_at))
        except ServiceError as error:
            _cleanup_failed(error)
            return
        ours = [key for key in found if _OWN_STAGING_KEY.fullmatch(key[len(self.staging_at.key) :])]
        for first in range(0, len(ours), DELETE_BATCH):
            self._delete_batch(ours[first : first + DELETE_BATCH])

    def _delete_batch(self, keys: list[str]) -> None:
        """One DeleteObjects request; best effort, like ``_delete``."""
        try:
            failures = self._call(lambda: self.store.delete_keys(self.staging_at.bucket, keys))
        except ServiceError as error:
            _cleanup_failed(error)
            return
        for key, code in failures[:1]:
            _cleanup_failed(ServiceError(f"DELETE s3://{self.staging_at.bucket}/{key}", code))

    # ------------------------------------------------------------------ the store, with retries

    def _call(self, operation: Callable[[], T]) -> T:
        return self.retry.call(operation, cancel=self.cancel, on_failure=self.on_failure)

    def _get(self, where: S3Location) -> StoredObject | None:
        try:
            return self._call(lambda: self.store.get(where))
        except BucketNotFound:
            raise  # the bucket itself is missing: no result can be read or written there
        except NotFound:
            return None

    def _put_once(self, where: S3Location, body: bytes) -> bool:
        """PUT only if nothing is there (If-None-Match: *): False when something already was."""
        return self._call(lambda: self.store.put_if_absent(where, body, content_type=JSON))

    def _delete(self, where: S3Location) -> None:
        """Best effort: a staged object left behind costs storage, never correctness."""
        try:
            self._call(lambda: self.store.delete(where))
        except ServiceError as error:
            _cleanup_failed(error)


def _cleanup_failed(error: ServiceError) -> None:
    log.warning(
        "could not remove staged results (the job's results are not affected); the worker needs "
        "s3:ListBucket and s3:DeleteObject on the output prefix",
        extra={"reason": str(error), "stage": "commit"},
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
