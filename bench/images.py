"""The images: sizes (uncompressed as the engine stores them, gzip-compressed as a registry would
hold them), what is inside the worker's, and the time from `podman run` to the worker's first
receive from SQS (start-up of the container, the interpreter, the imports and the settings).

The build itself is framescale.local.images' (cached: a run after `make images` rebuilds
nothing). Where no container engine can run, the section says so instead of failing the bench.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from bench.stack import BenchStack
from framescale import aws, synthetic
from framescale.local import images
from framescale.local import stack as local_stack
from framescale.local.processes import free_port

WORKER_BUDGET_BYTES = 300_000_000
START_TRIALS = 3


def _first_receive_seconds(engine: images.Engine, bench: BenchStack, image: str, trial: int) -> float:
    """Seconds from `run` to the message being in flight: the worker's first receive."""
    stack = local_stack.provision(f"bench-image-start-{trial}-{int(time.time())}")
    sqs = aws.client("sqs")
    sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps({"video": "s3://none/none.mp4", "job_id": "x"}))
    env = dict(bench.moto.client_env)
    env.update(
        stack.worker_env(
            FRAMESCALE_WORKER_MODEL_SERVER=bench.model_server.grpc_target,
            FRAMESCALE_WORKER_MODEL_NAME="synthetic",
            FRAMESCALE_WORKER_LABELS=json.dumps(synthetic.LABELS),
            FRAMESCALE_WORKER_HEALTH_PORT=str(free_port()),
            FRAMESCALE_WORKER_WAIT_TIME_SECONDS="1",
            FRAMESCALE_WORKER_LOG_LEVEL="WARNING",
        )
    )
    name = f"framescale-bench-start-{trial}"
    argv = ["run", "--rm", "--name", name, "--network", "host", "--user", "65532:65532", "--read-only"]
    argv += ["--cap-drop", "ALL", "--tmpfs", "/tmp:rw,size=256m,mode=1777"]
    for key, value in sorted(env.items()):
        argv += ["--env", f"{key}={value}"]
    started = time.perf_counter()
    process = subprocess.Popen(
        engine.command(*argv, image), env=dict(engine.env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = started + 120
        while time.perf_counter() < deadline:
            # Any change from (1 visible, 0 in flight): received (a bad job may settle in ms).
            if local_stack.queue_depth(sqs, stack.queue_url) != (1, 0):
                return round(time.perf_counter() - started, 2)
            if process.poll() is not None:
                raise RuntimeError(f"the worker container exited with {process.returncode} before receiving")
            time.sleep(0.05)
        raise TimeoutError("no receive within 120 s of `run`")
    finally:
        engine.run("rm", "--force", "--time", "2", name, capture=True, check=False)
        process.wait(30)


def run(bench: BenchStack, log: Callable[[str], None]) -> dict[str, Any]:
    try:
        started = time.perf_counter()
        built = images.build(images.DEFAULT_IMAGES)
        build_seconds = round(time.perf_counter() - started, 1)
    except images.EngineUnavailable as error:
        return {"skipped": f"no container engine can run here: {error}"}
    engine = images.find_engine(install=False)
    out: dict[str, Any] = {"engine": engine.kind, "build_seconds_this_run": build_seconds, "images": {}}
    for image in built:
        log(f"   {image.reference}: compressing to measure")
        out["images"][image.name] = {
            "reference": image.reference,
            "uncompressed_bytes": image.size_bytes,
            "compressed_bytes": images.compressed_size(engine, image.reference),
            "labels": engine.labels(image.reference),
        }
    worker = out["images"]["worker"]
    worker["budget_bytes"] = WORKER_BUDGET_BYTES
    worker["within_budget"] = worker["uncompressed_bytes"] <= WORKER_BUDGET_BYTES
    worker["package_bytes"] = images.package_sizes(engine, worker["reference"])
    trials = [_first_receive_seconds(engine, bench, worker["reference"], n) for n in range(START_TRIALS)]
    worker["run_to_first_receive_seconds"] = {"trials": trials, "median": sorted(trials)[len(trials) // 2]}
    log(f"   worker image {worker['uncompressed_bytes'] / 1e6:.0f} MB, first receive after {trials} s")
    return out
