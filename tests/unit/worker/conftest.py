"""A slot's whole outside world in memory (tests/fakes.py), and a small real video to run through it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from framescale.local.videos import SyntheticVideo, write_synthetic_video
from framescale.worker.job import JobRunner
from framescale.worker.loop import SlotWorker
from framescale.worker.settings import WorkerSettings
from tests.fakes import FakeClock, FakeModel, FakePublisher, FakeQueue, FakeStore

VIDEO_URL = "s3://videos/cam/clip.mp4"
SUCCESS_TOPIC, ERROR_TOPIC = "arn:aws:sns:us-east-1:1:done", "arn:aws:sns:us-east-1:1:failed"


@pytest.fixture(scope="session")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVideo:
    """2 s at 10 fps, 64x48: decoded in milliseconds."""
    return write_synthetic_video(
        tmp_path_factory.mktemp("video") / "clip.mp4", width=64, height=48, fps=10, frame_count=20
    )


@dataclass
class World:
    clock: FakeClock
    queue: FakeQueue
    dead_letters: FakeQueue
    store: FakeStore
    publisher: FakePublisher
    model: FakeModel
    video: SyntheticVideo
    work_dir: Path

    def settings(self, **changes: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "queue_url": self.queue.url,
            "output": "s3://out/results/",
            "success_topic_arn": SUCCESS_TOPIC,
            "error_topic_arn": ERROR_TOPIC,
            "work_dir": self.work_dir,
            "batch_size": 4,
            "max_in_flight": 2,
            "transient_retries": 2,
        }
        values.update(changes)
        return WorkerSettings(**values)

    def worker(self, **changes: Any) -> SlotWorker:
        return SlotWorker(
            self.settings(**changes),
            queue=self.queue,
            dead_letters=self.dead_letters,
            store=self.store,
            publisher=self.publisher,
            model=self.model,
            clock=self.clock,
        )

    def runner(self, **changes: Any) -> JobRunner:
        return JobRunner(self.settings(**changes), store=self.store, model=self.model, clock=self.clock)

    def job_message(self, **fields: Any) -> str:
        return json.dumps({"video": VIDEO_URL, "sample_fps": 5, **fields})


@pytest.fixture
def world(small_video: SyntheticVideo, tmp_path: Path) -> World:
    clock = FakeClock()
    store = FakeStore("videos", "out", clock=clock)
    store.put(VIDEO_URL, small_video.path.read_bytes())
    return World(
        clock=clock,
        queue=FakeQueue(clock=clock),
        dead_letters=FakeQueue("https://sqs.us-east-1.amazonaws.com/1/jobs-dlq", clock=clock),
        store=store,
        publisher=FakePublisher(),
        model=FakeModel(),
        video=small_video,
        work_dir=tmp_path / "work",
    )
