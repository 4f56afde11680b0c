"""The commit protocol's edges: how long a loser polls, which records are unreadable, what each
path logs, and what a failed clean-up reports (the results stay complete whatever it says)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from framescale.messages import S3Location
from framescale.worker.commit import FINALIZE_WINDOW_SECONDS, POLL_SECONDS, Completion, ResultStore
from framescale.worker.errors import JobCancelled, PermanentJobError, TransientJobError, Unavailable
from framescale.worker.retry import RetryPolicy
from tests.fakes import FakeClock, FakeStore
from tests.unit.worker.test_commit import DETECTIONS, LINES, OTHER, RECORD, SUMMARY, plant_commit, summary

ATTEMPT = "a" * 32
COMMIT_LOG = "framescale.worker.commit"
CLEANUP_WARNING = (
    "could not remove staged results (the job's results are not affected); the worker needs "
    "s3:ListBucket and s3:DeleteObject on the output prefix"
)


class RefusingStore(FakeStore):
    """A FakeStore whose DeleteObjects refuses the keys it is told to, per key, as S3 answers."""

    def __init__(self, *buckets: str, clock: FakeClock, refused: Sequence[str] = ()) -> None:
        super().__init__(*buckets, clock=clock)
        self.refused = set(refused)

    def delete_keys(self, bucket: str, keys: Sequence[str]) -> list[tuple[str, str]]:
        super().delete_keys(bucket, [key for key in keys if key not in self.refused])
        return [(key, "AccessDenied") for key in keys if key in self.refused]


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


def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == COMMIT_LOG and r.getMessage() == message]


def test_a_loser_polls_once_per_half_second_for_the_whole_window(
    store: FakeStore, clock: FakeClock, lines: Path
) -> None:
    results = results_store(store, clock)
    staged = results.stage(lines)
    plant_commit(store)
    with pytest.raises(TransientJobError):
        results.commit(staged, summary())
    assert clock.waits == [POLL_SECONDS] * int(FINALIZE_WINDOW_SECONDS / POLL_SECONDS)


def test_a_cancel_while_waiting_says_what_was_given_up(store: FakeStore, clock: FakeClock) -> None:
    plant_commit(store)
    results = results_store(store, clock)
    results.cancel.set()
    with pytest.raises(JobCancelled) as caught:
        results.completed()
    assert str(caught.value) == "shutdown: job handed back while waiting for another attempt to finish it"


@pytest.mark.parametrize(
    "record",
    [
        {"attempt": ATTEMPT, "staged": "results/job-1/_staging/x/detections.jsonl", "summary": "done"},
        {"attempt": ATTEMPT, "staged": 5, "summary": {"job_id": "job-1"}},
        {"attempt": 7, "staged": "results/job-1/_staging/x/detections.jsonl", "summary": {"job_id": "job-1"}},
    ],
    ids=["summary-not-an-object", "staged-not-a-key", "attempt-not-an-id"],
)
def test_a_commit_record_with_any_field_of_the_wrong_type_is_unreadable(
    store: FakeStore, clock: FakeClock, record: dict[str, Any]
) -> None:
    store.put(RECORD, json.dumps(record).encode())
    with pytest.raises(PermanentJobError, match="is unreadable"):
        results_store(store, clock).completed()


def test_a_fresh_commit_copies_without_asking_what_detections_holds(
    store: FakeStore, clock: FakeClock, lines: Path
) -> None:
    results = results_store(store, clock)
    results.commit(results.stage(lines), summary())
    # Nothing can have copied a record that landed just now: one request fewer per job.
    assert store.faults.count("head", "detections.jsonl$") == 0


def test_a_repair_logs_which_attempt_it_finishes(
    store: FakeStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    plant_commit(store)
    clock.advance(FINALIZE_WINDOW_SECONDS + 1)
    done = results_store(store, clock).completed()
    assert done is not None and done.status is Completion.REPAIRED
    (record,) = logged(
        caplog, "results were committed but never finalized (the attempt crashed); finalizing them without re-running"
    )
    assert (record.levelname, record.__dict__["attempt"], record.__dict__["stage"]) == ("WARNING", OTHER, "commit")


def test_a_loser_logs_that_the_winners_results_stand(
    store: FakeStore, clock: FakeClock, lines: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    results = results_store(store, clock)
    staged = results.stage(lines)
    theirs = plant_commit(store)
    store.on_call = lambda op, subject: (
        op == "get" and subject == SUMMARY and store.put(SUMMARY, json.dumps(theirs).encode())
    )
    assert results.commit(staged, summary()).status is Completion.SKIPPED
    (record,) = logged(caplog, "another attempt committed this job first; its results stand")
    assert (record.levelname, record.__dict__["stage"]) == ("INFO", "commit")


def test_a_late_commit_logs_that_the_finished_results_stand(
    store: FakeStore, clock: FakeClock, lines: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    results = results_store(store, clock)
    staged = results.stage(lines)
    store.put(SUMMARY, json.dumps(summary(theirs=True)).encode())
    assert results.commit(staged, summary()).status is Completion.SKIPPED
    (record,) = logged(caplog, "this job was finished by another attempt meanwhile; its results stand")
    assert (record.levelname, record.__dict__["stage"]) == ("INFO", "commit")


def test_a_failed_listing_of_staging_is_reported_with_its_error(
    store: FakeStore, clock: FakeClock, lines: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.faults.fail("list_keys", "", Unavailable("LIST s3://out/results/job-1/_staging/", "503"), times=5)
    results = results_store(store, clock)
    assert results.commit(results.stage(lines), summary()).status is Completion.SUCCEEDED
    (record,) = logged(caplog, CLEANUP_WARNING)
    assert record.levelname == "WARNING" and record.__dict__["reason"] == "LIST s3://out/results/job-1/_staging/: 503"


def test_a_failed_delete_of_the_losers_staged_lines_is_reported_with_its_error(
    store: FakeStore, clock: FakeClock, lines: Path, caplog: pytest.LogCaptureFixture
) -> None:
    results = results_store(store, clock)
    staged = results.stage(lines)
    plant_commit(store)
    store.faults.fail("delete", "", Unavailable("DELETE", "503"), times=5)
    with pytest.raises(TransientJobError):
        results.commit(staged, summary())
    (record,) = logged(caplog, CLEANUP_WARNING)
    assert record.__dict__["reason"] == "DELETE: 503" and record.__dict__["stage"] == "commit"


def test_keys_refused_by_a_batch_delete_are_reported_once_per_batch(
    clock: FakeClock, lines: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record_key, staged_key = "results/job-1/_staging/commit.json", f"results/job-1/_staging/{ATTEMPT}/detections.jsonl"
    store = RefusingStore("out", clock=clock, refused=[record_key, staged_key])
    results = results_store(store, clock)
    done = results.commit(results.stage(lines), summary())
    assert done.status is Completion.SUCCEEDED and store.body(SUMMARY) is not None and store.body(DETECTIONS)
    (record,) = logged(caplog, CLEANUP_WARNING)
    assert record.__dict__["reason"] == f"DELETE s3://out/{staged_key}: AccessDenied"  # the first, in key order
