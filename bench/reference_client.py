"""A client written the way the reference design works, for side-by-side throughput runs.

One process, one batch at a time: decode every frame with ``read()``, keep the sampled
ones, resize them to the model input, turn the batch into nested lists (``.tolist()``),
POST it as JSON to TF Serving's REST ``:predict`` and wait for the answer before decoding
on. It reads the videos from local disk (no S3, no queue), which favours it.

    python -m bench.reference_client --url http://127.0.0.1:8501 --model person \
        --batch-size 8 --input-size 320 --sample-fps 1 video.mp4 ...

Prints one JSON object: frames decoded and sampled, seconds in total and per phase.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np

SCORE_THRESHOLD = 0.3


class RestModel:
    """TF Serving's REST predict over one kept-alive HTTP connection."""

    def __init__(self, url: str, model: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 8501, timeout=300)
        self.path = f"/v1/models/{model}:predict"

    def predict(self, body: bytes) -> bytes:
        self.connection.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"REST predict answered {response.status}: {payload[:500]!r}")
        return payload

    def close(self) -> None:
        self.connection.close()


def count_detections(predictions: list[dict[str, Any]]) -> int:
    """What the reference does with an answer: keep detections above the score threshold."""
    kept = 0
    for prediction in predictions:
        scores = prediction.get("detection_scores", [])
        limit = int(prediction.get("num_detections", len(scores)))
        kept += sum(1 for score in scores[:limit] if score >= SCORE_THRESHOLD)
    return kept


def run(
    videos: Sequence[Path], *, url: str, model: str, batch_size: int, input_size: int, sample_fps: float
) -> dict[str, Any]:
    rest = RestModel(url, model)
    phases = {"decode_and_resize": 0.0, "encode_json": 0.0, "request": 0.0, "parse_json": 0.0}
    decoded = sampled = detections = requests = 0
    started = time.perf_counter()

    def send(batch: list[np.ndarray]) -> None:
        nonlocal detections, requests
        mark = time.perf_counter()
        body = json.dumps({"instances": np.stack(batch).tolist()}).encode()
        phases["encode_json"] += time.perf_counter() - mark
        mark = time.perf_counter()
        payload = rest.predict(body)
        phases["request"] += time.perf_counter() - mark
        mark = time.perf_counter()
        detections += count_detections(json.loads(payload)["predictions"])
        phases["parse_json"] += time.perf_counter() - mark
        requests += 1

    try:
        for video in videos:
            capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
            fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
            step = max(1, round(fps / sample_fps))
            batch: list[np.ndarray] = []
            index = 0
            try:
                while True:
                    mark = time.perf_counter()
                    ok, frame = capture.read()
                    if not ok:
                        phases["decode_and_resize"] += time.perf_counter() - mark
                        break
                    decoded += 1
                    keep = index % step == 0
                    index += 1
                    if keep:
                        resized = cv2.resize(frame, (input_size, input_size), interpolation=cv2.INTER_AREA)
                        batch.append(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))
                        sampled += 1
                    phases["decode_and_resize"] += time.perf_counter() - mark
                    if len(batch) == batch_size:
                        send(batch)
                        batch = []
                if batch:
                    send(batch)
            finally:
                capture.release()
    finally:
        rest.close()
    seconds = time.perf_counter() - started
    client = phases["decode_and_resize"] + phases["encode_json"] + phases["parse_json"]
    return {
        "frames_decoded": decoded,
        "frames_sampled": sampled,
        "requests": requests,
        "detections": detections,
        "seconds": round(seconds, 4),
        "client_seconds": round(client, 4),
        "phases_seconds": {name: round(value, 4) for name, value in phases.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference_client", description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--url", required=True, help="REST base URL of the model server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--sample-fps", type=float, default=1.0)
    args = parser.parse_args(argv)
    result = run(
        args.videos,
        url=args.url,
        model=args.model,
        batch_size=args.batch_size,
        input_size=args.input_size,
        sample_fps=args.sample_fps,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
