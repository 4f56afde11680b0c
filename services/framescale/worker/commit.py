"""Publishing a job's results once, whatever crashes and duplicates happen: stage, commit, finalize.

Under the job's folder (the result paths of DESIGN.md stay as they are):

    _staging/<attempt>/detections.jsonl   one attempt's lines (the attempt id is random)
    _staging/commit.json                  written once (If-None-Match): the winning attempt's summary and staged key
    detections.jsonl                      copied from the committed staged object
    summary.json                          written once, last: its presence means the result set is complete

Only the attempt whose commit record lands, or a later attempt repairing it after a crash,
writes detections.jsonl, and always before summary.json; the _staging/ objects go once
summary.json exists. So a reader sees summary.json only when detections.jsonl is complete,
and in a versioned bucket each of the two has one version.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from framescale import results
from framescale.messages import S3Location
from framescale.worker.errors import JobCancelled, JobError, PermanentJobError, TransientJobError
from framescale.worker.retry import RetryPolicy, aws_error

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"
COMMIT_FILE = "commit.json"
ATTEMPT_METADATA = "framescale-attempt"
COMMIT_FORMAT_VERSION = 1
# A commit record younger than this may belong to an attempt that is finalizing right now
# (a duplicate message running in parallel): wait for its summary instead of copying too.
FINALIZE_WINDOW_SECONDS = 10.0
POLL_SECONDS = 0.5
# Objects stream to and from disk in bounded chunks, never whole into memory.
TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)
# CopyObject copies up to 5 GiB in one request; larger objects need the multipart copy.
SINGLE_COPY_LIMIT = 5 * 1024**3
DELETE_BATCH = 1000  # DeleteObjects' limit per request
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_CONDITION_FAILED = frozenset({"PreconditionFailed", "412"})


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class Commit:
    attempt: str
    staged_key: str
    summary: dict[str, Any]
    staged_bytes: int | None = None  # unknown in records written before it was kept


class ResultStore:
    """The results of one job in S3. ``completed()`` before the work; ``stage()`` and ``commit()`` after."""

    def __init__(
        self,
        s3: Any,
        folder: S3Location,
        job_id: str,
        *,
        retry: RetryPolicy,
        cancel: threading.Event,
        on_upload_retry: Callable[[TransientJobError], None],
    ) -> None:
        self.s3 = s3
        self.job_id = job_id
        self.retry = retry
        self.cancel = cancel
        self.on_upload_retry = on_upload_retry
        self.attempt = uuid.uuid4().hex
        self.summary_at = folder.child(results.SUMMARY_FILE)
        self.detections_at = folder.child(results.DETECTIONS_FILE)
        self.staging_at = folder.child(STAGING_DIR, "")
        self.commit_at = folder.child(STAGING_DIR, COMMIT_FILE)
        self.staged_at = folder.child(STAGING_DIR, self.attempt, results.DETECTIONS_FILE)
        self.staged_bytes: int | None = None

    # ------------------------------------------------------------------ before the work

    def completed(self) -> tuple[str, dict[str, Any]] | None:
        """``("skipped", summary)`` when the job is complete, ``("repaired", summary)`` when a
        committed attempt crashed before finishing and this call finished it; None: do the work."""
        summary = self._summary()
        if summary is not None:
            self._clean_staging()  # what an attempt that crashed after its summary left behind
            return "skipped", summary
        found = self._read_commit()
        if found is None:
            return None
        commit, age = found
        summary = self._wait_for_summary(FINALIZE_WINDOW_SECONDS - age)
        if summary is not None:
            return "skipped", summary
        log.warning(
            "results were committed but never finalized (the attempt crashed); finalizing them without re-running",
            extra={"attempt": commit.attempt, "stage": "commit"},
        )
        self._finalize(commit)
        return "repaired", commit.summary

    # ------------------------------------------------------------------ after the work

    def stage(self, detections: Path) -> None:
        """Upload this attempt's lines where no reader looks and no other attempt writes."""
        where = self.staged_at

        def upload() -> None:
            self.s3.upload_file(
                str(detections),
                where.bucket,
                where.key,
                ExtraArgs={"ContentType": "application/x-ndjson"},
                Config=TRANSFER,
            )

        self._call(upload, f"PUT {where.url}", stage="upload")
        self.staged_bytes = detections.stat().st_size

    def commit(self, summary: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Publish the staged lines with ``summary``: ``("succeeded", summary)``, or ``("skipped",
        theirs)`` when another attempt committed first (its results stand)."""
        record = {
            "format_version": COMMIT_FORMAT_VERSION,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "staged": self.staged_at.key,
            "staged_bytes": self.staged_bytes,
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
            return "skipped", theirs
        # A commit can only land after another attempt finished and cleaned up: theirs stands.
        theirs = self._summary()
        if theirs is not None:
            self._delete(self.commit_at)
            self._delete(self.staged_at)
            log.info("this job was finished by another attempt meanwhile; its results stand", extra={"stage": "commit"})
            return "skipped", theirs
        self._finalize(Commit(self.attempt, self.staged_at.key, summary, self.staged_bytes), fresh=True)
        return "succeeded", summary

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
        # 412 here: a parallel finalizer of the same commit wrote the identical summary.
        self._put_once(self.summary_at, json.dumps(commit.summary, indent=2).encode())
        self._clean_staging()

    def _summary(self) -> dict[str, Any] | None:
        """The finished summary, None when there is none; anything else there stops the job."""
        got = self._get(self.summary_at)
        if got is None:
            return None
        summary = _json_object(got[0])
        if summary is None or summary.get("job_id") != self.job_id or summary.get("status") != "succeeded":
            raise PermanentJobError(
                f"{self.summary_at.url} exists but is not a finished framescale summary of job {self.job_id}; "
                "it was left as it is and the job was not run: delete it to run the job again",
                stage="resolve",
            )
        return summary

    def _read_commit(self) -> tuple[Commit, float] | None:
        """The commit record and its age in seconds (by S3's clock), None when there is none."""
        got = self._get(self.commit_at)
        if got is None:
            return None
        body, response = got
        record = _json_object(body) or {}
        attempt, staged, summary = record.get("attempt"), record.get("staged"), record.get("summary")
        if not (isinstance(attempt, str) and isinstance(staged, str) and isinstance(summary, dict)):
            raise PermanentJobError(
                f"commit record {self.commit_at.url} is unreadable; it was left as it is and the job was not run: "
                "delete it to run the job again",
                stage="resolve",
            )
        size = record.get("staged_bytes")
        return Commit(attempt, staged, summary, size if isinstance(size, int) else None), _age_seconds(response)

    def _wait_for_summary(self, seconds: float) -> dict[str, Any] | None:
        """Poll for the summary another attempt is about to write, for up to ``seconds``."""
        remaining = seconds
        while remaining > 0:
            if self.cancel.wait(min(POLL_SECONDS, remaining)):
                raise JobCancelled("shutdown: job handed back while waiting for another attempt to finish it")
            remaining -= POLL_SECONDS
            summary = self._summary()
            if summary is not None:
                return summary
        return None

    def _copied_attempt(self) -> str | None:
        """Which attempt's lines detections.jsonl holds (None: it does not exist or is not ours)."""
        where = self.detections_at

        def head() -> str | None:
            try:
                meta = self.s3.head_object(Bucket=where.bucket, Key=where.key)
            except ClientError as error:
                if _code(error) in _MISSING:
                    return None
                raise
            return meta.get("Metadata", {}).get(ATTEMPT_METADATA)

        return self._call(head, f"HEAD {where.url}", stage="commit")

    def _copy(self, commit: Commit) -> bool:
        """Server-side copy of the staged lines to detections.jsonl; False if they are gone."""
        where = self.detections_at
        source = {"Bucket": where.bucket, "Key": commit.staged_key}
        destination = {
            "ContentType": "application/x-ndjson",
            "Metadata": {ATTEMPT_METADATA: commit.attempt},
            "MetadataDirective": "REPLACE",
        }

        def copy() -> bool:
            try:
                if commit.staged_bytes is not None and commit.staged_bytes < SINGLE_COPY_LIMIT:
                    # One request; the managed copy below first asks S3 for the size.
                    self.s3.copy_object(CopySource=source, Bucket=where.bucket, Key=where.key, **destination)
                else:
                    self.s3.copy(source, where.bucket, where.key, ExtraArgs=destination, Config=TRANSFER)
            except ClientError as error:
                if _code(error) in _MISSING:
                    return False
                raise
            return True

        return self._call(copy, f"COPY s3://{where.bucket}/{commit.staged_key} to {where.url}", stage="commit")

    def _clean_staging(self) -> None:
        """Delete everything under _staging/ (the results are complete by now)."""
        where = self.staging_at

        def keys() -> list[str]:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=where.key)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

        try:
            found = self._call(keys, f"LIST {where.url}", stage="commit")
        except JobError as error:
            _cleanup_failed(error)
            return
        for first in range(0, len(found), DELETE_BATCH):
            self._delete_batch(found[first : first + DELETE_BATCH])

    def _delete_batch(self, keys: list[str]) -> None:
        """One DeleteObjects request; best effort, like ``_delete``."""
        where = self.staging_at

        def delete() -> dict[str, Any]:
            objects = [{"Key": key} for key in keys]
            return dict(self.s3.delete_objects(Bucket=where.bucket, Delete={"Objects": objects, "Quiet": True}))

        try:
            answer = self._call(delete, f"DELETE {len(keys)} objects under {where.url}", stage="commit")
        except JobError as error:
            _cleanup_failed(error)
            return
        for failure in answer.get("Errors", [])[:1]:
            _cleanup_failed(TransientJobError(f"{failure.get('Key')}: {failure.get('Code')}", stage="commit"))

    # ------------------------------------------------------------------ S3 with retries

    def _call(self, operation: Callable[[], Any], what: str, *, stage: str) -> Any:
        return self.retry.call(
            operation,
            classify=lambda e: aws_error(e, stage=stage, what=what),
            cancel=self.cancel,
            on_retry=self.on_upload_retry if stage != "resolve" else None,
        )

    def _get(self, where: S3Location) -> tuple[bytes, dict[str, Any]] | None:
        def get() -> tuple[bytes, dict[str, Any]] | None:
            try:
                response = self.s3.get_object(Bucket=where.bucket, Key=where.key)
            except ClientError as error:
                if _code(error) in _MISSING:
                    return None
                raise
            return response["Body"].read(), response

        return self._call(get, f"GET {where.url}", stage="resolve")

    def _put_once(self, where: S3Location, body: bytes) -> bool:
        """PUT only if nothing is there (If-None-Match: *): False when something already was."""

        def put() -> bool:
            try:
                self.s3.put_object(
                    Bucket=where.bucket, Key=where.key, Body=body, ContentType="application/json", IfNoneMatch="*"
                )
            except ClientError as error:
                if _code(error) in _CONDITION_FAILED:
                    return False
                raise
            return True

        return self._call(put, f"PUT {where.url}", stage="commit")

    def _delete(self, where: S3Location) -> None:
        """Best effort: a staged object left behind costs storage, never correctness."""
        try:
            self._call(
                lambda: self.s3.delete_object(Bucket=where.bucket, Key=where.key), f"DELETE {where.url}", stage="commit"
            )
        except JobError as error:
            _cleanup_failed(error)


def _cleanup_failed(error: JobError) -> None:
    log.warning(
        "could not remove staged results (the job's results are not affected); the worker needs "
        "s3:ListBucket and s3:DeleteObject on the output prefix",
        extra={"reason": error.reason, "stage": "commit"},
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _age_seconds(response: dict[str, Any]) -> float:
    """Seconds since the object was written, from S3's own Date header (no clock skew)."""
    try:
        now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
        return max(0.0, (now - response["LastModified"]).total_seconds())
    except (KeyError, TypeError, ValueError):
        return FINALIZE_WINDOW_SECONDS  # unknown: treat it as old enough to repair
