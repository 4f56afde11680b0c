"""One video end to end through real HTTP (moto) and gRPC (the model server).

Synthetic videos have exact ground truth: every object must be found with a tight box,
frames must come in order, and the count must match the sample rate. The video of real
photographs has hand-drawn boxes around its people, and a scene with no one in it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from framescale import synthetic
from framescale.local import stack as local_stack
from framescale.local.videos import SyntheticVideo, make_photo_video, write_synthetic_video
from framescale.worker.sampling import expected_sample_count
from tests.support import (
    client,
    dead_letters,
    enqueue,
    iou,
    notifications,
    read_lines,
    read_summary,
    unique,
    upload,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MIN_IOU = 0.8
# A real detector against boxes drawn by hand: 0.5 is PASCAL VOC's bar for "found";
# a little above it still leaves room for where a box around a person is drawn.
MIN_PERSON_IOU = 0.6
PERSON_SCORE = 0.5


def expected_frames(frame_count: int, fps: float, sample_fps: float) -> list[int]:
    """Computed independently of the worker's sampler: the first frame at or after k / sample_fps."""
    if sample_fps >= fps:
        return list(range(frame_count))
    out = []
    k = 0
    while True:
        index = math.ceil(round(k * fps / sample_fps, 9))
        if index >= frame_count:
            return out
        out.append(index)
        k += 1


def assert_every_object_found(job_id: str, video: SyntheticVideo, sample_fps: float, lines: list[dict]) -> None:
    """The right frames, in order, each with every object where it was drawn and nothing else."""
    frames = [line["frame"] for line in lines]
    assert frames == expected_frames(video.frame_count, video.fps, sample_fps), job_id
    assert len(lines) == expected_sample_count(video.frame_count, video.fps, sample_fps)
    for line in lines:
        assert line["pts_ms"] == round(line["frame"] * 1000 / video.fps)
        truth = video.truth[line["frame"]]
        found = {d["label"]: d for d in line["detections"]}
        assert set(found) == {t.label for t in truth}, (job_id, line["frame"], line["detections"])
        for t in truth:
            detection = found[t.label]
            assert detection["class_id"] == t.class_id
            assert iou(detection["box"], t.box) >= MIN_IOU, (job_id, line["frame"], detection, t)


def test_synthetic_videos_in_all_three_message_forms(aws_env, tmp_path: Path, start_worker) -> None:
    stack = local_stack.provision(unique("e2e"))
    videos = {
        "own-mp4": (write_synthetic_video(tmp_path / "a.mp4", fps=10, frame_count=60, seed=11), 2.0),
        "own-avi": (write_synthetic_video(tmp_path / "b.avi", fps=15, frame_count=45, seed=12), 15.0),
        "sns-wrapped": (
            write_synthetic_video(tmp_path / "c.mp4", width=640, height=360, fps=30, frame_count=90, seed=13),
            3.0,
        ),
    }
    for job_id, (video, sample_fps) in videos.items():
        url = upload(stack, video.path, f"incoming/{job_id}{video.path.suffix}")
        body = {"video": url, "job_id": job_id, "sample_fps": sample_fps}
        if job_id == "sns-wrapped":
            enqueue(stack, {"Type": "Notification", "MessageId": "x", "Message": json.dumps(body)})
        else:
            enqueue(stack, body)
    # The third form: a real S3 event notification, delivered by S3 itself to the queue.
    s3, sqs = client("s3"), client("sqs")
    queue_arn = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=stack.input_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "drop/"}]}},
                }
            ]
        },
    )
    event_video = write_synthetic_video(tmp_path / "d.mp4", fps=10, frame_count=30, seed=14)
    upload(stack, event_video.path, "drop/with space+plus.mp4")

    start_worker(stack, model="synthetic", slots=2)

    def event_job_summary():
        listing = s3.list_objects_v2(Bucket=stack.output_bucket, Prefix="results/with-space-plus-")
        keys = [item["Key"] for item in listing.get("Contents", []) if item["Key"].endswith("summary.json")]
        return keys[0].split("/")[1] if keys else None

    summaries = {
        job_id: wait_for(lambda j=job_id: read_summary(stack, j), what=f"summary of {job_id}") for job_id in videos
    }
    event_job_id = wait_for(event_job_summary, what="the S3-event job's summary")
    videos[event_job_id] = (event_video, 1.0)  # worker default sample rate
    summaries[event_job_id] = read_summary(stack, event_job_id)

    for job_id, (video, sample_fps) in videos.items():
        lines = read_lines(stack, job_id)
        assert_every_object_found(job_id, video, sample_fps, lines)
        summary = summaries[job_id]
        assert summary["status"] == "succeeded" and summary["job_id"] == job_id
        assert summary["frames"]["sampled"] == len(lines)
        assert summary["frames"]["total"] == video.frame_count
        assert summary["frames"]["sampled"] <= summary["frames"]["decoded"] <= video.frame_count
        assert summary["frames"]["sample_mode"] == "fps" and summary["video"]["vfr"] is False
        assert summary["model"]["name"] == "synthetic"
        assert summary["label_counts"] == {label: len(lines) for label in synthetic.LABELS.values()}
        assert summary["video"]["width"] == video.width and summary["video"]["fps"] == pytest.approx(video.fps)

    done = wait_for(lambda: notifications(stack.success_inbox_url), what="success notifications")
    while len(done) < len(videos):
        done += wait_for(lambda: notifications(stack.success_inbox_url), what="more success notifications")
    assert sorted(n["inferenceId"] for n in done) == sorted(videos)
    assert all(n["invocationStatus"] == "Completed" for n in done)
    assert all(
        n["responseParameters"]["outputLocation"].startswith(f"s3://{stack.output_bucket}/results/") for n in done
    )
    assert wait_for(lambda: local_stack.queue_depth(sqs, stack.queue_url) == (0, 0), what="queue to drain")
    assert dead_letters(stack) == []


def test_letterbox_maps_boxes_back_to_the_original_frame(aws_env, tmp_path: Path, start_worker) -> None:
    # The model sees each frame shrunk to fit a square and padded, bars above and below a
    # wide frame, left and right of a tall one; results must come back in the original's
    # coordinates. (With the default ``stretch`` the mapping is the identity.)
    stack = local_stack.provision(unique("letterbox"))
    videos = {
        "wide": write_synthetic_video(tmp_path / "wide.mp4", width=640, height=240, fps=10, frame_count=20, seed=21),
        "tall": write_synthetic_video(tmp_path / "tall.mp4", width=240, height=480, fps=10, frame_count=20, seed=22),
    }
    sample_fps = 5.0
    for job_id, video in videos.items():
        enqueue(stack, {"video": upload(stack, video.path), "job_id": job_id, "sample_fps": sample_fps})
    start_worker(stack, model="synthetic", resize_mode="letterbox", input_size="320")
    for job_id, video in videos.items():
        summary = wait_for(lambda j=job_id: read_summary(stack, j), what=f"summary of {job_id}")
        assert summary["status"] == "succeeded"
        assert summary["model"]["resize_mode"] == "letterbox" and summary["model"]["input_size"] == [320, 320]
        assert_every_object_found(job_id, video, sample_fps, read_lines(stack, job_id))


def test_real_detector_finds_the_people_in_real_photographs(aws_env, tmp_path: Path, start_worker) -> None:
    stack = local_stack.provision(unique("people"))
    video = make_photo_video(tmp_path / "people.mp4", fps=10.0, seconds_per_photo=2.0, with_empty_scene=True)
    enqueue(stack, {"video": upload(stack, video.path), "job_id": "people", "sample_fps": 2.0})
    start_worker(stack, model="person", labels={1: "person"})
    summary = wait_for(lambda: read_summary(stack, "people"), what="people summary")
    lines = read_lines(stack, "people")
    assert {video.photo_at(line["frame"]) for line in lines} == set(video.photos)  # every scene was sampled
    for line in lines:
        where = (video.photo_at(line["frame"]), line["frame"])
        people = video.truth[line["frame"]]
        confident = [d["box"] for d in line["detections"] if d["label"] == "person" and d["score"] > PERSON_SCORE]
        if not people:
            # Not even a guess below the confident score: nothing at the worker's threshold.
            assert line["detections"] == [], where
            continue
        for person in people:
            assert max((iou(box, person.box) for box in confident), default=0.0) >= MIN_PERSON_IOU, (where, confident)
        for box in confident:  # and no confident person anywhere else
            assert any(iou(box, person.box) >= MIN_PERSON_IOU for person in people), (where, box)
    people_frames = sum(1 for line in lines if video.truth[line["frame"]])
    assert summary["label_counts"].get("person", 0) >= people_frames
