"""Jobs that cannot be confused, over moto and a real worker process: a job id names one input,
a ``?versionId=`` pins an object version, URL-encoded keys, multi-record events, foreign files,
a missing output bucket.

The videos are H.264 made at set-up by the ffmpeg binary of the ``imageio-ffmpeg`` wheel, and
their frame counts are read back with that same ffmpeg, not with the code under test.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from framescale.local import stack as local_stack
from tests.support import (
    client,
    dead_letters,
    enqueue,
    failure_reason,
    notifications,
    read_lines,
    read_summary,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def h264(path: Path, *, seconds: float, pattern: str) -> Path:
    """A small H.264 video of ``seconds`` at 10 fps (``pattern``: an ffmpeg lavfi source)."""
    subprocess.run(
        [ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=96x64:rate=10", "-t", str(seconds),
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def frame_count(path: Path) -> int:
    """Frames in the video, as ffmpeg itself counts them decoding it."""
    result = subprocess.run(
        [ffmpeg(), "-v", "info", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True, check=True
    )
    return int(re.findall(r"frame=\s*(\d+)", result.stderr)[-1])


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    return {
        "short": h264(folder / "short.mp4", seconds=1.0, pattern="testsrc"),
        "long": h264(folder / "long.mp4", seconds=2.0, pattern="smptebars"),
    }


def put_video(stack: local_stack.LocalStack, key: str, path: Path) -> dict:
    return dict(client("s3").put_object(Bucket=stack.input_bucket, Key=key, Body=path.read_bytes()))


def test_a_version_pinned_object_and_a_reused_job_id(aws_env, start_worker, videos: dict[str, Path]) -> None:
    stack = local_stack.provision(unique("versions"))
    s3 = client("s3")
    s3.put_bucket_versioning(Bucket=stack.input_bucket, VersioningConfiguration={"Status": "Enabled"})
    first = put_video(stack, "cam/clip.mp4", videos["short"])["VersionId"]
    put_video(stack, "cam/clip.mp4", videos["long"])  # the current version is now the longer video
    url = f"s3://{stack.input_bucket}/cam/clip.mp4"
    # Pinned to the first version, with and without a job id.
    enqueue(stack, {"video": f"{url}?versionId={first}", "job_id": "pinned", "sample_fps": 10})
    enqueue(stack, {"video": f"{url}?versionId={first}", "sample_fps": 10})
    start_worker(stack)
    summary = wait_for(lambda: read_summary(stack, "pinned"), what="the pinned job")
    assert summary["input"]["version_id"] == first and summary["input"]["url"] == url
    assert summary["frames"]["decoded"] == frame_count(videos["short"]) != frame_count(videos["long"])
    assert len(read_lines(stack, "pinned")) == frame_count(videos["short"])
    done: list[dict] = []
    wait_for(lambda: done.extend(notifications(stack.success_inbox_url)) or len(done) >= 2, what="both jobs")
    (derived,) = [n["inferenceId"] for n in done if n["inferenceId"] != "pinned"]
    assert derived.startswith("clip-")
    assert read_summary(stack, derived)["input"]["version_id"] == first

    # The same job id for the current version (another ETag): refused, the pinned results stay.
    enqueue(stack, {"video": url, "job_id": "pinned", "sample_fps": 10})
    (letter,) = wait_for(lambda: dead_letters(stack), what="the reused job id refused")
    assert "job id pinned already holds results for" in failure_reason(letter)
    assert f"version {first}" in failure_reason(letter)
    (failed,) = wait_for(lambda: notifications(stack.error_inbox_url), what="its error notification")
    assert failed["inferenceId"] == "pinned" and "already holds results" in failed["failureReason"]
    assert read_summary(stack, "pinned") == summary


def test_every_record_of_an_event_is_attempted_with_its_own_reason(
    aws_env, start_worker, videos: dict[str, Path]
) -> None:
    stack = local_stack.provision(unique("records3"))
    put_video(stack, "in/a b.mp4", videos["short"])
    put_video(stack, "in/c.mp4", videos["short"])

    def record(key: str) -> dict:
        return {
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": stack.input_bucket}, "object": {"key": key}},
        }

    # S3 event keys arrive URL-encoded ('+' for a space); the middle record's object is missing.
    event = json.dumps({"Records": [record("in/a+b.mp4"), record("in/missing.mp4"), record("in/c.mp4")]})
    enqueue(stack, event)
    start_worker(stack)
    (letter,) = wait_for(lambda: dead_letters(stack), what="the event in the dead-letter queue")
    missing = f"s3://{stack.input_bucket}/in/missing.mp4"
    assert letter["Body"] == event
    assert failure_reason(letter) == f"record 2 of 3 ({missing}): resolve: video not found: {missing}"
    done: list[dict] = []
    wait_for(lambda: done.extend(notifications(stack.success_inbox_url)) or len(done) >= 2, what="two successes")
    assert sorted(n["requestParameters"]["inputLocation"] for n in done) == [
        f"s3://{stack.input_bucket}/in/a b.mp4",
        f"s3://{stack.input_bucket}/in/c.mp4",
    ]
    (failed,) = wait_for(lambda: notifications(stack.error_inbox_url), what="the missing record's notification")
    assert failed["requestParameters"]["inputLocation"] == missing


def test_encoded_keys_foreign_files_and_a_missing_output_bucket(aws_env, start_worker, videos: dict[str, Path]) -> None:
    stack = local_stack.provision(unique("foreign"))
    s3 = client("s3")
    put_video(stack, "in/my clip.mp4", videos["short"])
    put_video(stack, "in/a+b.mp4", videos["short"])
    base = f"s3://{stack.input_bucket}/in/"
    # Someone else's files under two jobs' folders.
    s3.put_object(Bucket=stack.output_bucket, Key="results/theirs/detections.jsonl", Body=b"not ours\n")
    s3.put_object(Bucket=stack.output_bucket, Key="results/encoded/_staging/notes.txt", Body=b"keep me")
    enqueue(stack, {"video": base + "my%20clip.mp4", "job_id": "encoded"})  # URL-encoded, like an event key
    enqueue(stack, {"video": base + "a+b.mp4", "job_id": "plus"})  # a real '+' in the key
    enqueue(stack, {"video": base + "my%20clip.mp4", "job_id": "theirs"})
    enqueue(stack, {"video": base + "my%20clip.mp4", "job_id": "nowhere", "output": "s3://no-such-bucket-fs/r/"})
    start_worker(stack)
    assert (
        wait_for(lambda: read_summary(stack, "encoded"), what="the encoded key")["input"]["url"] == base + "my clip.mp4"
    )
    assert wait_for(lambda: read_summary(stack, "plus"), what="the plus key")["input"]["url"] == base + "a+b.mp4"
    letters: list[dict] = []
    wait_for(lambda: letters.extend(dead_letters(stack)) or len(letters) >= 2, what="two refusals")
    reasons = {json.loads(m["Body"])["job_id"]: failure_reason(m) for m in letters}
    assert "detections.jsonl exists but was not written by framescale" in reasons["theirs"]
    assert reasons["nowhere"].startswith("output bucket no-such-bucket-fs does not exist")
    body = s3.get_object(Bucket=stack.output_bucket, Key="results/theirs/detections.jsonl")["Body"].read()
    assert body == b"not ours\n"
    kept = s3.get_object(Bucket=stack.output_bucket, Key="results/encoded/_staging/notes.txt")["Body"].read()
    assert kept == b"keep me"
    assert read_summary(stack, "theirs") is None
