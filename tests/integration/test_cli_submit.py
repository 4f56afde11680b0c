"""``framescale submit`` against the moto server: upload, validate, enqueue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framescale.cli import main
from framescale.local import stack as local_stack
from tests.support import client, unique

pytestmark = [pytest.mark.integration]


def test_submit_uploads_a_local_file_and_enqueues_a_valid_message(aws_env, tmp_path: Path, capsys) -> None:
    stack = local_stack.provision(unique("cli"))
    video = tmp_path / "clip.mp4"
    assert main(["video", "synthetic", str(video), "--frames", "5"]) == 0
    code = main(
        [
            "submit",
            stack.queue_url,
            str(video),
            "--bucket",
            stack.input_bucket,
            "--job-id",
            "cli-1",
            "--sample-fps",
            "2",
        ]
    )
    assert code == 0
    sent = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert sent["body"] == {
        "video": f"s3://{stack.input_bucket}/incoming/clip.mp4",
        "job_id": "cli-1",
        "sample_fps": 2.0,
    }
    head = client("s3").head_object(Bucket=stack.input_bucket, Key="incoming/clip.mp4")
    assert head["ContentLength"] == video.stat().st_size
    (message,) = client("sqs").receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=1)["Messages"]
    assert json.loads(message["Body"]) == sent["body"]


def test_submit_refuses_what_the_worker_would_dead_letter(aws_env, capsys) -> None:
    stack = local_stack.provision(unique("cli-bad"))
    assert main(["submit", stack.queue_url, "s3://videos/x.mp4", "--job-id", "../up"]) == 2
    assert "job_id" in capsys.readouterr().err
    assert client("sqs").receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=0).get("Messages", []) == []
