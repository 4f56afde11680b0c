"""``make demo``: the whole pipeline on this machine, and what it did.

Starts moto (AWS) and the TF-Serving-protocol model server, creates two pipelines — one
running the real SSDLite person detector over a video made from photographs of people,
one running the exact synthetic detector over generated videos — uploads and enqueues
the videos, runs a worker per pipeline with a progress line, then prints a summary
table, writes ``summary.json`` and draws the detections on a few frames as JPEG.
Everything it started is stopped at the end, also on Ctrl-C, SIGTERM or SIGHUP (a closed
terminal), at any moment, start-up included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from framescale import aws, results
from framescale.local import stack as local_stack
from framescale.local.annotate import annotate_best_frames, contact_sheet
from framescale.local.model_server import ModelServerProcess
from framescale.local.moto_server import MotoServer
from framescale.local.processes import ManagedProcess
from framescale.local.videos import make_photo_video, write_synthetic_video
from framescale.local.worker_process import WorkerProcess
from framescale.synthetic import LABELS as SYNTHETIC_LABELS


@dataclass
class DemoVideo:
    name: str
    path: Path
    pipeline: str
    sample_fps: float
    job_id: str
    summary: dict[str, Any] | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None


@dataclass
class Pipeline:
    name: str
    model: str
    labels: dict[int, str]
    stack: local_stack.LocalStack | None = None


PIPELINES = [
    Pipeline("people", "person", {1: "person"}),
    Pipeline("shapes", "synthetic", dict(SYNTHETIC_LABELS)),
]


def make_videos(folder: Path) -> list[DemoVideo]:
    folder.mkdir(parents=True, exist_ok=True)
    videos = []
    people = folder / "people.mp4"
    # Three photographs of people, then one of a cup of coffee: no one to find there.
    make_photo_video(people, fps=10, seconds_per_photo=3, with_empty_scene=True)
    videos.append(DemoVideo("people.mp4", people, "people", 2.0, "people"))
    specs = [
        ("shapes-small.mp4", dict(width=320, height=240, fps=10, frame_count=100, seed=1), 2.0),
        ("shapes-mjpg.avi", dict(width=320, height=240, fps=15, frame_count=90, seed=2), 3.0),
        ("shapes-hd.mp4", dict(width=1280, height=720, fps=30, frame_count=240, seed=3), 4.0),
        ("shapes-every-frame.mp4", dict(width=480, height=360, fps=12, frame_count=48, seed=4), 12.0),
    ]
    for name, spec, sample_fps in specs:
        path = folder / name
        write_synthetic_video(path, **spec)  # type: ignore[arg-type]
        videos.append(DemoVideo(name, path, "shapes", sample_fps, Path(name).stem))
    return videos


class Progress:
    """One updating line on a terminal; a line per change elsewhere (CI logs)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stdout.isatty()
        self.last = ""
        self.started = time.monotonic()

    def update(self, done: int, failed: int, frames: int, in_flight: int) -> None:
        width = 30
        filled = int(width * (done + failed) / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        text = (
            f"[{bar}] {done + failed}/{self.total} videos  {frames} frames  "
            f"{in_flight} in progress  {time.monotonic() - self.started:5.1f}s"
        )
        key = f"{done}/{failed}/{frames}/{in_flight}"
        if self.tty:
            print("\r" + text, end="", flush=True)
        elif key != self.last:
            print(text, flush=True)
        self.last = key

    def close(self) -> None:
        if self.tty:
            print()


def run(models: Path, out: Path, timeout: float) -> int:
    if not (models / ".exported").exists():
        print(f"models not found in {models}: run `make models` (make demo does it for you)", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    logs = out / "logs"
    logs.mkdir(parents=True)
    started = time.monotonic()
    with contextlib.ExitStack() as running:
        print("framescale demo: starting the local stack (moto server, model server) ...", flush=True)
        moto = _start(running, MotoServer(log_path=logs / "moto.log"))
        os.environ.update(moto.client_env)
        model_server = _start(running, ModelServerProcess(models, log_path=logs / "model-server.log"))
        print(f"  AWS (moto) at {moto.endpoint_url}; TF Serving protocol at {model_server.grpc_target}", flush=True)

        print("generating sample videos (one from real photographs, four synthetic) ...", flush=True)
        videos = make_videos(out / "videos")
        s3, sqs = aws.client("s3"), aws.client("sqs")
        for pipeline in PIPELINES:
            pipeline.stack = local_stack.provision(f"demo-{pipeline.name}")
        by_name = {p.name: p for p in PIPELINES}
        for video in videos:
            stack = by_name[video.pipeline].stack
            assert stack is not None
            key = f"incoming/{video.name}"
            s3.upload_file(str(video.path), stack.input_bucket, key)
            body = {"video": f"s3://{stack.input_bucket}/{key}", "job_id": video.job_id, "sample_fps": video.sample_fps}
            sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body))
        print(f"uploaded and enqueued {len(videos)} videos; starting one worker per pipeline", flush=True)

        for pipeline in PIPELINES:
            assert pipeline.stack is not None
            env = pipeline.stack.worker_env(
                FRAMESCALE_WORKER_MODEL_SERVER=model_server.grpc_target,
                FRAMESCALE_WORKER_MODEL_NAME=pipeline.model,
                FRAMESCALE_WORKER_LABELS=json.dumps(pipeline.labels),
                FRAMESCALE_WORKER_WORK_DIR=str(out / "scratch" / pipeline.name),
                FRAMESCALE_WORKER_WAIT_TIME_SECONDS="2",
                FRAMESCALE_WORKER_LOG_FORMAT="json",
                FRAMESCALE_WORKER_SHUTDOWN_GRACE_SECONDS="5",
            )
            name = f"worker-{pipeline.name}"
            _start(running, WorkerProcess(env, log_path=logs / f"{name}.log", name=name))

        progress = Progress(len(videos))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, failed, frames = _poll(s3, sqs, videos, by_name)
            in_flight = sum(local_stack.queue_depth(sqs, p.stack.queue_url)[1] for p in PIPELINES if p.stack)
            progress.update(done, failed, frames, in_flight)
            if done + failed == len(videos):
                break
            time.sleep(0.5)
        progress.close()
        wall = time.monotonic() - started
    return _report(videos, by_name, out, wall)


Process = TypeVar("Process", bound=ManagedProcess)


def _start(running: contextlib.ExitStack, process: Process) -> Process:
    # The stop is registered before the start: an interrupt that lands while the child is
    # starting (the model server takes many seconds) must still stop it.
    running.callback(process.stop)
    return process.start()


def _poll(s3: Any, sqs: Any, videos: list[DemoVideo], pipelines: dict[str, Pipeline]) -> tuple[int, int, int]:
    for pipeline in pipelines.values():
        assert pipeline.stack is not None
        for message in local_stack.drain(sqs, pipeline.stack.dead_letter_queue_url):
            reason = message.get("MessageAttributes", {}).get("framescale-failure-reason", {}).get("StringValue")
            job_id = json.loads(message["Body"]).get("job_id")
            for video in videos:
                if video.job_id == job_id:
                    video.failure = reason or "dead-lettered"
    for video in videos:
        if video.summary is not None or video.failure:
            continue
        stack = pipelines[video.pipeline].stack
        assert stack is not None
        prefix = f"results/{video.job_id}/"
        try:
            body = s3.get_object(Bucket=stack.output_bucket, Key=prefix + results.SUMMARY_FILE)["Body"].read()
        except s3.exceptions.NoSuchKey:
            continue
        video.summary = json.loads(body)
        raw = s3.get_object(Bucket=stack.output_bucket, Key=prefix + results.DETECTIONS_FILE)["Body"].read()
        video.lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    done = sum(1 for v in videos if v.summary is not None)
    failed = sum(1 for v in videos if v.failure)
    frames = sum(v.summary["frames"]["sampled"] for v in videos if v.summary)
    return done, failed, frames


def _report(videos: list[DemoVideo], pipelines: dict[str, Pipeline], out: Path, wall: float) -> int:
    rows = []
    for video in videos:
        summary = video.summary or {}
        timings = summary.get("timings_seconds", {})
        sampled = summary.get("frames", {}).get("sampled", 0)
        info = summary.get("video", {})
        busy = timings.get("decode_and_infer") or 0.0
        rows.append(
            {
                "video": video.name,
                "pipeline": video.pipeline,
                "model": pipelines[video.pipeline].model,
                "status": "succeeded" if video.summary else ("failed" if video.failure else "unfinished"),
                "failure": video.failure,
                "resolution": f"{info.get('width', '?')}x{info.get('height', '?')}",
                "frames_decoded": summary.get("frames", {}).get("decoded", 0),
                "frames_sampled": sampled,
                "frames_per_second": round(sampled / busy, 1) if busy else 0.0,
                "latency_seconds": timings.get("total", 0.0),
                "detections": summary.get("detections", 0),
                "label_counts": summary.get("label_counts", {}),
            }
        )
    header = f"{'video':<24}{'model':<11}{'status':<11}{'size':<10}{'frames':>7}{'fps':>8}{'latency':>9}  detections"
    print()
    print(header)
    print("-" * len(header) + "-" * 12)
    for row in rows:
        labels = ", ".join(f"{k} {v}" for k, v in row["label_counts"].items()) or "-"
        print(
            f"{row['video']:<24}{row['model']:<11}{row['status']:<11}{row['resolution']:<10}"
            f"{row['frames_sampled']:>7}{row['frames_per_second']:>8}{row['latency_seconds']:>8.2f}s  {labels}"
        )
    for video in videos:  # the results as S3 holds them, for a look without AWS tools
        if video.summary is not None:
            folder = out / "results" / video.job_id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / results.SUMMARY_FILE).write_text(json.dumps(video.summary, indent=2))
            (folder / results.DETECTIONS_FILE).write_text("".join(json.dumps(line) + "\n" for line in video.lines))
    pictures: list[Path] = []
    for video in videos:
        if video.lines:
            pictures.extend(annotate_best_frames(video.path, video.lines, out / "frames", Path(video.name).stem))
    sheet = contact_sheet(pictures, out / "detections.jpg")
    succeeded = sum(1 for row in rows if row["status"] == "succeeded")
    failed = sum(1 for row in rows if row["status"] == "failed")
    frames = sum(row["frames_sampled"] for row in rows)
    summary = {
        "videos": len(rows),
        "succeeded": succeeded,
        "failed": failed,
        "unfinished": len(rows) - succeeded - failed,
        "frames": frames,
        "frames_decoded": sum(row["frames_decoded"] for row in rows),
        "detections": sum(row["detections"] for row in rows),
        "wall_seconds": round(wall, 2),
        "per_video": rows,
        "annotated_frames": [str(path.relative_to(out)) for path in pictures],
        "contact_sheet": str(sheet.relative_to(out)) if sheet else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(
        f"{succeeded}/{len(rows)} videos succeeded, {failed} failed; {frames} frames sampled; "
        f"{summary['detections']} detections; {wall:.1f}s wall time including start-up"
    )
    print(f"summary: {out / 'summary.json'}   pictures: {out / 'detections.jpg'} and {out / 'frames'}/")
    print(f"results as S3 holds them: {out / 'results'}/   logs: {out / 'logs'}/")
    return 0 if succeeded == len(rows) else 1


class Stopped(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP, raised wherever the demo is, so that it unwinds and stops its children."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framescale.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="exported models (make models)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where results and pictures go")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    # The children run in sessions of their own (see ManagedProcess.start), so no signal meant
    # for the demo reaches them: the demo must stop them itself. The default action of SIGTERM
    # and SIGHUP would end it at once, without unwinding, and SIGINT may have been inherited
    # as ignored (a background job of a script): all three are handled here alike.
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _raise_stopped)
    try:
        return run(args.models, args.out, args.timeout)
    except Stopped as stop:
        print(f"\n{stop}: everything the demo started has been stopped", file=sys.stderr)
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
