"""One slot: receive a message, run its jobs, then delete, dead-letter or hand it back.

``SlotWorker.handle(message)`` is the whole loop body and returns a MessageOutcome, so a
test can drive it message by message; ``run()`` repeats it until asked to stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from framescale import names
from framescale.messages import InvalidMessage, ParsedMessage, parse_message
from framescale.worker.errors import JobCancelled, JobError, PermanentJobError, TransientJobError
from framescale.worker.heartbeat import VisibilityHeartbeat
from framescale.worker.inference import ModelClient
from framescale.worker.job import JobReport, JobRunner
from framescale.worker.notify import Notifier
from framescale.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
# While the model is available, re-check it at most this often (a check is one RPC).
READY_CACHE_SECONDS = 10.0
MODEL_WAIT_SECONDS = 1.0


@dataclass
class MessageOutcome:
    """What became of one SQS message."""

    action: str  # deleted | dead_lettered | retry_later | handed_back | ignored
    reason: str | None = None
    stage: str | None = None
    reports: list[JobReport] = field(default_factory=list)
    receive_count: int = 0


class SlotWorker:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        sqs: Any,
        s3: Any,
        sns: Any,
        model: ModelClient,
        dead_letter_queue_url: str,
        events: EventSink = lambda event: None,
        stopping: threading.Event | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.sqs = sqs
        self.dead_letter_queue_url = dead_letter_queue_url
        self.events = events
        self.stopping = stopping or threading.Event()  # stop taking new messages
        self.cancel = cancel or threading.Event()  # give up the job in hand
        self.notifier = Notifier(sns, settings.success_topic_arn, settings.error_topic_arn)
        self.runner = JobRunner(settings, s3, model, cancelled=self.cancel.is_set)
        self.in_job = False
        self._ready_checked = -READY_CACHE_SECONDS
        self._ready_logged = -60.0

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        while not self.stopping.is_set():
            # Take no job the model server cannot serve yet (it may still be loading the
            # model): the message would only come back later.
            if not self.model_ready():
                self.stopping.wait(MODEL_WAIT_SECONDS)
                continue
            for message in self.receive():
                self.handle(message)

    def model_ready(self) -> bool:
        now = time.monotonic()
        if now - self._ready_checked < READY_CACHE_SECONDS:
            return True
        if self.runner.model.ready():
            self._ready_checked = now
            return True
        if now - self._ready_logged > 30:
            log.warning(
                "model not available yet; not taking jobs",
                extra={"model": self.settings.model_name, "model_server": self.settings.model_server},
            )
            self._ready_logged = now
        return False

    def receive(self) -> list[dict[str, Any]]:
        try:
            response = self.sqs.receive_message(
                QueueUrl=self.settings.queue_url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=self.settings.wait_time_seconds,
                VisibilityTimeout=self.settings.visibility_timeout_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=["All"],
            )
        except Exception as error:
            log.warning("receive failed; retrying shortly", extra={"error": str(error), "stage": "receive"})
            self.stopping.wait(2.0)
            return []
        return list(response.get("Messages", []))

    # ------------------------------------------------------------------ one message

    def handle(self, message: dict[str, Any]) -> MessageOutcome:
        attributes = message.get("Attributes", {})
        receive_count = int(attributes.get("ApproximateReceiveCount", "1"))
        sent_ms = int(attributes.get("SentTimestamp", "0") or 0)
        if self.stopping.is_set():
            return self._finish(message, self._hand_back(message, "shutting down before the job started"))
        self.in_job = True
        self.events(
            {"type": "job_started", "time_in_backlog": max(0.0, time.time() - sent_ms / 1000) if sent_ms else None}
        )
        try:
            with VisibilityHeartbeat(
                self.sqs,
                self.settings.queue_url,
                message["ReceiptHandle"],
                extension=self.settings.visibility_timeout_seconds,
                period=self.settings.heartbeat_period,
            ):
                outcome = self._process(message)
        finally:
            self.in_job = False
        outcome.receive_count = receive_count
        return self._finish(message, outcome)

    def _process(self, message: dict[str, Any]) -> MessageOutcome:
        try:
            parsed: ParsedMessage = parse_message(message.get("Body", ""))
        except InvalidMessage as error:
            log.error("invalid message", extra={"reason": str(error), "message_id": message.get("MessageId")})
            return self._dead_letter(message, str(error), "parse", job_id=message.get("MessageId", ""), input_url="")
        if parsed.ignored_reason:
            self._delete(message)
            return MessageOutcome("ignored", reason=parsed.ignored_reason)
        reports: list[JobReport] = []
        for request in parsed.jobs:
            report = JobReport(input_url=request.video.url)
            reports.append(report)
            try:
                self.runner.run(request, report)
            except JobCancelled as error:
                return self._hand_back(message, str(error), reports)
            except TransientJobError as error:
                return self._retry_later(message, error, reports)
            except PermanentJobError as error:
                return self._dead_letter(
                    message,
                    str(error.reason),
                    error.stage,
                    job_id=report.job_id or request.job_id or message.get("MessageId", ""),
                    input_url=request.video.url,
                    output_url=report.output_url or None,
                    reports=reports,
                )
            except Exception as error:  # a bug of ours: hand it back; redrive bounds the retries
                log.exception("unexpected error in job", extra={"job_id": report.job_id, "stage": "job"})
                failure = TransientJobError(f"unexpected {type(error).__name__}: {error}", stage="job")
                return self._retry_later(message, failure, reports)
            log.info(
                "job " + report.status,
                extra={
                    "job_id": report.job_id,
                    "stage": "done",
                    "frames_sampled": report.frames_sampled,
                    "detections": report.detections,
                    "timings": report.timings,
                },
            )
        for report in reports:
            self.notifier.success(
                job_id=report.job_id, input_url=report.input_url, output_url=report.output_url, summary=report.summary
            )
        self._delete(message)
        return MessageOutcome("deleted", reports=reports)

    # ------------------------------------------------------------------ dispositions

    def _delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.settings.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _change_visibility(self, message: dict[str, Any], seconds: int) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.settings.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=seconds
            )
        except Exception as error:
            # The message still comes back when its current visibility runs out.
            log.warning("could not change visibility", extra={"error": str(error)})

    def _hand_back(
        self, message: dict[str, Any], reason: str, reports: list[JobReport] | None = None
    ) -> MessageOutcome:
        self._change_visibility(message, 0)
        log.info("message handed back", extra={"reason": reason, "message_id": message.get("MessageId")})
        return MessageOutcome("handed_back", reason=reason, reports=reports or [])

    def _retry_later(self, message: dict[str, Any], error: JobError, reports: list[JobReport]) -> MessageOutcome:
        self._change_visibility(message, self.settings.retry_delay_seconds)
        log.warning(
            "transient failure; message will be retried",
            extra={"reason": error.reason, "stage": error.stage, "delay": self.settings.retry_delay_seconds},
        )
        return MessageOutcome("retry_later", reason=error.reason, stage=error.stage, reports=reports)

    def _dead_letter(
        self,
        message: dict[str, Any],
        reason: str,
        stage: str,
        *,
        job_id: str,
        input_url: str,
        output_url: str | None = None,
        reports: list[JobReport] | None = None,
    ) -> MessageOutcome:
        attributes = {
            key: value
            for key, value in (message.get("MessageAttributes") or {}).items()
            if not key.startswith("framescale-")
        }
        # SQS allows 10 attributes per message; ours come first.
        ours = {
            names.FAILURE_REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:2000] or "unknown"},
            names.FAILURE_STAGE_ATTRIBUTE: {"DataType": "String", "StringValue": stage},
        }
        kept = dict(list(attributes.items())[: 10 - len(ours)])
        # Send first, then delete: a crash in between repeats the dead-lettering, never loses it.
        self.sqs.send_message(
            QueueUrl=self.dead_letter_queue_url,
            MessageBody=message.get("Body", "") or "(empty body)",
            MessageAttributes={**kept, **ours},
        )
        log.error(
            "job failed permanently; message moved to the dead-letter queue",
            extra={"job_id": job_id, "stage": stage, "reason": reason, "input": input_url},
        )
        self.notifier.error(job_id=job_id, input_url=input_url, output_url=output_url, reason=f"{stage}: {reason}")
        self._delete(message)
        return MessageOutcome("dead_lettered", reason=reason, stage=stage, reports=reports or [])

    def _finish(self, message: dict[str, Any], outcome: MessageOutcome) -> MessageOutcome:
        self.events({"type": "job_finished", "outcome": outcome})
        return outcome


def find_dead_letter_queue(sqs: Any, queue_url: str) -> str | None:
    """The DLQ named by the queue's RedrivePolicy, as a queue URL."""
    import json

    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    policy = attributes.get("RedrivePolicy")
    if not policy:
        return None
    arn = json.loads(policy).get("deadLetterTargetArn", "")
    parts = arn.split(":")
    if len(parts) < 6:
        return None
    return str(sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"])
