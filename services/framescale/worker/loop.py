"""One slot: receive a message, run its jobs, then delete, dead-letter or hand it back.

``SlotWorker.handle(message)`` is the whole loop body and returns what became of the
message; ``run()`` repeats it until asked to stop. The jobs run first, with the visibility
heartbeat going; what should become of the message is decided once from their reports
(``decide``, a pure function) and acted on only after the heartbeat has stopped, so no late
beat can undo a hand-back. Acting never rewrites the decision: a permanent failure whose
dead-lettering fails is still counted as permanent, and the settlement says what was done.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from framescale import logs, names
from framescale.messages import InvalidMessage, parse_message
from framescale.worker.gate import JobGate, SlotGate
from framescale.worker.heartbeat import VisibilityHeartbeat
from framescale.worker.job import COMPLETED, Failure, FailureKind, JobReport, JobRunner
from framescale.worker.notify import Notifier
from framescale.worker.ports import Clock, ModelServer, ObjectStore, Publisher, Queue, QueueMessage, SystemClock
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
RECEIVE_RETRY_SECONDS = 2.0
NOT_READY_LOG_SECONDS = 30.0
# SQS allows 10 attributes per message; the failure's own come first.
MAX_MESSAGE_ATTRIBUTES = 10
MAX_REASON_ATTRIBUTE_CHARS = 2000


class Action(enum.Enum):
    """What should become of a message. The values are the metric's ``outcome`` label."""

    DELETE = "deleted"  # its jobs are done
    DEAD_LETTER = "dead_lettered"  # a permanent failure: the dead-letter queue, an error notification
    RETRY_LATER = "retry_later"  # a transient failure: visible again after the retry delay
    HAND_BACK = "handed_back"  # shutdown: visible again at once
    IGNORE = "ignored"  # valid, asks for nothing (an S3 test event): deleted


@dataclass(frozen=True)
class MessageOutcome:
    """What should become of one message, decided once from its jobs' reports."""

    action: Action
    reason: str | None = None
    stage: str | None = None
    reports: tuple[JobReport, ...] = ()
    receive_count: int = 1
    failed: tuple[JobReport, ...] = ()  # dead-letter: the jobs the error notifications are about


class Disposition(enum.Enum):
    """What was done with the message."""

    DELETED = "deleted"
    DEAD_LETTERED = "dead_lettered"
    DELAYED = "delayed"  # visibility set to the retry delay (also when dead-lettering failed)
    HANDED_BACK = "handed_back"  # visibility 0
    LEFT = "left"  # the call failed: the message comes back when its visibility runs out


@dataclass(frozen=True)
class Settlement:
    disposition: Disposition
    delay: int = 0  # seconds until the message is seen again (DELAYED)


@dataclass(frozen=True)
class Handled:
    outcome: MessageOutcome
    settlement: Settlement


def decide(reports: Sequence[JobReport], *, receive_count: int) -> MessageOutcome:
    """What should become of a message whose jobs (one per S3 event record) ended as ``reports``.

    A shutdown hands the message back; else any transient failure brings it back later (the
    records already done are found done then, not run again); else permanent failures send it
    to the dead-letter queue, each failed record with its own reason and notification.
    """
    failures = [report for report in reports if report.failure is not None]
    by_kind = {kind: [r for r in failures if r.failure is not None and r.failure.kind is kind] for kind in FailureKind}
    if not failures:
        return MessageOutcome(Action.DELETE, reports=tuple(reports), receive_count=receive_count)
    if by_kind[FailureKind.CANCELLED]:
        action, chosen = Action.HAND_BACK, by_kind[FailureKind.CANCELLED]
    elif by_kind[FailureKind.TRANSIENT]:
        action, chosen = Action.RETRY_LATER, by_kind[FailureKind.TRANSIENT]
    else:
        action, chosen = Action.DEAD_LETTER, by_kind[FailureKind.PERMANENT]
    first = chosen[0].failure
    assert first is not None
    reason = first.reason
    if len(reports) > 1 and action is not Action.HAND_BACK:
        # Say which records failed and why: "record 2 of 3 (s3://b/k): reason; ...".
        reason = "; ".join(
            f"record {reports.index(report) + 1} of {len(reports)} ({report.input_url}): "
            f"{report.failure.stage}: {report.failure.reason}"
            for report in chosen
            if report.failure is not None
        )
    return MessageOutcome(
        action,
        reason=reason,
        stage=first.stage if action is not Action.HAND_BACK else None,
        reports=tuple(reports),
        receive_count=receive_count,
        failed=tuple(chosen) if action is Action.DEAD_LETTER else (),
    )


class SlotWorker:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        queue: Queue,
        dead_letters: Queue,
        store: ObjectStore,
        publisher: Publisher,
        model: ModelServer,
        clock: Clock | None = None,
        events: EventSink = lambda event: None,
        stopping: threading.Event | None = None,
        cancel: threading.Event | None = None,
        orphaned: Callable[[], bool] = lambda: False,
        gate: SlotGate | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.dead_letters = dead_letters
        self.model = model
        self.clock = clock or SystemClock()
        self.events = events
        self.stopping = stopping or threading.Event()  # stop taking new messages
        self.cancel = cancel or threading.Event()  # give up the job in hand
        self.orphaned = orphaned  # True once the supervisor is gone: take no more jobs
        # Whether this node may start a job now, checked atomically with the start (gate.py).
        self.gate = gate or _always_open()
        self.notifier = Notifier(publisher, settings.success_topic_arn, settings.error_topic_arn)
        self.runner = JobRunner(settings, store=store, model=model, clock=self.clock, cancel=self.cancel)
        self.in_job = False  # from just before a message's stopping check until it is settled
        self.receiving = False  # only while blocked in the long poll
        self._ready_checked = -READY_CACHE_SECONDS
        self._ready_logged = -NOT_READY_LOG_SECONDS

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        while not self._should_stop():
            # Take no job the model server cannot serve yet (it may still be loading the
            # model): the message would only come back later.
            if not self.model_ready():
                self.clock.wait(self.stopping, MODEL_WAIT_SECONDS)
                continue
            if not self.gate.is_open():
                self.clock.wait(self.stopping, GATE_WAIT_SECONDS)
                continue
            messages = self.receive()
            received = self.clock.monotonic()
            for message in messages:
                self.handle(message, received=received)

    def _should_stop(self) -> bool:
        if not self.stopping.is_set() and self.orphaned():
            log.error("the supervisor is gone; this slot takes no more jobs and stops")
            self.stopping.set()
        return self.stopping.is_set()

    def model_ready(self) -> bool:
        now = self.clock.monotonic()
        if now - self._ready_checked < READY_CACHE_SECONDS:
            return True
        if self.model.ready():
            self._ready_checked = now
            return True
        if now - self._ready_logged > NOT_READY_LOG_SECONDS:
            log.warning(
                "model not available yet; not taking jobs",
                extra={"model": self.settings.model_name, "model_server": self.settings.model_server},
            )
            self._ready_logged = now
        return False

    def receive(self) -> list[QueueMessage]:
        # A shutdown signal may interrupt this wait and only this one: once a message is in
        # hand it must be settled (at least handed back), never dropped.
        self.receiving = True
        try:
            return self.queue.receive(
                wait_seconds=self.settings.wait_time_seconds,
                visibility_seconds=self.settings.visibility_timeout_seconds,
            )
        except Exception as error:
            log.warning("receive failed; retrying shortly", extra={"error": str(error), "stage": "receive"})
            self.clock.wait(self.stopping, RECEIVE_RETRY_SECONDS)
            return []
        finally:
            self.receiving = False

    # ------------------------------------------------------------------ one message

    def handle(self, message: QueueMessage, *, received: float | None = None) -> Handled:
        received = received if received is not None else self.clock.monotonic()
        with logs.scope(message_id=message.message_id, receive_count=message.receive_count):
            # In a job before the stopping check: a signal from here on gets the grace period.
            self.in_job = True
            started = False
            try:
                if self._should_stop():
                    outcome = MessageOutcome(
                        Action.HAND_BACK,
                        reason="shutting down before the job started",
                        receive_count=message.receive_count,
                    )
                elif not self.gate.try_start():
                    # A long poll that was under way when the gate shut: hand its message back now.
                    outcome = MessageOutcome(
                        Action.HAND_BACK, reason=FENCED_REASON, receive_count=message.receive_count
                    )
                    self.events({"type": "fenced_hand_back"})
                else:
                    started = True
                    self.events(
                        {
                            "type": "job_started",
                            # For the supervisor to hand the message back if it must kill this slot.
                            "receipt_handle": message.receipt_handle,
                            "message_id": message.message_id,
                            "time_in_backlog": (
                                max(0.0, self.clock.time() - message.sent_at) if message.sent_at else None
                            ),
                        }
                    )
                    log.info("message received", extra={"stage": "receive"})
                    with VisibilityHeartbeat(
                        self.queue,
                        message.receipt_handle,
                        extension=self.settings.visibility_timeout_seconds,
                        period=self.settings.heartbeat_period,
                        clock=self.clock,
                    ):
                        outcome = self._process(message, received)
                settlement = self._settle(message, outcome)
                log.info(
                    "message settled",
                    extra={
                        "action": outcome.action.value,
                        "disposition": settlement.disposition.value,
                        "stage": "settle",
                    },
                )
            finally:
                if started:  # counted as in hand until its message is settled
                    self.gate.finish()
                self.in_job = False
        self.events({"type": "job_finished", "outcome": outcome, "settlement": settlement})
        return Handled(outcome, settlement)

    def _process(self, message: QueueMessage, received: float) -> MessageOutcome:
        """Run the message's jobs and decide what should become of the message (without doing it)."""
        try:
            parsed = parse_message(message.body)
        except InvalidMessage as error:
            failed = JobReport(
                input_url="", job_id=message.message_id, failure=Failure(FailureKind.PERMANENT, str(error), "parse")
            )
            return decide([failed], receive_count=message.receive_count)
        if parsed.ignored_reason:
            return MessageOutcome(Action.IGNORE, reason=parsed.ignored_reason, receive_count=message.receive_count)
        reports: list[JobReport] = []
        for request in parsed.jobs:
            logs.bind(job_id=request.job_id)  # None until resolved, for S3 events
            try:
                report = self.runner.run(request, received=received)
            except Exception as error:  # a bug of ours: hand it back; redrive bounds the retries
                log.exception("unexpected error in job", extra={"stage": "job"})
                reason = f"unexpected {type(error).__name__}: {error}"
                report = JobReport(
                    input_url=request.video.url,
                    job_id=request.job_id or "",
                    failure=Failure(FailureKind.TRANSIENT, reason, "job"),
                )
            if report.failure is not None and not report.job_id:
                report = _with_job_id(report, request.job_id or message.message_id)
            reports.append(report)
            if report.failure is not None:
                if report.failure.kind is FailureKind.CANCELLED:
                    break  # shutting down: the records after it wait for the next receive
                continue  # every record is attempted; each failure keeps its own reason
            log.info(
                "job " + report.status.value,
                extra={
                    "stage": "done",
                    "frames_sampled": report.frames_sampled,
                    "detections": report.detections,
                    "timings": report.timings,
                },
            )
        return decide(reports, receive_count=message.receive_count)

    # ------------------------------------------------------------------ dispositions

    def _settle(self, message: QueueMessage, outcome: MessageOutcome) -> Settlement:
        """Act on the outcome: notify, then delete, dead-letter or change the message's visibility."""
        if outcome.action is Action.HAND_BACK:
            log.info("message handed back", extra={"reason": outcome.reason})
            return self._change_visibility(message, 0, Disposition.HANDED_BACK)
        if outcome.action is Action.RETRY_LATER:
            delay = self.settings.retry_delay(outcome.receive_count)
            log.warning(
                "transient failure; message will be retried",
                extra={"reason": outcome.reason, "stage": outcome.stage, "delay": delay},
            )
            return self._change_visibility(message, delay, Disposition.DELAYED, delay=delay)
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
        if outcome.action is Action.DEAD_LETTER:
            return self._dead_letter(message, outcome)
        return self._delete(message)

    def _delete(self, message: QueueMessage, disposition: Disposition = Disposition.DELETED) -> Settlement:
        try:
            self.queue.delete(message.receipt_handle)
        except Exception as error:
            # The results are committed: the message comes back and is found complete.
            log.error(
                "could not delete the message; it will come back and be skipped as already done",
                extra={"error": str(error), "stage": "delete"},
            )
            return Settlement(Disposition.LEFT)
        return Settlement(disposition)

    def _change_visibility(
        self, message: QueueMessage, seconds: int, disposition: Disposition, *, delay: int = 0
    ) -> Settlement:
        try:
            self.queue.change_visibility(message.receipt_handle, seconds)
        except Exception as error:
            # The message still comes back when its current visibility runs out.
            log.warning("could not change visibility", extra={"error": str(error), "visibility": seconds})
            return Settlement(Disposition.LEFT)
        return Settlement(disposition, delay)

    def _dead_letter(self, message: QueueMessage, outcome: MessageOutcome) -> Settlement:
        """Move the message to the dead-letter queue; when that fails, it comes back after the retry delay."""
        reason, stage = outcome.reason or "unknown", outcome.stage or "unknown"
        kept = {key: value for key, value in message.attributes.items() if not key.startswith("framescale-")}
        ours = {
            names.FAILURE_REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:MAX_REASON_ATTRIBUTE_CHARS]},
            names.FAILURE_STAGE_ATTRIBUTE: {"DataType": "String", "StringValue": stage},
        }
        kept = dict(list(kept.items())[: MAX_MESSAGE_ATTRIBUTES - len(ours)])
        # Send first, then delete: a crash in between repeats the dead-lettering, never loses it.
        try:
            self.dead_letters.send(message.body or "(empty body)", {**kept, **ours})
        except Exception as error:
            delay = self.settings.retry_delay(outcome.receive_count)
            log.error(
                "could not move the message to the dead-letter queue; it will come back and fail again",
                extra={"error": str(error), "reason": reason, "delay": delay},
            )
            return self._change_visibility(message, delay, Disposition.DELAYED, delay=delay)
        for failed in outcome.failed:
            own = failed.failure or Failure(FailureKind.PERMANENT, reason, stage)
            log.error(
                "job failed permanently; message moved to the dead-letter queue",
                extra={"job_id": failed.job_id, "stage": own.stage, "reason": own.reason, "input": failed.input_url},
            )
            self.notifier.error(
                job_id=failed.job_id,
                input_url=failed.input_url,
                output_url=failed.output_url or None,
                reason=f"{own.stage}: {own.reason}",
            )
        return self._delete(message, Disposition.DEAD_LETTERED)


def _always_open() -> SlotGate:
    """A gate for a lone slot that nothing fences (tests, tools)."""
    gate = JobGate.for_threads(1)
    gate.open()
    return gate.slot(0)


def _with_job_id(report: JobReport, job_id: str) -> JobReport:
    return replace(report, job_id=job_id)
