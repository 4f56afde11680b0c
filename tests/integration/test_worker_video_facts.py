"""Video facts through the real worker: true times in the results, the summary's account of the
video stream, the keyframes mode, and precise reasons for what cannot be decoded.

Inputs are made by ffmpeg (``tests/media.py``); expected frames and times come from ffmpeg's
own ``showinfo`` account of each file.
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from framescale.local import stack as local_stack
from tests import media
from tests.support import dead_letters, enqueue, failure_reason, read_lines, read_summary, unique, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_video_facts_modes_and_reasons_through_the_worker(aws_env, start_worker) -> None:
    stack = local_stack.provision(unique("facts"))
    jobs = {
        "vfr": ({"video": upload(stack, media.vfr_mp4(), "in/vfr.mp4"), "sample_fps": 1}, media.vfr_mp4()),
        "long-audio": ({"video": upload(stack, media.webm_audio_longer(), "in/a.webm")}, media.webm_audio_longer()),
        "late-ts": ({"video": upload(stack, media.mpegts_late_start(), "in/late.ts")}, media.mpegts_late_start()),
        "keyframes": (
            {"video": upload(stack, media.long_gop_h264(), "in/gop.mp4"), "sample": "keyframes"},
            media.long_gop_h264(),
        ),
    }
    failing = {
        "audio-only": (media.audio_only(), "no video stream (it holds only audio)"),
        "unknown-codec": (media.unknown_codec_avi(), "codec QQQQ is not supported by this build"),
    }
    for job_id, (body, _) in jobs.items():
        enqueue(stack, {**body, "job_id": job_id})
    for job_id, (path, _) in failing.items():
        enqueue(stack, {"video": upload(stack, path, f"in/{job_id}{path.suffix}"), "job_id": job_id})
    start_worker(stack)

    summaries = {job_id: wait_for(lambda j=job_id: read_summary(stack, j), what=job_id) for job_id in jobs}
    for job_id, (body, path) in jobs.items():
        reference = media.frame_times(path)
        times = [frame.seconds for frame in reference]
        if body.get("sample") == "keyframes":
            numbers = [n for n, frame in enumerate(reference) if frame.keyframe]
        else:
            numbers = media.expected_samples(times, Fraction(body.get("sample_fps", 1)))
        lines = read_lines(stack, job_id)
        assert [line["frame"] for line in lines] == numbers, job_id
        assert [line["pts_ms"] for line in lines] == [round((times[n] - times[0]) * 1000) for n in numbers], job_id
        video, frames = summaries[job_id]["video"], summaries[job_id]["frames"]
        assert video["frame_count"] == frames["total"] == len(reference), job_id
        assert video["start_seconds"] == pytest.approx(float(times[0]), abs=1e-6), job_id
        assert frames["sample_mode"] == body.get("sample", "fps")

    assert summaries["vfr"]["video"]["vfr"] is True and summaries["long-audio"]["video"]["vfr"] is False
    assert summaries["vfr"]["video"]["duration_seconds"] == pytest.approx(6.0)
    assert summaries["long-audio"]["video"]["duration_seconds"] == pytest.approx(5.0)  # not the audio's 8 s
    assert summaries["keyframes"]["frames"]["decoded"] == 3 and summaries["keyframes"]["frames"]["sample_fps"] is None

    letters: list[dict] = []
    wait_for(lambda: letters.extend(dead_letters(stack)) or len(letters) >= len(failing), what="the failures")
    reasons = {json.loads(m["Body"])["job_id"]: failure_reason(m) for m in letters}
    for job_id, (_, says) in failing.items():
        assert says in reasons[job_id], reasons
