"""SlotWorker.handle against the in-memory world: what becomes of the message for each outcome."""

from __future__ import annotations

import json
import threading
import time

import pytest

from framescale import names
from framescale.worker.errors import Unavailable
from framescale.worker.loop import Action, Disposition, SlotWorker
from framescale.worker.metrics import WorkerMetrics
from tests.fakes import FakeClock
from tests.unit.worker.conftest import ERROR_TOPIC, SUCCESS_TOPIC, VIDEO_URL, World


def reason_of(message_attributes: dict) -> str:
    return str(message_attributes[names.FAILURE_REASON_ATTRIBUTE]["StringValue"])


def dead_lettered(world: World) -> list:
    return [world.dead_letters.messages[m] for m in world.dead_letters.visible()]


def test_a_finished_job_deletes_its_message_and_says_so(world: World) -> None:
    events: list[dict] = []
    worker = world.worker()
    worker.events = events.append
    message = world.queue.take(world.job_message(job_id="job-1"))
    handled = worker.handle(message)
    assert handled.outcome.action is Action.DELETE and handled.settlement.disposition is Disposition.DELETED
    assert world.queue.deleted == [message.message_id] and world.queue.visibility_changes == []
    (done,) = world.publisher.messages(SUCCESS_TOPIC)
    assert done["invocationStatus"] == "Completed" and done["inferenceId"] == "job-1"
    assert done["requestParameters"]["inputLocation"] == VIDEO_URL
    assert done["responseParameters"]["outputLocation"] == "s3://out/results/job-1/"
    assert world.publisher.messages(ERROR_TOPIC) == [] and dead_lettered(world) == []
    assert [event["type"] for event in events] == ["job_started", "job_finished"]
    assert events[0]["receipt_handle"] == message.receipt_handle and events[1]["outcome"] is handled.outcome
    assert not worker.in_job


def test_an_invalid_message_goes_to_the_dead_letter_queue_with_its_reason(world: World) -> None:
    message = world.queue.take("{not json", **{"trace": {"DataType": "String", "StringValue": "t-1"}})
    handled = world.worker().handle(message)
    assert handled.outcome.action is Action.DEAD_LETTER and handled.outcome.stage == "parse"
    assert handled.settlement.disposition is Disposition.DEAD_LETTERED
    (letter,) = dead_lettered(world)
    assert letter.body == "{not json" and "not JSON" in reason_of(letter.attributes)
    assert letter.attributes[names.FAILURE_STAGE_ATTRIBUTE]["StringValue"] == "parse"
    assert letter.attributes["trace"]["StringValue"] == "t-1", "the sender's attributes were dropped"
    assert world.queue.deleted == [message.message_id]
    (failed,) = world.publisher.messages(ERROR_TOPIC)
    assert failed["inferenceId"] == message.message_id and failed["failureReason"].startswith("parse: ")


def test_a_permanent_job_failure_is_dead_lettered_and_notified(world: World) -> None:
    world.store.objects.pop(("videos", "cam/clip.mp4"))
    message = world.queue.take(world.job_message(job_id="lost"))
    handled = world.worker().handle(message)
    assert handled.outcome.action is Action.DEAD_LETTER and handled.outcome.stage == "resolve"
    (letter,) = dead_lettered(world)
    assert "video not found" in reason_of(letter.attributes)
    (failed,) = world.publisher.messages(ERROR_TOPIC)
    assert failed["inferenceId"] == "lost" and "video not found" in failed["failureReason"]
    assert world.queue.deleted == [message.message_id]


def test_our_attributes_come_first_and_the_total_stays_within_sqs_limit(world: World) -> None:
    theirs = {f"a{n}": {"DataType": "String", "StringValue": str(n)} for n in range(10)}
    theirs[names.FAILURE_REASON_ATTRIBUTE] = {"DataType": "String", "StringValue": "stale"}
    world.queue.put("[]", attributes=theirs)
    (message,) = world.queue.receive(wait_seconds=0, visibility_seconds=60)
    world.worker().handle(message)
    (letter,) = dead_lettered(world)
    assert len(letter.attributes) == 10 and reason_of(letter.attributes) != "stale"


@pytest.mark.parametrize(("receive_count", "delay"), [(1, 30), (2, 60), (4, 240), (30, 3600)])
def test_a_transient_failure_hands_the_message_back_with_a_growing_delay(
    world: World, receive_count: int, delay: int
) -> None:
    world.store.faults.fail("download", "clip", Unavailable("GET", "reset"), times=10)
    message = world.queue.take(world.job_message())
    message = type(message)(**{**message.__dict__, "receive_count": receive_count})
    handled = world.worker().handle(message)
    assert handled.outcome.action is Action.RETRY_LATER and handled.outcome.stage == "download"
    assert handled.settlement == type(handled.settlement)(Disposition.DELAYED, delay)
    assert world.queue.visibility_changes == [(message.message_id, delay)]
    assert world.queue.deleted == [] and dead_lettered(world) == [] and world.publisher.published == []


def test_a_message_taken_while_stopping_is_handed_back_unrun(world: World) -> None:
    worker = world.worker()
    worker.stopping.set()
    message = world.queue.take(world.job_message())
    handled = worker.handle(message)
    assert handled.outcome.action is Action.HAND_BACK
    assert world.queue.visibility_changes == [(message.message_id, 0)] and world.model.batches == []


def test_a_cancelled_job_is_handed_back_at_once(world: World) -> None:
    worker = world.worker()
    worker.cancel.set()
    message = world.queue.take(world.job_message())
    handled = worker.handle(message)
    assert handled.outcome.action is Action.HAND_BACK and handled.settlement.disposition is Disposition.HANDED_BACK
    assert world.queue.visibility_changes == [(message.message_id, 0)] and world.queue.deleted == []


def test_a_test_event_is_deleted_quietly(world: World) -> None:
    message = world.queue.take(json.dumps({"Event": "s3:TestEvent"}))
    handled = world.worker().handle(message)
    assert handled.outcome.action is Action.IGNORE and world.queue.deleted == [message.message_id]
    assert world.publisher.published == [] and dead_lettered(world) == []


def test_a_failed_dead_lettering_stays_a_permanent_failure(world: World) -> None:
    world.dead_letters.faults.fail("send", "", Unavailable("SendMessage", "503"))
    metrics = WorkerMetrics()
    worker = world.worker()
    events: list[dict] = []
    worker.events = events.append
    message = world.queue.take("[]")
    handled = worker.handle(message)
    for event in events:
        metrics.observe(event)
    # Decided once: the action stays a dead-letter; settling says what it managed.
    assert handled.outcome.action is Action.DEAD_LETTER
    assert handled.settlement == type(handled.settlement)(Disposition.DELAYED, 30)
    assert world.queue.deleted == [] and world.queue.visibility_changes == [(message.message_id, 30)]
    assert world.publisher.messages(ERROR_TOPIC) == [], "a failure was notified that is not settled yet"
    sample = metrics.registry.get_sample_value
    assert sample("framescale_worker_invocations_total", {"outcome": "dead_lettered"}) == 1
    assert sample("framescale_worker_invocation_failures_total", {"kind": "permanent", "stage": "parse"}) == 1
    assert sample("framescale_worker_invocation_failures_total", {"kind": "transient", "stage": "parse"}) is None


def test_a_failed_delete_leaves_the_message_to_come_back(world: World) -> None:
    world.queue.faults.fail("delete", "", Unavailable("DeleteMessage", "500"))
    message = world.queue.take(world.job_message(job_id="job-1"))
    handled = world.worker().handle(message)
    assert handled.outcome.action is Action.DELETE and handled.settlement.disposition is Disposition.LEFT
    assert message.message_id in world.queue.messages
    # It comes back and is found done: skipped, deleted, nothing written again.
    world.clock.advance(200)
    (again,) = world.queue.receive(wait_seconds=0, visibility_seconds=60)
    handled = world.worker().handle(again)
    assert handled.settlement.disposition is Disposition.DELETED
    assert handled.outcome.reports[0].status.value == "skipped"
    assert world.store.written("s3://out/results/job-1/summary.json") == 1


def test_records_done_before_a_failing_one_are_notified(world: World) -> None:
    def record(key: str) -> dict:
        return {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "videos"}, "object": {"key": key}}}

    message = world.queue.take(json.dumps({"Records": [record("cam/clip.mp4"), record("cam/missing.mp4")]}))
    handled = world.worker().handle(message)
    assert handled.outcome.action is Action.DEAD_LETTER
    (done,) = world.publisher.messages(SUCCESS_TOPIC)
    (failed,) = world.publisher.messages(ERROR_TOPIC)
    assert done["requestParameters"]["inputLocation"] == VIDEO_URL
    assert failed["requestParameters"]["inputLocation"] == "s3://videos/cam/missing.mp4"


def test_the_heartbeat_beats_every_third_of_the_visibility_timeout_and_stops_with_the_job(world: World) -> None:
    clock = FakeClock(auto=False)
    world.clock = world.queue.clock = world.store.clock = clock
    world.model.hold = threading.Event()
    worker = world.worker(visibility_timeout_seconds=120)
    message = world.queue.take(world.job_message())
    job = threading.Thread(target=worker.handle, args=(message,), daemon=True)
    job.start()

    def beats(count: int) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if len(world.queue.visibility_changes) >= count:
                return True
            time.sleep(0.005)
        return False

    assert beats_soon(lambda: world.model.calls), "the job never reached the model"
    clock.advance(39.0)
    time.sleep(0.05)
    assert world.queue.visibility_changes == [], "a beat came before a third of the timeout"
    clock.advance(1.0)
    assert beats(1) and world.queue.visibility_changes == [(message.message_id, 120)]
    clock.advance(40.0)
    assert beats(2)
    world.model.hold.set()
    job.join(10)
    assert not job.is_alive() and world.queue.deleted == [message.message_id]
    clock.advance(200.0)
    time.sleep(0.05)
    assert len(world.queue.visibility_changes) == 2, "the heartbeat outlived the job"


def beats_soon(check, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return False


def test_run_takes_no_job_while_the_model_is_not_ready(world: World) -> None:
    world.model.is_ready = False
    world.queue.put(world.job_message())
    worker = world.worker()
    waits = 0
    original = world.clock.wait

    def counting_wait(event: threading.Event, seconds: float) -> bool:
        nonlocal waits
        waits += 1
        if waits >= 3:
            worker.stopping.set()
        return original(event, seconds)

    world.clock.wait = counting_wait  # type: ignore[method-assign]
    worker.run()
    assert world.queue.faults.count("receive") == 0 and len(world.queue.visible()) == 1


def test_run_stops_taking_jobs_once_orphaned(world: World) -> None:
    world.queue.put(world.job_message())
    worker = world.worker()
    worker.orphaned = lambda: True
    worker.run()
    assert worker.stopping.is_set()
    assert world.queue.faults.count("receive") == 0 and len(world.queue.visible()) == 1


def test_a_message_in_hand_when_orphaned_is_handed_back(world: World) -> None:
    worker = world.worker()
    worker.orphaned = lambda: True
    message = world.queue.take(world.job_message())
    handled = worker.handle(message)
    assert handled.outcome.action is Action.HAND_BACK and world.model.batches == []


def test_run_handles_what_it_receives_until_stopped(world: World) -> None:
    for number in range(3):
        world.queue.put(world.job_message(job_id=f"job-{number}"))
    worker: SlotWorker = world.worker()

    def stop_when_empty(event: dict) -> None:
        if event["type"] == "job_finished" and not world.queue.messages:
            worker.stopping.set()

    worker.events = stop_when_empty
    worker.run()
    assert sorted(world.queue.deleted) == ["m-1", "m-2", "m-3"]
    assert len(world.publisher.messages(SUCCESS_TOPIC)) == 3


def s3_record(key: str) -> dict:
    return {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "videos"}, "object": {"key": key}}}


def test_every_record_is_attempted_and_each_failure_has_its_own_reason(world: World) -> None:
    world.store.put("s3://videos/cam/third.mp4", world.video.path.read_bytes())
    keys = ["cam/clip.mp4", "cam/missing.mp4", "cam/third.mp4"]
    message = world.queue.take(json.dumps({"Records": [s3_record(key) for key in keys]}))
    handled = world.worker().handle(message)
    assert handled.outcome.action is Action.DEAD_LETTER
    (letter,) = dead_lettered(world)
    assert reason_of(letter.attributes) == (
        "record 2 of 3 (s3://videos/cam/missing.mp4): resolve: video not found: s3://videos/cam/missing.mp4"
    )
    done = world.publisher.messages(SUCCESS_TOPIC)
    assert [n["requestParameters"]["inputLocation"] for n in done] == ["s3://videos/cam/clip.mp4",
                                                                        "s3://videos/cam/third.mp4"]  # fmt: skip
    (failed,) = world.publisher.messages(ERROR_TOPIC)
    assert failed["requestParameters"]["inputLocation"] == "s3://videos/cam/missing.mp4"
    assert failed["failureReason"] == "resolve: video not found: s3://videos/cam/missing.mp4"
    assert world.queue.deleted == [message.message_id]


def test_two_failing_records_are_both_named_and_notified(world: World) -> None:
    keys = ["cam/gone-1.mp4", "cam/clip.mp4", "cam/gone-2.mp4"]
    world.worker().handle(world.queue.take(json.dumps({"Records": [s3_record(key) for key in keys]})))
    (letter,) = dead_lettered(world)
    assert reason_of(letter.attributes).count("video not found") == 2
    assert "record 1 of 3" in reason_of(letter.attributes) and "record 3 of 3" in reason_of(letter.attributes)
    failed = world.publisher.messages(ERROR_TOPIC)
    assert sorted(n["requestParameters"]["inputLocation"] for n in failed) == [
        "s3://videos/cam/gone-1.mp4",
        "s3://videos/cam/gone-2.mp4",
    ]


def test_a_transient_record_retries_the_message_without_redoing_the_finished_ones(world: World) -> None:
    world.store.put("s3://videos/cam/flaky.mp4", world.video.path.read_bytes() + b"\0")
    world.store.put("s3://videos/cam/third.mp4", world.video.path.read_bytes() + b"\0\0")
    keys = ["cam/clip.mp4", "cam/flaky.mp4", "cam/third.mp4"]
    world.queue.put(json.dumps({"Records": [s3_record(key) for key in keys]}))
    world.store.faults.fail("download", "flaky", Unavailable("GET", "reset"), times=3)
    (message,) = world.queue.receive(wait_seconds=0, visibility_seconds=60)
    handled = world.worker().handle(message)
    assert handled.outcome.action is Action.RETRY_LATER and "record 2 of 3" in (handled.outcome.reason or "")
    assert [r.status.value for r in handled.outcome.reports] == ["succeeded", "failed", "succeeded"]
    calls = len(world.model.batches)
    world.clock.advance(handled.settlement.delay + 1)
    (again,) = world.queue.receive(wait_seconds=0, visibility_seconds=60)
    handled = world.worker().handle(again)
    assert [r.status.value for r in handled.outcome.reports] == ["skipped", "succeeded", "skipped"]
    assert len(world.model.batches) == calls + 1, "a finished record was run again"  # one Predict per job here
    assert handled.settlement.disposition is Disposition.DELETED
