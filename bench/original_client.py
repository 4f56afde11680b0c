"""The client logic of the system framescale replaces (aws-samples/amazon-elastic-inference-eks, 2019).

Reproduced as DESIGN.md records it, for side-by-side throughput runs: per video, read only
the first 20 frames with OpenCV, keep them full size and BGR (no resize, no colour
conversion), send them as ``.tolist()`` JSON to TF Serving's REST ``:predict`` in batches of
5, one request at a time. Left out, because they cost nothing here or cannot be measured: the
SQS message of ``str()``-ed labels and scores, and its hang on an unreadable video. Like
``bench.reference_client`` it reads local files (no S3, no queue), which favours it.

    python -m bench.original_client --url http://127.0.0.1:8501 --model person video.mp4 ...

Prints one JSON object: frames decoded and sent, requests, seconds in total and per phase.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.reference_client import RestModel, count_detections

FRAMES_PER_VIDEO = 20
BATCH_SIZE = 5


def run(videos: Sequence[Path], *, url: str, model: str) -> dict[str, Any]:
    rest = RestModel(url, model)
    phases = {"decode": 0.0, "encode_json": 0.0, "request": 0.0, "parse_json": 0.0}
    frames = requests = detections = request_bytes = 0
    started = time.perf_counter()
    try:
        for video in videos:
            mark = time.perf_counter()
            capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
            read: list[np.ndarray] = []
            try:
                while len(read) < FRAMES_PER_VIDEO:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    read.append(frame)  # full size, BGR, as read
            finally:
                capture.release()
            phases["decode"] += time.perf_counter() - mark
            for start in range(0, len(read), BATCH_SIZE):
                mark = time.perf_counter()
                body = json.dumps({"instances": np.stack(read[start : start + BATCH_SIZE]).tolist()}).encode()
                phases["encode_json"] += time.perf_counter() - mark
                request_bytes += len(body)
                mark = time.perf_counter()
                payload = rest.predict(body)
                phases["request"] += time.perf_counter() - mark
                mark = time.perf_counter()
                detections += count_detections(json.loads(payload)["predictions"])
                phases["parse_json"] += time.perf_counter() - mark
                requests += 1
            frames += len(read)
    finally:
        rest.close()
    seconds = time.perf_counter() - started
    return {
        "frames_decoded": frames,
        "frames_sampled": frames,
        "requests": requests,
        "request_megabytes": round(request_bytes / requests / 1e6, 1) if requests else 0.0,
        "detections": detections,
        "seconds": round(seconds, 4),
        "client_seconds": round(phases["decode"] + phases["encode_json"] + phases["parse_json"], 4),
        "phases_seconds": {name: round(value, 4) for name, value in phases.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.original_client", description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--url", required=True, help="REST base URL of the model server")
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    json.dump(run(args.videos, url=args.url, model=args.model), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
