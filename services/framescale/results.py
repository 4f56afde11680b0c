"""What a job produces: detection lines, the summary, and notifications.

``<output>/<job_id>/detections.jsonl`` holds one line per sampled frame in frame order;
``summary.json`` is written last, once, and only after detections.jsonl is complete: a job
whose summary exists is complete, a job without one is not (DESIGN.md, "Results"). The
worker stages its lines under ``<job_id>/_staging/`` until it has won the commit
(framescale.worker.commit) and removes them after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from framescale.aws import region as aws_region
from framescale.messages import S3Location

DETECTIONS_FILE = "detections.jsonl"
SUMMARY_FILE = "summary.json"
RESULT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax, normalized to the original frame

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, 4),
            "box": [round(value, 5) for value in self.box],
        }


def frame_line(frame: int, pts_ms: int, detections: list[Detection]) -> str:
    """One JSON Lines record (with its newline) for a sampled frame."""
    record = {"frame": frame, "pts_ms": pts_ms, "detections": [d.as_json() for d in detections]}
    return json.dumps(record, separators=(",", ":")) + "\n"


def job_summary(
    *,
    job_id: str,
    input: dict[str, Any],
    output: S3Location,
    model: dict[str, Any],
    video: dict[str, Any],
    frames: dict[str, Any],
    detections: int,
    label_counts: dict[str, int],
    timings: dict[str, float],
    model_calls: int,
) -> dict[str, Any]:
    """``summary.json`` of a finished job (DESIGN.md, "Results"); ``output`` is the job's folder."""
    return {
        "format_version": RESULT_FORMAT_VERSION,
        "job_id": job_id,
        "status": "succeeded",
        "input": dict(input),
        "output": {
            "detections": output.child(DETECTIONS_FILE).url,
            "summary": output.child(SUMMARY_FILE).url,
        },
        "model": dict(model),
        "video": dict(video),
        "frames": dict(frames),
        "detections": detections,
        "label_counts": dict(sorted(label_counts.items())),
        "timings_seconds": dict(timings),
        "model_calls": model_calls,
        "completed_at": utc_now_iso(),
    }


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def notification(
    *,
    status: str,
    job_id: str,
    input_url: str,
    output_url: str | None,
    failure_reason: str | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A notification shaped like SageMaker asynchronous inference's, so its consumers read it."""
    body: dict[str, Any] = {
        "awsRegion": aws_region(),
        "eventTime": utc_now_iso(),
        "receivedTime": None,
        "invocationStatus": status,
        "inferenceId": job_id,
        "requestParameters": {"inputLocation": input_url},
        "responseParameters": {"contentType": "application/jsonlines"},
    }
    if output_url is not None:
        body["responseParameters"]["outputLocation"] = output_url
    if failure_reason is not None:
        body["failureReason"] = failure_reason
    if summary is not None:
        body["framescale"] = {
            "framesSampled": summary.get("frames", {}).get("sampled"),
            "labelCounts": summary.get("label_counts"),
        }
    return body
