"""The commit protocol against the in-memory store: every path writes each result file once.

Each test plants what earlier attempts left (a commit record, staged lines, a summary, someone
else's files), runs one attempt, and checks what it returned and what the folder holds, with
how many times each key was written.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from framescale.messages import S3Location
from framescale.worker.commit import (
    ATTEMPT_METADATA,
    FINALIZE_WINDOW_SECONDS,
    Completion,
    ResultStore,
    Staged,
)
from framescale.worker.errors import (
    BucketNotFound,
    JobCancelled,
    PermanentJobError,
    ServiceError,
    TransientJobError,
    Unavailable,
)
from framescale.worker.retry import RetryPolicy
from tests.fakes import FakeClock, FakeStore

FOLDER = S3Location("out", "results/job-1/")
BASE = "s3://out/results/job-1/"
SUMMARY, DETECTIONS, RECORD = BASE + "summary.json", BASE + "detections.jsonl", BASE + "_staging/commit.json"
OTHER = "f" * 32  # another attempt's id
LINES = b'{"frame":0,"pts_ms":0,"detections":[]}\n'


def summary(job_id: str = "job-1", **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "status": "succeeded", "frames": {"sampled": 1}, **extra}


def results_store(store: FakeStore, clock: FakeClock, *, attempt: str = "a" * 32) -> ResultStore:
    return ResultStore(
        store,
        FOLDER,
        "job-1",
        retry=RetryPolicy(attempts=3, base_seconds=0.5, max_seconds=1.0, clock=clock),
        cancel=threading.Event(),
        clock=clock,
        attempt=attempt,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> FakeStore:
    return FakeStore("out", clock=clock)


@pytest.fixture
def lines(tmp_path: Path) -> Path:
    path = tmp_path / "detections.jsonl"
    path.write_bytes(LINES)
    return path


def plant_commit(store: FakeStore, attempt: str = OTHER, *, staged: bool = True, **summary_extra: Any) -> dict:
    key = f"results/job-1/_staging/{attempt}/detections.jsonl"
    if staged:
        store.put(f"s3://out/{key}", LINES)
    theirs = summary(planted=True, **summary_extra)
    record = {"format_version": 1, "job_id": "job-1", "attempt": attempt, "staged": key, "summary": theirs}
    store.put(RECORD, json.dumps(record).encode())
    return theirs


def run_attempt(store: FakeStore, clock: FakeClock, lines: Path, **summary_extra: Any) -> tuple[Completion, dict]:
    results = results_store(store, clock)
    assert results.completed() is None
    done = results.commit(results.stage(lines), summary(**summary_extra))
    return done.status, done.summary


def assert_published_once(store: FakeStore) -> None:
    assert store.written(SUMMARY) == 1 and store.written(DETECTIONS) == 1
    assert store.body(DETECTIONS) == LINES
    assert store.keys(BASE) == [DETECTIONS, SUMMARY], "staged objects left behind"


def test_a_fresh_attempt_publishes_lines_then_summary_once(store: FakeStore, clock: FakeClock, lines: Path) -> None:
    status, published = run_attempt(store, clock, lines, mine=True)
    assert status is Completion.SUCCEEDED and published["mine"]
    assert json.loads(store.body(SUMMARY) or b"") == published
    assert_published_once(store)
    assert store.objects[("out", "results/job-1/detections.jsonl")].metadata == {ATTEMPT_METADATA: "a" * 32}
    # detections.jsonl is copied before summary.json is written.
    order = [subject for op, subject in store.faults.calls if op in ("copy", "put_if_absent")]
    assert order.index(DETECTIONS) < order.index(SUMMARY)


def test_a_lost_answer_to_the_commit_put_is_still_a_win(store: FakeStore, clock: FakeClock, lines: Path) -> None:
    # The record lands but the answer never arrives; the retried PUT meets the attempt's own record.
    store.faults.fail("put_if_absent", "commit.json$", Unavailable("PUT", "connection reset"), lost_answer=True)
    status, _ = run_attempt(store, clock, lines)
    assert status is Completion.SUCCEEDED
    assert store.faults.count("put_if_absent", "commit.json$") == 2
    assert_published_once(store)


def test_a_losing_attempt_never_publishes_and_returns_the_winners_summary(
    store: FakeStore, clock: FakeClock, lines: Path
) -> None:
    results = results_store(store, clock)
    assert results.completed() is None
    staged = results.stage(lines)
    # Another attempt commits meanwhile and finishes publishing while this one waits.
    theirs = plant_commit(store)
    polls = []

    def winner_finishes(operation: str, subject: str) -> None:
        if operation == "get" and subject == SUMMARY:
            polls.append(1)
            if len(polls) == 3:
                store.put(SUMMARY, json.dumps(theirs).encode())

    store.on_call = winner_finishes
    done = results.commit(staged, summary(mine=True))
    assert done.status is Completion.SKIPPED and done.summary == theirs
    assert store.written(DETECTIONS) == 0, "the loser wrote detections.jsonl"
    assert store.body(staged.key and f"s3://out/{staged.key}") is None, "the loser left its staged lines"


def test_a_loser_whose_winner_never_finishes_retries_later(store: FakeStore, clock: FakeClock, lines: Path) -> None:
    results = results_store(store, clock)
    staged = results.stage(lines)
    plant_commit(store)
    with pytest.raises(TransientJobError, match="has not finished publishing"):
        results.commit(staged, summary())
    assert sum(clock.waits) == pytest.approx(FINALIZE_WINDOW_SECONDS), "it did not wait the finalize window"
    assert store.written(DETECTIONS) == 0 and store.written(SUMMARY) == 0


def test_a_stale_commit_record_is_repaired_without_rerunning(store: FakeStore, clock: FakeClock) -> None:
    theirs = plant_commit(store)
    clock.advance(FINALIZE_WINDOW_SECONDS + 1)  # the committing attempt is long dead
    done = results_store(store, clock).completed()
    assert done is not None and done.status is Completion.REPAIRED and done.summary == theirs
    assert clock.waits == [], "an old record was waited for"
    assert_published_once(store)


def test_a_young_commit_record_is_waited_for_not_repaired_twice(store: FakeStore, clock: FakeClock) -> None:
    theirs = plant_commit(store)
    polls = []

    def finalizer_finishes(operation: str, subject: str) -> None:
        if operation == "get" and subject == SUMMARY:
            polls.append(1)
            if len(polls) == 4:  # the first look, then three polls
                store.put(SUMMARY, json.dumps(theirs).encode())

    store.on_call = finalizer_finishes
    done = results_store(store, clock).completed()
    assert done is not None and done.status is Completion.SKIPPED and done.summary == theirs
    assert store.written(DETECTIONS) == 0, "it copied while the committing attempt was finalizing"


def test_a_repair_after_the_copy_does_not_copy_again(store: FakeStore, clock: FakeClock) -> None:
    plant_commit(store)
    # The committed attempt copied its lines, then died before writing the summary.
    store.put(DETECTIONS, LINES, {ATTEMPT_METADATA: OTHER})
    clock.advance(FINALIZE_WINDOW_SECONDS + 1)
    done = results_store(store, clock).completed()
    assert done is not None and done.status is Completion.REPAIRED
    assert_published_once(store)


def test_a_commit_whose_staged_lines_are_gone_stops_the_job(store: FakeStore, clock: FakeClock) -> None:
    plant_commit(store, staged=False)
    clock.advance(FINALIZE_WINDOW_SECONDS + 1)
    with pytest.raises(PermanentJobError, match="no longer exist; delete the commit record"):
        results_store(store, clock).completed()
    assert store.written(SUMMARY) == 0 and store.body(RECORD) is not None


def test_a_finished_job_is_skipped_and_leftover_staging_removed(store: FakeStore, clock: FakeClock) -> None:
    store.put(SUMMARY, json.dumps(summary()).encode())
    store.put(DETECTIONS, LINES, {ATTEMPT_METADATA: OTHER})
    plant_commit(store)  # a finalizer died after the summary, before its clean-up
    done = results_store(store, clock).completed()
    assert done is not None and done.status is Completion.SKIPPED
    assert store.keys(BASE) == [DETECTIONS, SUMMARY]
    assert store.written(SUMMARY) == 1 and store.written(DETECTIONS) == 1


def test_a_commit_that_lands_after_another_attempt_finished_defers_to_it(
    store: FakeStore, clock: FakeClock, lines: Path
) -> None:
    results = results_store(store, clock)
    assert results.completed() is None
    staged = results.stage(lines)
    # The other attempt finished and cleaned up before this commit record landed.
    store.put(SUMMARY, json.dumps(summary(theirs=True)).encode())
    store.put(DETECTIONS, LINES, {ATTEMPT_METADATA: OTHER})
    done = results.commit(staged, summary())
    assert done.status is Completion.SKIPPED and done.summary["theirs"]
    assert store.keys(BASE) == [DETECTIONS, SUMMARY], "its own record or staged lines were left"
    assert store.written(DETECTIONS) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"job_id": "jo',
        json.dumps(summary("another-job")).encode(),
        json.dumps({"job_id": "job-1", "status": "running"}).encode(),
        b"[1, 2]",
    ],
    ids=["unreadable", "another-job", "not-finished", "not-an-object"],
)
def test_a_summary_framescale_did_not_write_stops_the_job_and_stays(
    store: FakeStore, clock: FakeClock, body: bytes
) -> None:
    store.put(SUMMARY, body)
    with pytest.raises(PermanentJobError, match="delete it to run the job again"):
        results_store(store, clock).completed()
    assert store.body(SUMMARY) == body and store.written(SUMMARY) == 1


def test_an_unreadable_commit_record_stops_the_job_and_stays(store: FakeStore, clock: FakeClock) -> None:
    store.put(RECORD, b'{"attempt": 3}')
    with pytest.raises(PermanentJobError, match=r"commit record .* is unreadable"):
        results_store(store, clock).completed()
    assert store.body(RECORD) == b'{"attempt": 3}'


def test_a_foreign_detections_file_stops_the_job_and_stays(store: FakeStore, clock: FakeClock) -> None:
    store.put(DETECTIONS, b"someone else's\n")
    with pytest.raises(PermanentJobError, match="not written by framescale"):
        results_store(store, clock).completed()
    assert store.body(DETECTIONS) == b"someone else's\n" and store.written(DETECTIONS) == 1


def test_a_detections_file_of_an_earlier_framescale_run_is_replaced(
    store: FakeStore, clock: FakeClock, lines: Path
) -> None:
    # Its summary was deleted to run the job again (what the README tells a user to do).
    store.put(DETECTIONS, b"older lines\n", {ATTEMPT_METADATA: OTHER})
    status, _ = run_attempt(store, clock, lines)
    assert status is Completion.SUCCEEDED and store.body(DETECTIONS) == LINES


def test_foreign_files_under_staging_survive_the_clean_up(store: FakeStore, clock: FakeClock, lines: Path) -> None:
    foreign = [BASE + "_staging/notes.txt", BASE + "_staging/x/detections.jsonl", BASE + "_staging/commit.json.bak"]
    for url in foreign:
        store.put(url, b"not framescale's")
    run_attempt(store, clock, lines)
    assert store.keys(BASE) == sorted([DETECTIONS, SUMMARY, *foreign])


def test_a_missing_output_bucket_is_reported_as_such(clock: FakeClock) -> None:
    with pytest.raises(BucketNotFound):
        results_store(FakeStore(clock=clock), clock).completed()


def test_transient_store_failures_are_retried_then_surface_typed(store: FakeStore, clock: FakeClock) -> None:
    store.faults.fail("get", "summary.json$", Unavailable("GET", "503"), times=2)
    assert results_store(store, clock).completed() is None
    store.faults.fail("get", "summary.json$", Unavailable("GET", "503"), times=3)
    with pytest.raises(ServiceError) as caught:
        results_store(store, clock).completed()
    assert caught.value.transient


def test_a_cancel_while_waiting_for_another_attempt_hands_the_job_back(store: FakeStore, clock: FakeClock) -> None:
    plant_commit(store)
    results = results_store(store, clock)
    results.cancel.set()
    with pytest.raises(JobCancelled):
        results.completed()
    assert store.written(DETECTIONS) == 0


def test_staging_uploads_where_no_reader_looks(store: FakeStore, clock: FakeClock, lines: Path) -> None:
    staged = results_store(store, clock).stage(lines)
    assert staged == Staged(f"results/job-1/_staging/{'a' * 32}/detections.jsonl", len(LINES))
    assert store.keys(BASE) == [f"s3://out/{staged.key}"]
