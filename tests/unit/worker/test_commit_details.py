"""The commit protocol's records and reasons, exactly: what a later attempt, a reader or a person
finds in S3 and in the dead-letter queue."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from framescale.messages import S3Location
from framescale.worker.commit import FINALIZE_WINDOW_SECONDS, POLL_SECONDS, Completion, ResultStore
from framescale.worker.errors import PermanentJobError, TransientJobError, Unavailable
from framescale.worker.retry import RetryPolicy
from tests.fakes import FakeClock, FakeStore
from tests.unit.worker.test_commit import BASE, DETECTIONS, LINES, OTHER, RECORD, SUMMARY, plant_commit, summary

ATTEMPT = "a" * 32
STAGED = f"results/job-1/_staging/{ATTEMPT}/detections.jsonl"


def results_store(store: FakeStore, clock: FakeClock) -> ResultStore:
    retry = RetryPolicy(attempts=3, base_seconds=0.5, max_seconds=1.0, clock=clock)
    return ResultStore(
        store, S3Location("out", "results/job-1/"), "job-1", retry=retry, cancel=threading.Event(), clock=clock,
        attempt=ATTEMPT,
    )  # fmt: skip


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


def test_the_commit_record_and_the_files_are_written_as_documented(
    store: FakeStore, clock: FakeClock, lines: Path
) -> None:
    records: list[dict] = []

    def keep_record(operation: str, subject: str) -> None:
        if operation == "copy":  # the record is there now; the clean-up removes it later
            records.append(json.loads(store.body(RECORD) or b""))

    store.on_call = keep_record
    results = results_store(store, clock)
    staged = results.stage(lines)
    mine = summary(mine=True)
    done = results.commit(staged, mine)
    assert done.status is Completion.SUCCEEDED
    assert records == [
        {"format_version": 1, "job_id": "job-1", "attempt": ATTEMPT, "staged": STAGED, "staged_bytes": len(LINES),
         "summary": mine}
    ]  # fmt: skip
    assert store.body(SUMMARY) == json.dumps(mine, indent=2).encode()
    assert store.copies == [(STAGED, DETECTIONS, len(LINES))], "the single-request copy was not given the size"
    assert store.content_types == {
        BASE + f"_staging/{ATTEMPT}/detections.jsonl": "application/x-ndjson",
        RECORD: "application/json",
        SUMMARY: "application/json",
    }


@pytest.mark.parametrize(("kept", "given"), [(len(LINES), len(LINES)), ("12", None), (None, None)])
def test_a_repair_copies_with_the_size_the_record_kept(store: FakeStore, clock: FakeClock, kept, given) -> None:
    key = f"results/job-1/_staging/{OTHER}/detections.jsonl"
    store.put(f"s3://out/{key}", LINES)
    record = {"attempt": OTHER, "staged": key, "summary": summary(), "staged_bytes": kept}
    store.put(RECORD, json.dumps(record).encode())
    clock.advance(FINALIZE_WINDOW_SECONDS + 1)
    done = results_store(store, clock).completed()
    assert done is not None and done.status is Completion.REPAIRED
    assert store.copies == [(key, DETECTIONS, given)]


@pytest.mark.parametrize("age", [0.0, 3.0, 9.75])
def test_a_young_record_is_waited_for_exactly_the_rest_of_the_window(
    store: FakeStore, clock: FakeClock, age: float
) -> None:
    plant_commit(store)
    clock.advance(age)
    done = results_store(store, clock).completed()
    assert done is not None and done.status is Completion.REPAIRED
    assert sum(clock.waits) == pytest.approx(FINALIZE_WINDOW_SECONDS - age)
    assert all(wait <= POLL_SECONDS for wait in clock.waits)


@pytest.mark.parametrize(
    ("plant", "reason", "stage"),
    [
        (lambda s: s.put(SUMMARY, b"{}"),
         f"{SUMMARY} exists but is not a finished framescale summary of job job-1; "
         "it was left as it is and the job was not run: delete it to run the job again", "resolve"),
        (lambda s: s.put(RECORD, b"[]"),
         f"commit record {RECORD} is unreadable; it was left as it is and the job was not run: "
         "delete it to run the job again", "resolve"),
        (lambda s: s.put(DETECTIONS, b"x"),
         f"{DETECTIONS} exists but was not written by framescale; it was left as it is and the job was not run: "
         "move it away, or send the job with another job_id", "resolve"),
        (lambda s: plant_commit(s, staged=False),
         f"commit record {RECORD} names staged results s3://out/results/job-1/_staging/{OTHER}/detections.jsonl "
         "that no longer exist; delete the commit record to run the job again", "commit"),
    ],
    ids=["foreign-summary", "unreadable-record", "foreign-detections", "staged-gone"],
)  # fmt: skip
def test_each_refusal_says_what_was_found_and_what_to_do(
    store: FakeStore, clock: FakeClock, plant, reason: str, stage: str
) -> None:
    plant(store)
    clock.advance(FINALIZE_WINDOW_SECONDS + 1)
    with pytest.raises(PermanentJobError) as caught:
        results_store(store, clock).completed()
    assert (caught.value.reason, caught.value.stage) == (reason, stage)


def test_a_loser_whose_winner_is_still_publishing_says_so(store: FakeStore, clock: FakeClock, lines: Path) -> None:
    results = results_store(store, clock)
    staged = results.stage(lines)
    plant_commit(store)
    with pytest.raises(TransientJobError) as caught:
        results.commit(staged, summary())
    assert caught.value.stage == "commit"
    assert caught.value.reason == (
        "another attempt committed job job-1 but has not finished publishing it; "
        "the message comes back later to check (and repair it if that attempt died)"
    )


def test_a_failed_clean_up_leaves_the_results_complete(
    store: FakeStore, clock: FakeClock, lines: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.faults.fail("delete_keys", "", Unavailable("DELETE", "503"), times=5)
    results = results_store(store, clock)
    done = results.commit(results.stage(lines), summary())
    assert done.status is Completion.SUCCEEDED and store.body(SUMMARY) is not None
    assert store.body(RECORD) is not None  # left behind: storage, never correctness
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING" and "could not remove" in r.getMessage()]
    assert "s3:ListBucket and s3:DeleteObject" in warning.getMessage()
    assert warning.__dict__["reason"] == "DELETE: 503" and warning.__dict__["stage"] == "commit"
