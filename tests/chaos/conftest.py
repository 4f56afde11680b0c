"""Chaos fixtures: versioned output buckets (to count writes) and per-test model servers."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framescale import results
from framescale.local import stack as local_stack
from framescale.local.videos import SyntheticVideo, write_synthetic_video
from framescale.local.worker_process import WorkerProcess
from framescale.worker.sampling import expected_sample_count
from tests.conftest import worker_log
from tests.support import client, read_lines, read_summary, unique, upload, wait_for


def chaos_stack(name: str, *, max_receive_count: int = 10) -> local_stack.LocalStack:
    """A stack whose output bucket is versioned, so every write of a result is counted."""
    stack = local_stack.provision(unique(name), max_receive_count=max_receive_count)
    client("s3").put_bucket_versioning(Bucket=stack.output_bucket, VersioningConfiguration={"Status": "Enabled"})
    return stack


def version_counts(stack: local_stack.LocalStack, prefix: str = "results/") -> collections.Counter[str]:
    """How many times each key under ``prefix`` was written (the bucket is versioned).

    One paginated listing for all jobs: moto lists versions by scanning the whole bucket, so a
    listing per job makes checking a burst of jobs quadratic.
    """
    pages = client("s3").get_paginator("list_object_versions").paginate(Bucket=stack.output_bucket, Prefix=prefix)
    return collections.Counter(version["Key"] for page in pages for version in page.get("Versions", []))


def versions(stack: local_stack.LocalStack, job_id: str, name: str = results.SUMMARY_FILE) -> int:
    """How many times ``<job>/<name>`` was written."""
    key = f"results/{job_id}/{name}"
    return version_counts(stack, key)[key]


def staged_objects(stack: local_stack.LocalStack) -> list[str]:
    """Objects under any job's ``_staging/`` folder that still exist (not only as old versions)."""
    pages = client("s3").get_paginator("list_objects_v2").paginate(Bucket=stack.output_bucket, Prefix="results/")
    return [item["Key"] for page in pages for item in page.get("Contents", []) if "/_staging/" in item["Key"]]


def in_flight_pids(worker: WorkerProcess) -> set[int]:
    """Slot processes whose last message was received and not yet settled (as their log says)."""
    holding: dict[int, bool] = {}
    for record in worker_log(worker):
        if record.get("message") == "message received":
            holding[record["pid"]] = True
        elif record.get("message") == "message settled":
            holding[record["pid"]] = False
    return {pid for pid, held in holding.items() if held}


def assert_exactly_once(
    stack: local_stack.LocalStack, jobs: dict[str, tuple[SyntheticVideo, float]], timeout: float = 180
) -> None:
    """Every job has one complete result set, each file written once, and no message or staged object is left."""
    summaries = {
        job_id: wait_for(lambda j=job_id: read_summary(stack, j), timeout=timeout, what=f"summary of {job_id}")
        for job_id in jobs
    }
    # A message is deleted only after its job's staged objects are: then all is settled.
    sqs = client("sqs")
    assert wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (0, 0), timeout=60, what="queue drained")
    assert local_stack.queue_depth(sqs, stack.dead_letter_queue_url) == (0, 0), "a job reached the dead-letter queue"
    for job_id, (video, sample_fps) in jobs.items():
        summary = summaries[job_id]
        assert summary["status"] == "succeeded"
        lines = read_lines(stack, job_id)
        assert [line["frame"] for line in lines] == sorted({line["frame"] for line in lines}), job_id
        assert (
            len(lines)
            == expected_sample_count(video.frame_count, video.fps, sample_fps)
            == summary["frames"]["sampled"]
        ), f"{job_id}: detections.jsonl does not hold the frames its summary counts"
    written = version_counts(stack)
    for job_id in jobs:
        assert written[f"results/{job_id}/{results.SUMMARY_FILE}"] == 1, f"{job_id}: summary written more than once"
        assert written[f"results/{job_id}/{results.DETECTIONS_FILE}"] == 1, (
            f"{job_id}: detections written more than once"
        )
    assert staged_objects(stack) == [], "staged objects left behind"


@pytest.fixture
def make_jobs(tmp_path: Path) -> Any:
    def make(
        stack: local_stack.LocalStack,
        count: int,
        *,
        frames: int = 40,
        fps: float = 10.0,
        sample_fps: float = 10.0,
        width: int = 320,
        height: int = 240,
    ) -> dict[str, tuple[SyntheticVideo, float]]:
        jobs = {}
        for number in range(count):
            video = write_synthetic_video(
                tmp_path / f"v{number}.mp4", width=width, height=height, fps=fps, frame_count=frames, seed=number
            )
            jobs[f"job-{number}"] = (video, sample_fps)
            url = upload(stack, video.path)
            client("sqs").send_message(
                QueueUrl=stack.queue_url,
                MessageBody=f'{{"video": "{url}", "job_id": "job-{number}", "sample_fps": {sample_fps}}}',
            )
        return jobs

    return make


@pytest.fixture
def own_model_server(models_dir: Path, tmp_path: Path) -> Iterator[Any]:
    """A model server this test may stop and restart (the session one must stay up)."""
    from framescale.local.model_server import ModelServerProcess

    server = ModelServerProcess(models_dir, log_path=tmp_path / "own-model-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
