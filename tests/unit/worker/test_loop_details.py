"""The loop's decisions and messages, exactly: ``decide`` as a table, and what each path writes."""

from __future__ import annotations

import json

from framescale import names
from framescale.worker.errors import Unavailable
from framescale.worker.job import Failure, FailureKind, JobReport, JobStatus
from framescale.worker.loop import (
    MAX_REASON_ATTRIBUTE_CHARS,
    READY_CACHE_SECONDS,
    RECEIVE_RETRY_SECONDS,
    Action,
    Disposition,
    MessageOutcome,
    decide,
)
from tests.unit.worker.conftest import ERROR_TOPIC, World

DONE = JobReport(input_url="s3://v/a.mp4", job_id="a", status=JobStatus.SUCCEEDED)


def failed(kind: FailureKind, reason: str = "why", stage: str = "download", url: str = "s3://v/b.mp4") -> JobReport:
    return JobReport(input_url=url, job_id="b", failure=Failure(kind, reason, stage))


def test_decide_one_job() -> None:
    assert decide([DONE], receive_count=3) == MessageOutcome(Action.DELETE, reports=(DONE,), receive_count=3)
    lost = failed(FailureKind.PERMANENT, "video not found: s3://v/b.mp4", "resolve")
    assert decide([lost], receive_count=1) == MessageOutcome(
        Action.DEAD_LETTER, reason="video not found: s3://v/b.mp4", stage="resolve", reports=(lost,), failed=(lost,)
    )
    slow = failed(FailureKind.TRANSIENT, "GET: 503", "download")
    assert decide([slow], receive_count=2) == MessageOutcome(
        Action.RETRY_LATER, reason="GET: 503", stage="download", reports=(slow,), receive_count=2
    )
    stop = failed(FailureKind.CANCELLED, "shutdown: job handed back", "shutdown")
    assert decide([stop], receive_count=1) == MessageOutcome(
        Action.HAND_BACK, reason="shutdown: job handed back", reports=(stop,)
    )


def test_decide_several_records_by_the_most_urgent_kind() -> None:
    lost = failed(FailureKind.PERMANENT, "gone", "resolve", "s3://v/c.mp4")
    slow = failed(FailureKind.TRANSIENT, "503", "download")
    stop = failed(FailureKind.CANCELLED, "shutdown", "shutdown")
    assert decide([DONE, lost, slow], receive_count=1).action is Action.RETRY_LATER
    assert decide([DONE, lost, slow], receive_count=1).reason == "record 3 of 3 (s3://v/b.mp4): download: 503"
    assert decide([lost, slow, stop], receive_count=1).action is Action.HAND_BACK
    assert decide([lost, slow, stop], receive_count=1).reason == "shutdown"
    two = decide([DONE, lost], receive_count=1)
    assert two.reason == "record 2 of 2 (s3://v/c.mp4): resolve: gone", "two records were not both counted"
    both = decide([lost, DONE, lost], receive_count=1)
    assert both.action is Action.DEAD_LETTER and both.failed == (lost, lost) and both.stage == "resolve"
    assert both.reason == "record 1 of 3 (s3://v/c.mp4): resolve: gone; record 1 of 3 (s3://v/c.mp4): resolve: gone"


def test_an_unexpected_error_in_a_job_brings_the_message_back_later(world: World, monkeypatch) -> None:
    worker = world.worker()

    def broken(request, *, received=None):
        raise KeyError("bug")

    monkeypatch.setattr(worker.runner, "run", broken)
    handled = worker.handle(world.queue.take(world.job_message(job_id="j")))
    assert handled.outcome.action is Action.RETRY_LATER
    assert (handled.outcome.reason, handled.outcome.stage) == ("unexpected KeyError: 'bug'", "job")
    assert (
        handled.outcome.reports[0].job_id == "j" and handled.outcome.reports[0].input_url == "s3://videos/cam/clip.mp4"
    )


def test_a_failure_before_the_job_id_is_known_is_named_after_the_message(world: World) -> None:
    world.store.objects.pop(("videos", "cam/clip.mp4"))
    message = world.queue.take(world.job_message())  # no job_id: it would be derived from the object
    handled = world.worker().handle(message)
    assert handled.outcome.failed[0].job_id == message.message_id
    (notice,) = world.publisher.messages(ERROR_TOPIC)
    assert notice["inferenceId"] == message.message_id
    assert "outputLocation" not in notice["responseParameters"]


def test_the_reasons_of_a_hand_back_and_an_ignored_message(world: World) -> None:
    worker = world.worker()
    worker.stopping.set()
    handed = worker.handle(world.queue.take(world.job_message()))
    assert handed.outcome.reason == "shutting down before the job started"
    world.queue.messages.clear()
    ignored = world.worker().handle(world.queue.take(json.dumps({"Event": "s3:TestEvent"})))
    assert ignored.outcome.reason == "S3 test event"


def test_a_dead_letter_keeps_the_body_and_bounds_the_reason(world: World) -> None:
    world.worker().handle(world.queue.take(""))
    (letter,) = [world.dead_letters.messages[m] for m in world.dead_letters.visible()]
    assert letter.body == "(empty body)"
    world.dead_letters.messages.clear()
    records = [
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "videos"}, "object": {"key": f"{n}" + "k" * 900}}}
        for n in range(3)
    ]
    body = json.dumps({"Records": records})
    world.worker().handle(world.queue.take(body))
    (letter,) = [world.dead_letters.messages[m] for m in world.dead_letters.visible()]
    reason = letter.attributes[names.FAILURE_REASON_ATTRIBUTE]["StringValue"]
    assert len(reason) == MAX_REASON_ATTRIBUTE_CHARS and reason.startswith("record 1 of 3 (s3://videos/0kkk")
    assert letter.attributes[names.FAILURE_STAGE_ATTRIBUTE] == {"DataType": "String", "StringValue": "resolve"}
    assert letter.body == body


def test_a_failed_receive_waits_and_returns_nothing(world: World) -> None:
    world.queue.faults.fail("receive", "", Unavailable("ReceiveMessage", "503"))
    worker = world.worker()
    assert worker.receive() == [] and world.clock.waits == [RECEIVE_RETRY_SECONDS]
    assert not worker.receiving
    world.queue.put(world.job_message())
    assert len(worker.receive()) == 1 and not worker.receiving


def test_model_readiness_is_asked_at_most_every_ten_seconds(world: World, monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(world.model, "ready", lambda: asked.append(world.clock.now) or True)
    worker = world.worker()
    assert worker.model_ready() and worker.model_ready()
    world.clock.advance(READY_CACHE_SECONDS - 0.5)
    assert worker.model_ready() and len(asked) == 1
    world.clock.advance(1.0)
    assert worker.model_ready() and len(asked) == 2
    monkeypatch.setattr(world.model, "ready", lambda: False)
    world.clock.advance(READY_CACHE_SECONDS + 1)
    assert not worker.model_ready()


def test_time_in_backlog_is_measured_from_when_the_message_was_sent(world: World) -> None:
    world.queue.put(world.job_message())
    world.clock.advance(42.0)
    (message,) = world.queue.receive(wait_seconds=0, visibility_seconds=60)
    events: list[dict] = []
    worker = world.worker()
    worker.events = events.append
    worker.handle(message)
    assert events[0]["time_in_backlog"] == 42.0 and events[0]["message_id"] == message.message_id
    assert events[1]["settlement"].disposition is Disposition.DELETED
