"""The ``sample`` mode: in the job message (validated), in the settings, and which one a job runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from framescale.messages import InvalidMessage, parse_message
from framescale.worker.settings import WorkerSettings
from tests.unit.worker.conftest import VIDEO_URL, World

QUEUE = "https://sqs.us-east-1.amazonaws.com/1/q"


def job(body: dict[str, Any]):
    (request,) = parse_message(json.dumps({"video": "s3://videos/a.mp4", **body})).jobs
    return request


def test_the_message_names_a_mode() -> None:
    assert job({"sample": "keyframes"}).sample == "keyframes"
    assert job({"sample": "fps", "sample_fps": 2}).sample == "fps"
    assert job({}).sample is None


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"sample": "every-frame"}, "sample: Input should be 'fps' or 'keyframes'"),
        ({"sample": 1}, "sample: Input should be 'fps' or 'keyframes'"),
        ({"sample": None, "simple": "keyframes"}, "simple"),
        ({"sample": "keyframes", "sample_fps": 1}, "cannot be combined"),
    ],
)
def test_a_bad_mode_is_an_invalid_message(body: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidMessage, match=says):
        job(body)


def test_the_settings_validate_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings(queue_url=QUEUE).sample_mode == "fps"
    monkeypatch.setenv("FRAMESCALE_WORKER_SAMPLE_MODE", "keyframes")
    assert WorkerSettings(queue_url=QUEUE).sample_mode == "keyframes"
    monkeypatch.setenv("FRAMESCALE_WORKER_SAMPLE_MODE", "sometimes")
    with pytest.raises(ValidationError, match="sample_mode"):
        WorkerSettings(queue_url=QUEUE)


@pytest.mark.parametrize(
    ("default_mode", "body", "mode", "fps"),
    [
        ("fps", {}, "fps", 1.0),
        ("keyframes", {}, "keyframes", 1.0),
        ("keyframes", {"sample_fps": 3}, "fps", 3.0),  # a rate in the message means fps mode
        ("fps", {"sample": "keyframes"}, "keyframes", 1.0),
        ("keyframes", {"sample": "fps"}, "fps", 1.0),
    ],
)
def test_which_mode_a_job_runs(world: World, default_mode: str, body: dict[str, Any], mode: str, fps: float) -> None:
    (request,) = parse_message(json.dumps({"video": VIDEO_URL, **body})).jobs
    resolved = world.runner(sample_mode=default_mode, sample_fps=1.0).resolve(request)
    assert (resolved.sample_mode, resolved.sample_fps) == (mode, fps)
