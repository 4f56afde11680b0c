"""What ``handle`` and its settling write for a person and for the supervisor: each path's log lines
with their fields, the outcome as decided, and what is done when a call to the queue fails."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from framescale import logs, names
from framescale.worker.errors import Unavailable
from framescale.worker.gate import JobGate
from framescale.worker.job import Failure, FailureKind, JobReport
from framescale.worker.loop import FENCED_REASON, Action, Disposition, MessageOutcome, Settlement
from framescale.worker.ports import QueueMessage
from tests.unit.worker.conftest import ERROR_TOPIC, SUCCESS_TOPIC, VIDEO_URL, World

LOOP = "framescale.worker.loop"


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog with the job's scope fields on its records, as the service's handler has them."""
    scope = logs.ScopeFilter()
    caplog.handler.addFilter(scope)
    caplog.set_level(logging.INFO)
    yield caplog
    caplog.handler.removeFilter(scope)


def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[dict[str, Any]]:
    """The fields of each loop record whose message is ``message`` (level included)."""
    return [
        {"level": r.levelname, **{k: v for k, v in r.__dict__.items() if k not in logging.makeLogRecord({}).__dict__}}
        for r in caplog.records
        if r.name == LOOP and r.getMessage() == message
    ]


def fields(record: dict[str, Any], *names_: str) -> dict[str, Any]:
    return {name: record.get(name) for name in names_}


def s3_record(key: str) -> dict[str, Any]:
    return {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "videos"}, "object": {"key": key}}}


def test_a_finished_job_logs_its_receipt_its_result_and_its_settling(
    world: World, lines: pytest.LogCaptureFixture
) -> None:
    message = world.queue.take(world.job_message(job_id="job-1"))
    world.worker().handle(message)
    (received,) = logged(lines, "message received")
    assert fields(received, "level", "stage", "message_id", "receive_count") == {
        "level": "INFO", "stage": "receive", "message_id": message.message_id, "receive_count": 1,
    }  # fmt: skip
    (done,) = logged(lines, "job succeeded")
    assert fields(done, "stage", "job_id", "frames_sampled", "detections") == {
        "stage": "done", "job_id": "job-1", "frames_sampled": 10, "detections": 10,
    }  # fmt: skip
    assert set(done["timings"]) >= {"total"}
    (settled,) = logged(lines, "message settled")
    assert fields(settled, "action", "disposition", "stage") == {
        "action": "deleted", "disposition": "deleted", "stage": "settle",
    }  # fmt: skip


def test_a_transient_failure_logs_its_reason_stage_and_delay(world: World, lines: pytest.LogCaptureFixture) -> None:
    world.store.faults.fail("download", "clip", Unavailable("GET", "reset"), times=10)
    world.worker().handle(world.queue.take(world.job_message()))
    (retried,) = logged(lines, "transient failure; message will be retried")
    assert fields(retried, "level", "reason", "stage", "delay") == {
        "level": "WARNING", "reason": "GET: reset", "stage": "download", "delay": 30,
    }  # fmt: skip


def test_a_hand_back_logs_its_reason(world: World, lines: pytest.LogCaptureFixture) -> None:
    worker = world.worker()
    worker.stopping.set()
    worker.handle(world.queue.take(world.job_message()))
    (handed,) = logged(lines, "message handed back")
    assert fields(handed, "level", "reason") == {"level": "INFO", "reason": "shutting down before the job started"}


def test_a_dead_letter_logs_each_failed_job(world: World, lines: pytest.LogCaptureFixture) -> None:
    world.store.objects.pop(("videos", "cam/clip.mp4"))
    world.worker().handle(world.queue.take(world.job_message(job_id="lost")))
    (failed,) = logged(lines, "job failed permanently; message moved to the dead-letter queue")
    assert fields(failed, "level", "job_id", "stage", "reason", "input") == {
        "level": "ERROR", "job_id": "lost", "stage": "resolve", "reason": f"video not found: {VIDEO_URL}",
        "input": VIDEO_URL,
    }  # fmt: skip


def test_a_failed_delete_is_logged_with_its_error(world: World, lines: pytest.LogCaptureFixture) -> None:
    world.queue.faults.fail("delete", "", Unavailable("DeleteMessage", "500"))
    world.worker().handle(world.queue.take(world.job_message()))
    (record,) = logged(lines, "could not delete the message; it will come back and be skipped as already done")
    assert fields(record, "level", "error", "stage") == {
        "level": "ERROR",
        "error": "DeleteMessage: 500",
        "stage": "delete",
    }


def test_a_failed_hand_back_leaves_the_message_and_says_so(world: World, lines: pytest.LogCaptureFixture) -> None:
    world.queue.faults.fail("change_visibility", "", Unavailable("ChangeMessageVisibility", "500"))
    worker = world.worker()
    worker.stopping.set()
    message = world.queue.take(world.job_message())
    handled = worker.handle(message)
    assert handled.settlement == Settlement(Disposition.LEFT) and world.queue.visibility_changes == []
    (record,) = logged(lines, "could not change visibility")
    assert fields(record, "level", "error", "visibility") == {
        "level": "WARNING", "error": "ChangeMessageVisibility: 500", "visibility": 0,
    }  # fmt: skip


def test_a_failed_dead_lettering_is_logged_with_the_delay_it_comes_back_after(
    world: World, lines: pytest.LogCaptureFixture
) -> None:
    world.dead_letters.faults.fail("send", "", Unavailable("SendMessage", "503"))
    message = world.queue.take("[]")
    message = QueueMessage(**{**message.__dict__, "receive_count": 2})
    world.worker().handle(message)
    (record,) = logged(lines, "could not move the message to the dead-letter queue; it will come back and fail again")
    assert fields(record, "level", "error", "delay") == {"level": "ERROR", "error": "SendMessage: 503", "delay": 60}
    assert record["reason"] == "message body must be a JSON object, got list"
    assert world.queue.visibility_changes == [(message.message_id, 60)]


def test_an_unexpected_error_is_logged_with_its_traceback(
    world: World, lines: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = world.worker()

    def broken(request: Any, *, received: float | None = None) -> JobReport:
        raise KeyError("bug")

    monkeypatch.setattr(worker.runner, "run", broken)
    worker.handle(world.queue.take(world.job_message(job_id="j")))
    (record,) = [r for r in lines.records if r.getMessage() == "unexpected error in job"]
    assert record.levelname == "ERROR" and record.exc_info is not None and record.__dict__["stage"] == "job"
    assert record.__dict__["job_id"] == "j", "the job's id was not bound to its log lines"


def test_a_fenced_slot_hands_the_message_back_and_tells_the_supervisor(world: World) -> None:
    worker = world.worker()
    gate = JobGate.for_threads(1, clock=world.clock.monotonic)  # shut
    worker.gate = gate.slot(0)
    events: list[dict[str, Any]] = []
    worker.events = events.append
    message = world.queue.take(world.job_message())
    message = QueueMessage(**{**message.__dict__, "receive_count": 3})
    handled = worker.handle(message)
    assert handled.outcome == MessageOutcome(Action.HAND_BACK, reason=FENCED_REASON, receive_count=3)
    assert [event["type"] for event in events] == ["fenced_hand_back", "job_finished"]
    assert world.queue.visibility_changes == [(message.message_id, 0)] and world.model.batches == []


def test_outcomes_decided_before_any_job_keep_the_receive_count(world: World) -> None:
    message = world.queue.take(json.dumps({"Event": "s3:TestEvent"}))
    message = QueueMessage(**{**message.__dict__, "receive_count": 4})
    assert world.worker().handle(message).outcome == MessageOutcome(
        Action.IGNORE, reason="S3 test event", receive_count=4
    )
    worker = world.worker()
    worker.stopping.set()
    message = QueueMessage(**{**world.queue.take(world.job_message()).__dict__, "receive_count": 5})
    assert worker.handle(message).outcome == MessageOutcome(
        Action.HAND_BACK, reason="shutting down before the job started", receive_count=5
    )


def test_an_unparsable_message_is_notified_without_an_input(world: World) -> None:
    message = world.queue.take("{not json")
    handled = world.worker().handle(message)
    (report,) = handled.outcome.failed
    assert (report.input_url, report.job_id) == ("", message.message_id)
    (notice,) = world.publisher.messages(ERROR_TOPIC)
    assert notice["requestParameters"] == {"inputLocation": ""}


def test_a_job_started_event_without_a_send_time_has_no_backlog_time(world: World) -> None:
    events: list[dict[str, Any]] = []
    worker = world.worker()
    worker.events = events.append
    message = world.queue.take(world.job_message())
    worker.handle(QueueMessage(**{**message.__dict__, "sent_at": None}))
    assert events[0]["time_in_backlog"] is None
    later = world.queue.take(world.job_message(job_id="later"))
    worker.handle(QueueMessage(**{**later.__dict__, "sent_at": world.clock.time() + 3}))  # clocks disagree
    assert events[2]["time_in_backlog"] == 0.0


def test_a_cancel_stops_at_the_record_it_interrupted(world: World) -> None:
    worker = world.worker()
    worker.cancel.set()
    message = world.queue.take(json.dumps({"Records": [s3_record("cam/clip.mp4"), s3_record("cam/clip.mp4")]}))
    handled = worker.handle(message)
    assert handled.outcome.action is Action.HAND_BACK and len(handled.outcome.reports) == 1


def test_a_record_done_keeps_the_job_id_it_was_given_by_its_object(world: World) -> None:
    message = world.queue.take(json.dumps({"Records": [s3_record("cam/clip.mp4")]}))
    handled = world.worker().handle(message)
    (report,) = handled.outcome.reports
    assert report.job_id and report.job_id != message.message_id
    (notice,) = world.publisher.messages(SUCCESS_TOPIC)
    assert notice["inferenceId"] == report.job_id


def test_a_dead_letter_outcome_without_reason_or_stage_still_says_something(world: World) -> None:
    # Outcomes come from ``decide``, which always names them; settling must not depend on it.
    message = world.queue.take("[]", framescale_note={"DataType": "String", "StringValue": "kept"})
    bare = JobReport(input_url="s3://v/x.mp4", job_id="x")
    outcome = MessageOutcome(Action.DEAD_LETTER, failed=(bare,))
    assert world.worker()._settle(message, outcome) == Settlement(Disposition.DEAD_LETTERED)
    (letter,) = [world.dead_letters.messages[m] for m in world.dead_letters.visible()]
    assert letter.attributes == {
        "framescale_note": {"DataType": "String", "StringValue": "kept"},
        names.FAILURE_REASON_ATTRIBUTE: {"DataType": "String", "StringValue": "unknown"},
        names.FAILURE_STAGE_ATTRIBUTE: {"DataType": "String", "StringValue": "unknown"},
    }
    (notice,) = world.publisher.messages(ERROR_TOPIC)
    assert (notice["inferenceId"], notice["failureReason"]) == ("x", "unknown: unknown")


def test_our_stale_attributes_are_replaced_and_theirs_kept_in_order(world: World) -> None:
    theirs = {"framescale-old": {"DataType": "String", "StringValue": "stale"}}  # an earlier dead-lettering's
    theirs.update({f"a{n}": {"DataType": "String", "StringValue": str(n)} for n in range(9)})
    world.queue.put("[]", attributes=theirs)
    (message,) = world.queue.receive(wait_seconds=0, visibility_seconds=60)
    world.worker().handle(message)
    (letter,) = [world.dead_letters.messages[m] for m in world.dead_letters.visible()]
    assert list(letter.attributes) == [f"a{n}" for n in range(8)] + [
        names.FAILURE_REASON_ATTRIBUTE,
        names.FAILURE_STAGE_ATTRIBUTE,
    ]
    assert letter.attributes[names.FAILURE_REASON_ATTRIBUTE]["DataType"] == "String"


def test_a_permanent_failure_with_its_own_reason_is_notified_with_it(world: World) -> None:
    message = world.queue.take("[]")
    own = JobReport(
        input_url="s3://v/y.mp4",
        job_id="y",
        output_url="s3://out/results/y/",
        failure=Failure(FailureKind.PERMANENT, "bad", "decode"),
    )
    outcome = MessageOutcome(Action.DEAD_LETTER, reason="message reason", stage="parse", failed=(own,))
    world.worker()._settle(message, outcome)
    (notice,) = world.publisher.messages(ERROR_TOPIC)
    assert notice["failureReason"] == "decode: bad"
    assert notice["responseParameters"]["outputLocation"] == "s3://out/results/y/"


def test_a_dead_letter_log_line_names_the_job_it_is_about(world: World, caplog: pytest.LogCaptureFixture) -> None:
    # Without the scope filter: the job id must be on the line itself (a message has several jobs).
    message = world.queue.take("[]")
    own = JobReport(input_url="s3://v/z.mp4", job_id="z", failure=Failure(FailureKind.PERMANENT, "bad", "decode"))
    world.worker()._settle(message, MessageOutcome(Action.DEAD_LETTER, reason="r", stage="s", failed=(own,)))
    (record,) = logged(caplog, "job failed permanently; message moved to the dead-letter queue")
    assert record["job_id"] == "z"


def test_a_hand_back_is_visible_again_at_once_with_no_delay(world: World) -> None:
    worker = world.worker()
    worker.stopping.set()
    handled = worker.handle(world.queue.take(world.job_message()))
    assert handled.settlement == Settlement(Disposition.HANDED_BACK, 0)


def test_a_fresh_worker_is_neither_in_a_job_nor_receiving(world: World) -> None:
    # The supervisor reads these to choose between waiting out a job and interrupting a poll.
    worker = world.worker()
    assert (worker.in_job, worker.receiving) == (False, False)


def test_a_lone_call_to_handle_is_timed_from_its_start(world: World) -> None:
    worker = world.worker()
    worker.events = lambda event: event["type"] == "job_started" and world.clock.advance(3.0)
    handled = worker.handle(world.queue.take(world.job_message()))
    assert handled.outcome.reports[0].timings["total"] == 3.0


def test_a_failed_record_keeps_the_job_id_derived_from_its_object(world: World) -> None:
    world.store.faults.fail("download", "clip", Unavailable("GET", "reset"), times=10)
    message = world.queue.take(json.dumps({"Records": [s3_record("cam/clip.mp4")]}))
    (report,) = world.worker().handle(message).outcome.reports
    assert report.failure is not None and report.job_id and report.job_id != message.message_id


def test_an_unexpected_error_in_an_unnamed_job_is_named_after_the_message(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = world.worker()

    def broken(request: Any, *, received: float | None = None) -> JobReport:
        raise KeyError("bug")

    monkeypatch.setattr(worker.runner, "run", broken)
    message = world.queue.take(json.dumps({"Records": [s3_record("cam/clip.mp4")]}))
    (report,) = worker.handle(message).outcome.reports
    assert report.job_id == message.message_id


def test_success_notifications_carry_the_jobs_summary(world: World) -> None:
    world.worker().handle(world.queue.take(world.job_message(job_id="job-1")))
    (done,) = world.publisher.messages(SUCCESS_TOPIC)
    assert done["framescale"]["framesSampled"] == 10
