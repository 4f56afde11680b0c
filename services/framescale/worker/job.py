"""One job: a video in S3 becomes ordered detections and a summary in S3.

Stages: resolve (HEAD, limits, job id, already done?) → download (streamed to disk) →
probe → decode + infer (pipelined, bounded memory) → stage the detections → commit and
finalize (framescale.worker.commit: ``summary.json`` appears last, once, and only when
``detections.jsonl`` is complete).
"""

from __future__ import annotations

import collections
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from framescale import logs, results
from framescale.messages import JobRequest, S3Location, derive_job_id
from framescale.worker.commit import ResultStore
from framescale.worker.errors import JobCancelled, PermanentJobError, TransientJobError
from framescale.worker.geometry import Fit, fit_frame, plan_fit
from framescale.worker.inference import ModelClient, answered_version, read_detections, rpc_error
from framescale.worker.retry import RetryPolicy, aws_error
from framescale.worker.sampling import FrameSampler
from framescale.worker.settings import WorkerSettings
from framescale.worker.video import DecodeStats, VideoInfo, open_video, sampled_frames

log = logging.getLogger(__name__)

# The video streams to disk in bounded chunks, never whole into memory.
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# How often a wait for a Predict answer looks at the cancel flag (shutdown).
CANCEL_POLL_SECONDS = 0.2


@dataclass
class JobReport:
    """What happened, for the result, the notification, logs and metrics."""

    job_id: str = ""
    input_url: str = ""
    output_url: str = ""
    status: str = "failed"  # succeeded | skipped (already complete) | repaired (a crashed commit finished) | failed
    frames_decoded: int = 0
    frames_sampled: int = 0
    detections: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    model_latencies: list[float] = field(default_factory=list)
    download_failures: int = 0
    upload_failures: int = 0
    summary: dict[str, Any] | None = None
    received: float = field(default_factory=time.perf_counter)  # when the message arrived (perf_counter)
    input_size: tuple[int, int] | None = None  # (height, width) of the frames sent to the model
    model_version: int | None = None  # as the Predict answers name it


@dataclass(frozen=True)
class ResolvedJob:
    request: JobRequest
    job_id: str
    etag: str
    size: int
    output: S3Location  # the job's own folder: <output>/<job_id>/
    sample_fps: float


class JobRunner:
    def __init__(
        self,
        settings: WorkerSettings,
        s3: Any,
        model: ModelClient,
        *,
        cancel: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.model = model
        self.cancel = cancel or threading.Event()
        self.cancelled = self.cancel.is_set
        self.retry = RetryPolicy(
            attempts=settings.transient_retries + 1,
            base_seconds=settings.backoff_base_seconds,
            max_seconds=settings.backoff_max_seconds,
        )
        settings.work_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ entry

    def run(self, request: JobRequest, report: JobReport) -> JobReport:
        report.input_url = request.video.url
        job = self.resolve(request, report)
        report.job_id = job.job_id
        report.output_url = job.output.url
        logs.bind(job_id=job.job_id)
        log.info("job started", extra={"input": request.video.url, "output": job.output.url, "stage": "resolve"})

        def upload_retried(_: TransientJobError) -> None:
            report.upload_failures += 1

        store = ResultStore(
            self.s3, job.output, job.job_id, retry=self.retry, cancel=self.cancel, on_upload_retry=upload_retried
        )
        done = store.completed()
        if done is not None:
            report.status, report.summary = done
            if report.status == "skipped":
                log.info("job already complete; results left as they are", extra={"stage": "resolve"})
            return report
        with tempfile.TemporaryDirectory(prefix="job-", dir=self.settings.work_dir) as scratch:
            folder = Path(scratch)
            video_path = folder / ("input" + Path(job.request.video.key).suffix[:16])
            self._timed(report, "download", lambda: self._download(job, video_path, report))
            self._check_cancel()
            detections_path = folder / results.DETECTIONS_FILE
            info, label_counts = self._timed(
                report, "decode_and_infer", lambda: self._decode_and_infer(job, video_path, detections_path, report)
            )
            self._check_cancel()
            self._timed(report, "upload", lambda: store.stage(detections_path))
        report.timings["total"] = round(time.perf_counter() - report.received, 4)
        summary = self._summary(job, info, label_counts, report)
        report.status, report.summary = self._timed(report, "commit", lambda: store.commit(summary))
        # From receive to finished commit (the summary above could not include its own commit).
        report.timings["total"] = round(time.perf_counter() - report.received, 4)
        return report

    # ------------------------------------------------------------------ resolve

    def resolve(self, request: JobRequest, report: JobReport) -> ResolvedJob:
        video = request.video

        def head() -> dict[str, Any]:
            return dict(self.s3.head_object(Bucket=video.bucket, Key=video.key))

        try:
            meta = self.retry.call(head, classify=lambda e: aws_error(e, stage="resolve", what=f"HEAD {video.url}"))
        except PermanentJobError as error:
            if "404" in error.reason or "NoSuchKey" in error.reason or "Not Found" in error.reason:
                raise PermanentJobError(f"video not found: {video.url}", stage="resolve") from None
            if "403" in error.reason or "Forbidden" in error.reason or "AccessDenied" in error.reason:
                raise PermanentJobError(
                    f"access denied to {video.url}: grant the worker's role s3:GetObject on it", stage="resolve"
                ) from None
            raise
        size = int(meta.get("ContentLength", 0))
        etag = str(meta.get("ETag", "")).strip('"')
        if size == 0:
            raise PermanentJobError(f"video is empty (0 bytes): {video.url}", stage="resolve")
        if size > self.settings.max_object_bytes:
            raise PermanentJobError(
                f"video is {size} bytes, over the limit of {self.settings.max_object_bytes} "
                "(FRAMESCALE_WORKER_MAX_OBJECT_BYTES)",
                stage="resolve",
            )
        job_id = request.job_id or derive_job_id(video, etag or str(size))
        base = request.output
        if base is None:
            if self.settings.output is None:
                raise PermanentJobError(
                    "message names no output and FRAMESCALE_WORKER_OUTPUT is unset", stage="resolve"
                )
            bucket, _, prefix = self.settings.output[len("s3://") :].partition("/")
            base = S3Location(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/")
        sample_fps = request.sample_fps or self.settings.sample_fps
        return ResolvedJob(request, job_id, etag, size, base.child(job_id, ""), sample_fps)

    # ------------------------------------------------------------------ download

    def _download(self, job: ResolvedJob, path: Path, report: JobReport) -> None:
        video = job.request.video
        # If-Match pins the object version the job id was derived from: if the object is
        # replaced mid-job, the GET fails (412) and the retry resolves the new version.
        condition = {"IfMatch": f'"{job.etag}"'} if job.etag else {}

        def fetch() -> None:
            body = self.s3.get_object(Bucket=video.bucket, Key=video.key, **condition)["Body"]
            try:
                with path.open("wb") as out:
                    for chunk in body.iter_chunks(DOWNLOAD_CHUNK_BYTES):
                        out.write(chunk)
                        if self.cancelled():
                            raise JobCancelled("shutdown: job handed back during download")
            finally:
                body.close()

        def failed(_: TransientJobError) -> None:
            report.download_failures += 1

        try:
            self.retry.call(
                fetch,
                classify=lambda e: aws_error(e, stage="download", what=f"GET {video.url}"),
                cancel=self.cancel,
                on_retry=failed,
            )
        except TransientJobError:
            report.download_failures += 1
            raise

    # ------------------------------------------------------------------ decode + infer

    def _input_size(self, info: VideoInfo) -> tuple[int, int]:
        signature = self.model_signature()
        side = self.settings.input_size
        return signature.input_height or side, signature.input_width or side

    def model_signature(self) -> Any:
        return self.retry.call(
            self.model.signature,
            classify=lambda e: (
                rpc_error(e, what="GetModelMetadata")
                if isinstance(e, grpc.RpcError)
                else TransientJobError(str(e), stage="model")
            ),
            cancel=self.cancel,
        )

    def _decode_and_infer(
        self, job: ResolvedJob, video_path: Path, detections_path: Path, report: JobReport
    ) -> tuple[VideoInfo, dict[str, int]]:
        capture, info = open_video(video_path)
        try:
            self._check_limits(info)
            height, width = self._input_size(info)
            report.input_size = (height, width)
            fit = plan_fit(info.height, info.width, height, width, self.settings.resize_mode)
            sampler = FrameSampler(info.fps, job.sample_fps)
            stats = DecodeStats()
            counts: dict[str, int] = collections.Counter()
            with detections_path.open("w", encoding="utf-8") as out:
                pipeline = _InferencePipeline(self, fit, out, counts, report)
                batch = np.empty((self.settings.batch_size, height, width, 3), dtype=np.uint8)
                meta: list[tuple[int, int]] = []
                frames = sampled_frames(
                    capture,
                    info,
                    sampler,
                    stats,
                    max_bad_ratio=self.settings.max_bad_frame_ratio,
                    should_stop=self.cancelled,
                    max_seconds=self.settings.max_duration_seconds,
                )
                for index, pts_ms, frame in frames:
                    fit_frame(frame, fit, batch[len(meta)])
                    meta.append((index, pts_ms))
                    if len(meta) == self.settings.batch_size:
                        pipeline.submit(batch, meta)
                        batch = np.empty_like(batch)
                        meta = []
                self._check_cancel()
                if meta:
                    pipeline.submit(batch[: len(meta)], meta)
                pipeline.drain()
        finally:
            capture.release()
        report.frames_decoded = stats.decoded
        report.frames_sampled = stats.sampled
        info = VideoInfo(info.width, info.height, info.fps, max(info.frame_count, stats.decoded), info.codec)
        return info, dict(counts)

    def _check_limits(self, info: VideoInfo) -> None:
        if info.width * info.height > self.settings.max_pixels:
            raise PermanentJobError(
                f"frame size {info.width}x{info.height} is over the limit of {self.settings.max_pixels} pixels "
                "(FRAMESCALE_WORKER_MAX_PIXELS)",
                stage="probe",
            )
        if info.duration_seconds > self.settings.max_duration_seconds:
            raise PermanentJobError(
                f"video lasts {info.duration_seconds:.0f} s, over the limit of "
                f"{self.settings.max_duration_seconds:.0f} s (FRAMESCALE_WORKER_MAX_DURATION_SECONDS)",
                stage="probe",
            )

    def _check_cancel(self) -> None:
        if self.cancelled():
            raise JobCancelled("shutdown: job handed back")

    # ------------------------------------------------------------------ summary

    def _summary(
        self, job: ResolvedJob, info: VideoInfo, label_counts: dict[str, int], report: JobReport
    ) -> dict[str, Any]:
        signature = self.model_signature()
        return {
            "format_version": results.RESULT_FORMAT_VERSION,
            "job_id": job.job_id,
            "status": "succeeded",
            "input": {"url": job.request.video.url, "etag": job.etag, "bytes": job.size},
            "output": {
                "detections": job.output.child(results.DETECTIONS_FILE).url,
                "summary": job.output.child(results.SUMMARY_FILE).url,
            },
            "model": {
                "name": self.model.model_name,
                # The version that answered, not merely the one the metadata named before.
                "version": report.model_version if report.model_version is not None else signature.version,
                "signature": self.model.signature_name,
                "input_size": list(report.input_size) if report.input_size else None,
                "resize_mode": self.settings.resize_mode,
                "score_threshold": self.settings.score_threshold,
            },
            "video": info.as_json(),
            "frames": {
                "decoded": report.frames_decoded,
                "sampled": report.frames_sampled,
                "sample_fps": job.sample_fps,
            },
            "detections": report.detections,
            "label_counts": dict(sorted(label_counts.items())),
            "timings_seconds": dict(report.timings),
            "model_calls": len(report.model_latencies),
            "completed_at": results.utc_now_iso(),
        }

    def _timed(self, report: JobReport, stage: str, operation: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return operation()
        finally:
            report.timings[stage] = round(time.perf_counter() - started, 4)


class _InferencePipeline:
    """Keeps up to ``max_in_flight`` Predict calls running; writes their lines in frame order."""

    def __init__(self, runner: JobRunner, fit: Fit, out: Any, counts: dict[str, int], report: JobReport) -> None:
        self.runner = runner
        self.fit = fit
        self.out = out
        self.counts = counts
        self.report = report
        self.pending: collections.deque[tuple[grpc.Future, np.ndarray, list[tuple[int, int]], float]] = (
            collections.deque()
        )

    def submit(self, batch: np.ndarray, meta: list[tuple[int, int]]) -> None:
        while len(self.pending) >= self.runner.settings.max_in_flight:
            self._complete_oldest()
        try:
            future = self.runner.model.submit(batch)
        except grpc.RpcError as error:  # raised at once when the channel is already broken
            future = _FailedFuture(error)
        self.pending.append((future, batch, meta, time.perf_counter()))

    def drain(self) -> None:
        while self.pending:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        future, batch, meta, started = self.pending.popleft()
        try:
            response = self._await(future)
            latency = time.perf_counter() - started
        except grpc.RpcError as error:
            failure = rpc_error(error, what="Predict")
            if isinstance(failure, PermanentJobError):
                raise failure from None
            # Retry this batch on its own, in order; later batches wait behind it.
            log.warning("Predict failed, retrying batch", extra={"reason": failure.reason, "stage": "inference"})
            response, latency = self.runner.retry.call(
                lambda: self._predict(batch),
                classify=lambda e: (
                    rpc_error(e, what="Predict")
                    if isinstance(e, grpc.RpcError)
                    else TransientJobError(str(e), stage="inference")
                ),
                cancel=self.runner.cancel,
            )
        self.report.model_latencies.append(latency)
        self._note_version(response)
        settings = self.runner.settings
        per_frame = read_detections(
            response,
            [self.fit] * len(meta),
            settings.labels,
            score_threshold=settings.score_threshold,
            max_detections=settings.max_detections,
        )
        for (index, pts_ms), detections in zip(meta, per_frame, strict=True):
            self.out.write(results.frame_line(index, pts_ms, detections))
            for detection in detections:
                self.counts[detection.label] = self.counts.get(detection.label, 0) + 1
            self.report.detections += len(detections)

    def _predict(self, batch: np.ndarray) -> tuple[Any, float]:
        started = time.perf_counter()
        return self._await(self.runner.model.submit(batch)), time.perf_counter() - started

    def _await(self, future: Any) -> Any:
        """The answer to a Predict; a shutdown stops the wait within CANCEL_POLL_SECONDS, not the RPC timeout."""
        while True:
            try:
                return future.result(timeout=CANCEL_POLL_SECONDS)
            except grpc.FutureTimeoutError:
                if self.runner.cancelled():
                    future.cancel()
                    raise JobCancelled("shutdown: job handed back during inference") from None

    def _note_version(self, response: Any) -> None:
        version = answered_version(response)
        if version is None:
            return
        if self.report.model_version not in (None, version):
            log.warning(
                "the model version changed during the job; the summary names the last one",
                extra={"from_version": self.report.model_version, "to_version": version, "stage": "inference"},
            )
        self.report.model_version = version


class _FailedFuture:
    """A Predict that failed before it started; answers like a failed gRPC future."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.error = error

    def result(self, timeout: float | None = None) -> Any:
        raise self.error

    def cancel(self) -> bool:
        return False
