"""The framescale command line: sample videos and message checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framescale.cli import main
from framescale.worker.video import open_video


def test_synthetic_video_with_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.avi"
    assert main(["video", "synthetic", str(out), "--frames", "12", "--fps", "6"]) == 0
    capture, info = open_video(out)
    capture.release()
    assert (info.frame_count, info.fps) == (12, 6.0)
    truth = json.loads(out.with_suffix(".truth.json").read_text())
    assert len(truth["frames"]) == 12 and len(truth["frames"][0]) == 3


def test_check_message_reports_jobs_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"video": "s3://videos/a.mp4", "sample_fps": 2}))
    assert main(["check-message", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["video"] == "s3://videos/a.mp4"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"video": "videos/a.mp4"}))
    assert main(["check-message", str(bad)]) == 1
    assert "dead-letter queue" in capsys.readouterr().out
