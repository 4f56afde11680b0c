"""One slot: receive a message, run its jobs, then delete, dead-letter or hand it back.

``SlotWorker.handle(message)`` is the whole loop body and returns a MessageOutcome, so a
test can drive it message by message; ``run()`` repeats it until asked to stop. The jobs
run first, with the visibility heartbeat going; what becomes of the message is settled
only after the heartbeat has stopped, so no late beat can undo a hand-back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from framescale import logs, names
from framescale.messages import InvalidMessage, ParsedMessage, parse_message
from framescale.worker.errors import JobCancelled, PermanentJobError, TransientJobError
from framescale.worker.gate import JobGate, SlotGate
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
# While the job-start gate is shut (the node waits for admission, drains or cannot renew its
# Lease) a slot looks again this often instead of long-polling: a message received then would
# only be handed back, and each hand-back spends one of its receives toward the dead-letter queue.
GATE_WAIT_SECONDS = 0.2
FENCED_REASON = "the node takes no new job (drain, no admission, or Lease not renewed)"
COMPLETED = frozenset({"succeeded", "skipped", "repaired"})


@dataclass
class MessageOutcome:
    """What became of one SQS message."""

    action: str  # deleted | dead_lettered | retry_later | handed_back | ignored
    reason: str | None = None
    stage: str | None = None
    reports: list[JobReport] = field(default_factory=list)
    receive_count: int = 0
    failed: JobReport | None = None  # dead_lettered: the job the error notification is about
    delay: int = 0  # retry_later: seconds until the message is seen again


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
        gate: SlotGate | None = None,
    ) -> None:
        self.settings = settings
        self.sqs = sqs
        self.dead_letter_queue_url = dead_letter_queue_url
        self.events = events
        self.stopping = stopping or threading.Event()  # stop taking new messages
        self.cancel = cancel or threading.Event()  # give up the job in hand
        # Whether this node may start a job now, checked atomically with the start (gate.py).
        self.gate = gate or _always_open()
        self.notifier = Notifier(sns, settings.success_topic_arn, settings.error_topic_arn)
        self.runner = JobRunner(settings, s3, model, cancel=self.cancel)
        self.in_job = False  # from just before a message's stopping check until it is settled
        self.receiving = False  # only while blocked in the long poll
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
            if not self.gate.is_open():
                self.stopping.wait(GATE_WAIT_SECONDS)
                continue
            messages = self.receive()
            received = time.perf_counter()
            for message in messages:
                self.handle(message, received=received)

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
        # A shutdown signal may interrupt this wait and only this one: once a message is in
        # hand it must be settled (at least handed back), never dropped.
        self.receiving = True
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
        finally:
            self.receiving = False
        return list(response.get("Messages", []))

    # ------------------------------------------------------------------ one message

    def handle(self, message: dict[str, Any], *, received: float | None = None) -> MessageOutcome:
        received = received if received is not None else time.perf_counter()
        attributes = message.get("Attributes", {})
        receive_count = int(attributes.get("ApproximateReceiveCount", "1"))
        sent_ms = int(attributes.get("SentTimestamp", "0") or 0)
        with logs.scope(message_id=message.get("MessageId"), receive_count=receive_count):
            # In a job before the stopping check: a signal from here on gets the grace period.
            self.in_job = True
            started = False
            try:
                if self.stopping.is_set():
                    outcome = MessageOutcome("handed_back", reason="shutting down before the job started")
                elif not self.gate.try_start():
                    # A long poll that was under way when the gate shut: hand its message back now.
                    outcome = MessageOutcome("handed_back", reason=FENCED_REASON)
                    self.events({"type": "fenced_hand_back"})
                else:
                    started = True
                    self.events(
                        {
                            "type": "job_started",
                            # For the supervisor to hand the message back if it must kill this slot.
                            "receipt_handle": message["ReceiptHandle"],
                            "message_id": message.get("MessageId"),
                            "time_in_backlog": max(0.0, time.time() - sent_ms / 1000) if sent_ms else None,
                        }
                    )
                    log.info("message received", extra={"stage": "receive"})
                    with VisibilityHeartbeat(
                        self.sqs,
                        self.settings.queue_url,
                        message["ReceiptHandle"],
                        extension=self.settings.visibility_timeout_seconds,
                        period=self.settings.heartbeat_period,
                    ):
                        outcome = self._process(message, received)
                outcome.receive_count = receive_count
                self._settle(message, outcome)
                log.info("message settled", extra={"action": outcome.action, "stage": "settle"})
            finally:
                if started:  # counted as in hand until its message is settled
                    self.gate.finish()
                self.in_job = False
        self.events({"type": "job_finished", "outcome": outcome})
        return outcome

    def _process(self, message: dict[str, Any], received: float) -> MessageOutcome:
        """Run the message's jobs; say what should become of the message, but do not do it yet."""
        try:
            parsed: ParsedMessage = parse_message(message.get("Body", ""))
        except InvalidMessage as error:
            failed = JobReport(job_id=message.get("MessageId", ""))
            return MessageOutcome("dead_lettered", reason=str(error), stage="parse", failed=failed)
        if parsed.ignored_reason:
            return MessageOutcome("ignored", reason=parsed.ignored_reason)
        reports: list[JobReport] = []
        for request in parsed.jobs:
            report = JobReport(input_url=request.video.url, received=received)
            reports.append(report)
            logs.bind(job_id=request.job_id)  # None until resolved, for S3 events
            try:
                self.runner.run(request, report)
            except JobCancelled as error:
                return MessageOutcome("handed_back", reason=str(error), reports=reports)
            except TransientJobError as error:
                return MessageOutcome("retry_later", reason=error.reason, stage=error.stage, reports=reports)
            except PermanentJobError as error:
                report.job_id = report.job_id or request.job_id or message.get("MessageId", "")
                return MessageOutcome(
                    "dead_lettered", reason=error.reason, stage=error.stage, reports=reports, failed=report
                )
            except Exception as error:  # a bug of ours: hand it back; redrive bounds the retries
                log.exception("unexpected error in job", extra={"stage": "job"})
                reason = f"unexpected {type(error).__name__}: {error}"
                return MessageOutcome("retry_later", reason=reason, stage="job", reports=reports)
            log.info(
                "job " + report.status,
                extra={
                    "stage": "done",
                    "frames_sampled": report.frames_sampled,
                    "detections": report.detections,
                    "timings": report.timings,
                },
            )
        return MessageOutcome("deleted", reports=reports)

    # ------------------------------------------------------------------ dispositions

    def _settle(self, message: dict[str, Any], outcome: MessageOutcome) -> None:
        """Act on the outcome: notify, then delete, dead-letter or change the message's visibility."""
        if outcome.action == "handed_back":
            self._change_visibility(message, 0)
            log.info("message handed back", extra={"reason": outcome.reason})
            return
        if outcome.action == "retry_later":
            outcome.delay = self.settings.retry_delay(outcome.receive_count)
            self._change_visibility(message, outcome.delay)
            log.warning(
                "transient failure; message will be retried",
                extra={"reason": outcome.reason, "stage": outcome.stage, "delay": outcome.delay},
            )
            return
        # Jobs that finished before a later record of the same message failed are done:
        # their notifications go out whatever becomes of the message.
        for report in outcome.reports:
            if report.status in COMPLETED:
                self.notifier.success(
                    job_id=report.job_id,
                    input_url=report.input_url,
                    output_url=report.output_url,
                    summary=report.summary,
                )
        if outcome.action == "dead_lettered" and not self._dead_letter(message, outcome):
            return
        self._delete(message)

    def _delete(self, message: dict[str, Any]) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.settings.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except Exception as error:
            # The results are committed: the message comes back and is found complete.
            log.error(
                "could not delete the message; it will come back and be skipped as already done",
                extra={"error": str(error), "stage": "delete"},
            )

    def _change_visibility(self, message: dict[str, Any], seconds: int) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.settings.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=seconds
            )
        except Exception as error:
            # The message still comes back when its current visibility runs out.
            log.warning("could not change visibility", extra={"error": str(error), "visibility": seconds})

    def _dead_letter(self, message: dict[str, Any], outcome: MessageOutcome) -> bool:
        """Move the message to the dead-letter queue; False (and retry later) when that fails."""
        reason, stage = outcome.reason or "unknown", outcome.stage or "unknown"
        failed = outcome.failed or JobReport()
        attributes = {
            key: value
            for key, value in (message.get("MessageAttributes") or {}).items()
            if not key.startswith("framescale-")
        }
        # SQS allows 10 attributes per message; ours come first.
        ours = {
            names.FAILURE_REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:2000]},
            names.FAILURE_STAGE_ATTRIBUTE: {"DataType": "String", "StringValue": stage},
        }
        kept = dict(list(attributes.items())[: 10 - len(ours)])
        # Send first, then delete: a crash in between repeats the dead-lettering, never loses it.
        try:
            self.sqs.send_message(
                QueueUrl=self.dead_letter_queue_url,
                MessageBody=message.get("Body", "") or "(empty body)",
                MessageAttributes={**kept, **ours},
            )
        except Exception as error:
            outcome.action, outcome.delay = "retry_later", self.settings.retry_delay(outcome.receive_count)
            log.error(
                "could not move the message to the dead-letter queue; it will come back and fail again",
                extra={"error": str(error), "reason": reason, "delay": outcome.delay},
            )
            self._change_visibility(message, outcome.delay)
            return False
        log.error(
            "job failed permanently; message moved to the dead-letter queue",
            extra={"job_id": failed.job_id, "stage": stage, "reason": reason, "input": failed.input_url},
        )
        self.notifier.error(
            job_id=failed.job_id,
            input_url=failed.input_url,
            output_url=failed.output_url or None,
            reason=f"{stage}: {reason}",
        )
        return True


def _always_open() -> SlotGate:
    """A gate for a lone slot that nothing fences (tests, tools)."""
    gate = JobGate.for_threads(1)
    gate.open()
    return gate.slot(0)


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
