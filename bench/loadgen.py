"""The ceiling: the model server fed ready-made tensors over gRPC, with no video work at all.

Frames are decoded, resized and encoded into PredictRequests before the clock starts; the
timed loop only keeps ``--in-flight`` requests outstanding until at least ``--frames``
frames and ``--min-seconds`` have gone by. What it reaches is the most any client could get
from this model server on this machine.

    python -m bench.loadgen --target 127.0.0.1:8500 --model person --frames 200 video.mp4

Prints one JSON object: frames, requests, seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np

from framescale.tfserving import PredictionServiceStub, channel_options, pb, to_tensor_proto
from framescale.worker.inference import ModelClient

# Distinct batches cycled through; enough that the server never sees one request repeated back to back.
POOL_BATCHES = 4


def frames_from(video: Path, count: int, input_size: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    frames: list[np.ndarray] = []
    try:
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            resized = cv2.resize(frame, (input_size, input_size), interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise RuntimeError(f"no frames in {video}")
    while len(frames) < count:  # a short video: repeat its frames
        frames.extend(frames[: count - len(frames)])
    return np.stack(frames)


def run(
    video: Path,
    *,
    target: str,
    model: str,
    batch_size: int,
    input_size: int,
    in_flight: int,
    frames: int,
    min_seconds: float,
) -> dict[str, Any]:
    input_name = ModelClient(target, model).signature().input_name
    pool = frames_from(video, batch_size * POOL_BATCHES, input_size)
    requests = []
    for number in range(POOL_BATCHES):
        request = pb.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "serving_default"
        to_tensor_proto(pool[number * batch_size : (number + 1) * batch_size], out=request.inputs[input_name])
        requests.append(request)
    channel = grpc.insecure_channel(target, options=channel_options())
    predict = PredictionServiceStub(channel).Predict
    pending: collections.deque[grpc.Future] = collections.deque()
    done_frames = sent = 0
    started = time.perf_counter()
    try:
        while True:
            elapsed = time.perf_counter() - started
            if sent * batch_size >= frames and elapsed >= min_seconds:
                break
            if len(pending) >= in_flight:
                pending.popleft().result()
                done_frames += batch_size
            pending.append(predict.future(requests[sent % POOL_BATCHES], timeout=300))
            sent += 1
        while pending:
            pending.popleft().result()
            done_frames += batch_size
    finally:
        channel.close()
    seconds = time.perf_counter() - started
    return {"frames": done_frames, "requests": sent, "seconds": round(seconds, 4)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, help="where the frames come from (decoded before timing)")
    parser.add_argument("--target", required=True, help="gRPC address of the model server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--in-flight", type=int, default=3)
    parser.add_argument("--frames", type=int, default=200, help="send at least this many frames")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="and keep going for at least this long")
    args = parser.parse_args(argv)
    result = run(
        args.video,
        target=args.target,
        model=args.model,
        batch_size=args.batch_size,
        input_size=args.input_size,
        in_flight=args.in_flight,
        frames=args.frames,
        min_seconds=args.min_seconds,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
