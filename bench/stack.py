"""The local stack the benchmarks run over: moto (AWS), the model server, worker processes.

Everything is a real process talking real HTTP or gRPC, as in the project's integration
tests. This process's own boto3 clients are pointed at moto through the environment.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framescale import aws
from framescale.local.model_server import ModelServerProcess
from framescale.local.moto_server import MotoServer
from framescale.local.processes import free_port, http_ok, wait_until
from framescale.local.stack import LocalStack, drain, provision
from framescale.local.worker_process import WorkerProcess

# The worker's throughput settings, stated once so every comparison uses the same ones.
BATCH_SIZE = 8
INPUT_SIZE = 320
MAX_IN_FLIGHT = 3


@dataclass
class BenchStack:
    moto: MotoServer
    model_server: ModelServerProcess
    work_dir: Path
    model_server_start_seconds: float

    def worker(
        self,
        stack: LocalStack,
        *,
        model: str,
        name: str,
        health_port: int = 0,
        extra: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """A ``python -m framescale.worker`` process (not started) for ``stack``, one slot."""
        env = dict(self.moto.client_env)
        env.update(
            stack.worker_env(
                FRAMESCALE_WORKER_MODEL_SERVER=self.model_server.grpc_target,
                FRAMESCALE_WORKER_MODEL_NAME=model,
                FRAMESCALE_WORKER_SLOTS="1",
                FRAMESCALE_WORKER_BATCH_SIZE=str(BATCH_SIZE),
                FRAMESCALE_WORKER_INPUT_SIZE=str(INPUT_SIZE),
                FRAMESCALE_WORKER_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
                FRAMESCALE_WORKER_WORK_DIR=str(self.work_dir / f"work-{name}"),
                FRAMESCALE_WORKER_HEALTH_PORT=str(health_port),
                FRAMESCALE_WORKER_LOG_FORMAT="json",
                FRAMESCALE_WORKER_LOG_LEVEL="WARNING",
                **(extra or {}),
            )
        )
        return WorkerProcess(env, log_path=self.work_dir / "logs" / f"worker-{name}.log", name=f"worker-{name}")


@contextmanager
def running(models_dir: Path, work_dir: Path) -> Iterator[BenchStack]:
    """moto and the model server up; this process's boto3 clients pointed at moto."""
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    moto = MotoServer(log_path=logs / "moto.log").start()
    saved = {key: os.environ.get(key) for key in moto.client_env}
    os.environ.update(moto.client_env)
    server = ModelServerProcess(models_dir, log_path=logs / "model-server.log")
    try:
        started = time.perf_counter()
        server.start()
        yield BenchStack(moto, server, work_dir, round(time.perf_counter() - started, 2))
    finally:
        server.stop()
        moto.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def upload(stack: LocalStack, files: list[Path]) -> list[str]:
    """Put the files in the stack's input bucket; returns their s3:// URLs."""
    s3 = aws.client("s3")
    urls = []
    for path in files:
        s3.upload_file(str(path), stack.input_bucket, path.name)
        urls.append(f"s3://{stack.input_bucket}/{path.name}")
    return urls


def send_jobs(stack: LocalStack, urls: list[str], *, tag: str, sample_fps: float) -> list[str]:
    """One job message per video; unique job ids, so no job is skipped as already done."""
    sqs = aws.client("sqs")
    ids = []
    for number, url in enumerate(urls):
        job_id = f"{tag}-{number}"
        body = {"video": url, "job_id": job_id, "sample_fps": sample_fps}
        sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body))
        ids.append(job_id)
    return ids


def wait_for_jobs(stack: LocalStack, job_ids: list[str], timeout: float) -> float:
    """Block until every job's success notification arrived; returns when the last one did.

    Failures are raised with the worker's reason, so a broken run stops instead of timing out.
    """
    sqs = aws.client("sqs")
    waiting = set(job_ids)
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs {sorted(waiting)} did not finish within {timeout:.0f} s")
        for failure in drain(sqs, stack.error_inbox_url):
            body = json.loads(failure["Body"])
            if body.get("inferenceId") in waiting:
                raise RuntimeError(f"job {body.get('inferenceId')} failed: {body.get('failureReason')}")
        response = sqs.receive_message(QueueUrl=stack.success_inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in response.get("Messages", []):
            sqs.delete_message(QueueUrl=stack.success_inbox_url, ReceiptHandle=message["ReceiptHandle"])
            waiting.discard(json.loads(message["Body"]).get("inferenceId"))
    return time.perf_counter()


def summaries(stack: LocalStack, job_ids: list[str]) -> list[dict[str, Any]]:
    s3 = aws.client("s3")
    out = []
    for job_id in job_ids:
        body = s3.get_object(Bucket=stack.output_bucket, Key=f"results/{job_id}/summary.json")["Body"].read()
        out.append(json.loads(body))
    return out


def wait_ready(port: int, timeout: float = 60.0) -> None:
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), timeout, f"worker /readyz on port {port}")


__all__ = ["BenchStack", "free_port", "provision", "running", "send_jobs", "summaries", "upload", "wait_for_jobs"]
