"""JobRunner against the in-memory world: each stage's value, each failure's kind and reason."""

from __future__ import annotations

import json

import pytest

from framescale.messages import JobRequest, S3Location, parse_message, parse_s3_url
from framescale.worker.errors import AccessDenied, NotFound, Throttled, Unavailable
from framescale.worker.job import FailureKind, JobStatus
from framescale.worker.sampling import expected_sample_count
from tests.unit.worker.conftest import VIDEO_URL, World

VIDEO = parse_s3_url(VIDEO_URL, what="video")


def request(**fields: object) -> JobRequest:
    values: dict = {"video": VIDEO, "job_id": "job-1", "sample_fps": 5.0}
    values.update(fields)
    return JobRequest(**values)


def lines_of(world: World, job_id: str = "job-1") -> list[dict]:
    body = world.store.body(f"s3://out/results/{job_id}/detections.jsonl") or b""
    return [json.loads(line) for line in body.decode().splitlines()]


def test_a_job_writes_one_line_per_sample_in_order_and_a_summary(world: World) -> None:
    report = world.runner().run(request(), received=world.clock.monotonic())
    assert report.status is JobStatus.SUCCEEDED and report.failure is None
    video = world.video
    expected = expected_sample_count(video.frame_count, video.fps, 5.0)
    lines = lines_of(world)
    assert [line["frame"] for line in lines] == list(range(0, video.frame_count, 2))
    assert [line["pts_ms"] for line in lines] == [frame * 100 for frame in range(0, video.frame_count, 2)]
    assert len(lines) == expected == report.frames_sampled
    # Frames after the last sample are never decoded (nothing needs them): decoded <= what the stream holds.
    assert report.frames_sampled <= report.frames_decoded <= video.frame_count
    # Batches of 4 (the last one short), at most 2 in flight.
    assert world.model.batches == [4, 4, 2]
    summary = json.loads(world.store.body("s3://out/results/job-1/summary.json") or b"")
    assert summary == report.summary
    assert summary["input"] == {"url": VIDEO_URL, "etag": world.store.objects[("videos", "cam/clip.mp4")].etag,
                                "bytes": video.path.stat().st_size}  # fmt: skip
    assert summary["model"]["version"] == 7 and summary["model"]["input_size"] == [32, 32]
    assert summary["frames"] == {
        "total": video.frame_count,
        "decoded": report.frames_decoded,
        "sampled": expected,
        "sample_mode": "fps",
        "sample_fps": 5.0,
    }
    assert summary["detections"] == report.detections == sum(len(line["detections"]) for line in lines)
    assert summary["label_counts"] == {"person": report.detections}
    assert set(summary["timings_seconds"]) == {"download", "decode_and_infer", "upload", "total"}
    assert summary["model_calls"] == 3 == len(report.model_latencies)
    assert report.output_url == "s3://out/results/job-1/"


def test_the_fixed_input_size_of_the_signature_wins_over_the_setting(world: World) -> None:
    world.model.input_size = (24, 40)
    report = world.runner(input_size=64).run(request())
    assert report.summary is not None and report.summary["model"]["input_size"] == [24, 40]
    world.model.input_size = None
    report = world.runner(input_size=64).run(request(job_id="job-2"))
    assert report.summary is not None and report.summary["model"]["input_size"] == [64, 64]


def test_a_finished_job_is_skipped_without_decoding(world: World) -> None:
    first = world.runner().run(request())
    calls = len(world.model.batches)
    again = world.runner().run(request())
    assert again.status is JobStatus.SKIPPED and again.summary == first.summary
    assert len(world.model.batches) == calls and "decode_and_infer" not in again.timings
    assert world.store.written("s3://out/results/job-1/summary.json") == 1


def test_the_job_id_is_derived_from_bucket_key_and_etag_when_not_given(world: World) -> None:
    report = world.runner().run(request(job_id=None))
    assert report.status is JobStatus.SUCCEEDED and report.job_id.startswith("clip-")
    assert world.runner().run(request(job_id=None)).job_id == report.job_id


def test_the_message_output_wins_over_the_default(world: World) -> None:
    report = world.runner().run(request(output=S3Location("out", "mine/")))
    assert report.output_url == "s3://out/mine/job-1/"
    assert world.store.body("s3://out/mine/job-1/summary.json") is not None


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda w: w.store.objects.pop(("videos", "cam/clip.mp4")), f"video not found: {VIDEO_URL}"),
        (lambda w: w.store.faults.fail("head", "clip", AccessDenied("HEAD", "403")), "grant the worker's role"),
        (lambda w: w.store.put(VIDEO_URL, b""), "video is empty (0 bytes)"),
        (lambda w: w.store.put(VIDEO_URL, b"shopping list " * 40), "not a video FFmpeg can read"),
    ],
    ids=["missing", "forbidden", "empty", "not-a-video"],
)
def test_bad_inputs_fail_permanently_with_their_reason(world: World, change, says: str) -> None:
    change(world)
    report = world.runner().run(request())
    assert report.status is JobStatus.FAILED and report.failure is not None
    assert report.failure.kind is FailureKind.PERMANENT and says in report.failure.reason
    assert world.store.keys("s3://out/") == []


def test_limits_are_checked_before_the_work(world: World) -> None:
    size = world.video.path.stat().st_size
    report = world.runner(max_object_bytes=size - 1).run(request())
    assert report.failure is not None and "FRAMESCALE_WORKER_MAX_OBJECT_BYTES" in report.failure.reason
    report = world.runner(max_pixels=64 * 48 - 1).run(request())
    assert report.failure is not None and report.failure.stage == "probe" and "MAX_PIXELS" in report.failure.reason
    report = world.runner(max_duration_seconds=1.5).run(request())
    assert report.failure is not None and "MAX_DURATION_SECONDS" in report.failure.reason
    assert world.model.batches == []


def test_no_output_anywhere_is_a_permanent_failure(world: World) -> None:
    report = world.runner(output=None).run(request())
    assert report.failure is not None and "FRAMESCALE_WORKER_OUTPUT is unset" in report.failure.reason


def test_a_missing_output_bucket_is_named(world: World) -> None:
    report = world.runner(output="s3://no-such-bucket/results/").run(request())
    assert report.failure is not None and report.failure.kind is FailureKind.PERMANENT
    assert report.failure.reason.startswith("output bucket no-such-bucket does not exist")


def test_a_download_that_keeps_failing_is_transient_and_counted(world: World) -> None:
    world.store.faults.fail("download", "clip", Unavailable("GET", "connection reset"), times=3)
    report = world.runner().run(request())
    assert report.failure is not None and report.failure.kind is FailureKind.TRANSIENT
    assert report.failure.stage == "download" and "connection reset" in report.failure.reason
    assert report.download_failures == 3
    world.store.faults.fail("download", "clip", Unavailable("GET", "connection reset"), times=2)
    report = world.runner().run(request())
    assert report.status is JobStatus.SUCCEEDED and report.download_failures == 2


def test_the_video_replaced_mid_job_fails_the_conditional_get(world: World) -> None:
    # The HEAD saw one ETag; the object is replaced before the GET.
    def replace(operation: str, subject: str) -> None:
        if operation == "download":
            world.store.put(VIDEO_URL, world.video.path.read_bytes() + b"\0")

    world.store.on_call = replace
    report = world.runner().run(request())
    assert report.failure is not None and report.failure.kind is FailureKind.TRANSIENT
    assert "412" in report.failure.reason


def test_a_failed_predict_is_retried_in_order(world: World) -> None:
    world.model.errors.extend([Unavailable("Predict(fake)", "failed: UNAVAILABLE")])
    report = world.runner().run(request())
    assert report.status is JobStatus.SUCCEEDED
    assert [line["frame"] for line in lines_of(world)] == list(range(0, 20, 2))
    assert world.model.batches == [4, 4, 4, 2], "the failed batch was not sent again"


def test_a_model_that_stays_down_is_a_transient_failure(world: World) -> None:
    world.model.errors.extend([Unavailable("Predict(fake)", "failed: UNAVAILABLE")] * 10)
    report = world.runner().run(request())
    assert report.failure is not None and report.failure.kind is FailureKind.TRANSIENT
    assert report.failure.stage == "inference" and world.store.keys("s3://out/") == []


def test_a_model_that_refuses_the_input_is_a_permanent_failure(world: World) -> None:
    from framescale.worker.errors import ServiceError

    world.model.errors.append(ServiceError("Predict(fake)", "failed: INVALID_ARGUMENT: bad shape"))
    report = world.runner().run(request())
    assert report.failure is not None and report.failure.kind is FailureKind.PERMANENT
    assert "INVALID_ARGUMENT" in report.failure.reason
    assert len(world.model.batches) == 2, "a refused batch was sent again"


def test_a_cancel_hands_the_job_back(world: World) -> None:
    runner = world.runner()
    runner.cancel.set()
    report = runner.run(request())
    assert report.failure is not None and report.failure.kind is FailureKind.CANCELLED
    assert world.store.keys("s3://out/") == []


def test_throttled_results_writes_are_retried_and_counted(world: World) -> None:
    world.store.faults.fail("upload", "_staging", Throttled("PUT", "SlowDown"), times=2)
    report = world.runner().run(request())
    assert report.status is JobStatus.SUCCEEDED and report.upload_failures == 2


def test_missing_video_is_not_found_typed_not_by_text(world: World) -> None:
    # A NotFound whose text says nothing of 404 is still "video not found".
    world.store.faults.fail("head", "clip", NotFound("HEAD", "gone"))
    report = world.runner().run(request())
    assert report.failure is not None and report.failure.reason == f"video not found: {VIDEO_URL}"


def test_a_job_id_reused_for_another_video_is_refused_and_its_results_stay(world: World) -> None:
    assert world.runner().run(request()).status is JobStatus.SUCCEEDED
    summary = world.store.body("s3://out/results/job-1/summary.json")
    other = "s3://videos/cam/other.mp4"
    world.store.put(other, world.video.path.read_bytes() + b"\0")
    report = world.runner().run(request(video=parse_s3_url(other, what="video")))
    assert report.status is JobStatus.FAILED and report.failure is not None
    assert report.failure.kind is FailureKind.PERMANENT
    assert f"job id job-1 already holds results for {VIDEO_URL}" in report.failure.reason
    assert f"not for {other}" in report.failure.reason and "another job_id" in report.failure.reason
    assert world.store.body("s3://out/results/job-1/summary.json") == summary
    assert report.summary is None, "the other video's results were reported as this job's"


def test_a_job_id_reused_after_the_video_was_replaced_is_refused(world: World) -> None:
    world.runner().run(request())
    world.store.put(VIDEO_URL, world.video.path.read_bytes() + b"\0")  # a new ETag at the same key
    report = world.runner().run(request())
    assert report.failure is not None and "already holds results for" in report.failure.reason
    # Without a job id, the new version gets its own.
    assert world.runner().run(request(job_id=None)).status is JobStatus.SUCCEEDED


def test_a_key_with_a_real_plus_is_found_as_written(world: World) -> None:
    world.store.put("s3://videos/cam/a+b.mp4", world.video.path.read_bytes())
    (parsed,) = parse_message(json.dumps({"video": "s3://videos/cam/a+b.mp4", "job_id": "plus"})).jobs
    assert parsed.video.key == "cam/a b.mp4"  # decoded as an S3 event's key would be ...
    report = world.runner().run(parsed)
    assert report.status is JobStatus.SUCCEEDED  # ... and found under the key as written
    assert report.summary is not None and report.summary["input"]["url"] == "s3://videos/cam/a+b.mp4"


def test_an_encoded_key_is_decoded(world: World) -> None:
    world.store.put("s3://videos/cam/my clip.mp4", world.video.path.read_bytes())
    (parsed,) = parse_message(json.dumps({"video": "s3://videos/cam/my%20clip.mp4", "job_id": "space"})).jobs
    report = world.runner().run(parsed)
    assert report.summary is not None and report.summary["input"]["url"] == "s3://videos/cam/my clip.mp4"
