"""One job: a video in S3 becomes ordered detections and a summary in S3.

Each stage returns a value: resolve (HEAD, limits, job id) → ``ResolvedJob``; already done?
(framescale.worker.commit) → a ``CommitResult`` or on; download (streamed to disk) →
``LocalVideo``; probe + decode + infer (pipelined, bounded memory) → ``InferenceResult``;
stage the detections → ``Staged``; commit and finalize → ``CommitResult`` (``summary.json``
appears last, once, and only when ``detections.jsonl`` is complete). The ``JobReport`` is
assembled once, at the end, from those values; a failure is part of it, as a value.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from framescale import logs, results
from framescale.messages import JobRequest, S3Location, derive_job_id
from framescale.worker import scratch
from framescale.worker.commit import CommitResult, Completion, ResultStore
from framescale.worker.errors import (
    AccessDenied,
    BucketNotFound,
    JobCancelled,
    JobError,
    NotFound,
    PermanentJobError,
    ServiceError,
    TransientJobError,
    job_error,
)
from framescale.worker.geometry import Fit, plan_fit
from framescale.worker.inference import answered_version, read_detections
from framescale.worker.ports import (
    Clock,
    ModelServer,
    ModelSignature,
    ObjectInfo,
    ObjectStore,
    PredictCall,
    SystemClock,
)
from framescale.worker.retry import RetryPolicy
from framescale.worker.sampling import Sampling
from framescale.worker.settings import WorkerSettings
from framescale.worker.video import DecodeStats, VideoInfo, open_video, sampled_frames

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often a wait for a Predict answer looks at the cancel flag (shutdown).
CANCEL_POLL_SECONDS = 0.2

Frame = tuple[int, int]  # (frame index, pts_ms) of a sampled frame


class JobStatus(enum.Enum):
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # already complete (or another attempt won): results left as they are
    REPAIRED = "repaired"  # a committed attempt had crashed before publishing; finished without re-running
    FAILED = "failed"


COMPLETED = frozenset({JobStatus.SUCCEEDED, JobStatus.SKIPPED, JobStatus.REPAIRED})


class FailureKind(enum.Enum):
    PERMANENT = "permanent"  # the dead-letter queue
    TRANSIENT = "transient"  # the message comes back later
    CANCELLED = "cancelled"  # shutdown: the message is handed back at once


@dataclass(frozen=True)
class Failure:
    """Why a job did not complete. A value (it travels to the supervisor's metrics over a pipe)."""

    kind: FailureKind
    reason: str
    stage: str

    @classmethod
    def of(cls, error: JobError | JobCancelled) -> Failure:
        if isinstance(error, JobCancelled):
            return cls(FailureKind.CANCELLED, str(error), "shutdown")
        kind = FailureKind.TRANSIENT if isinstance(error, TransientJobError) else FailureKind.PERMANENT
        return cls(kind, error.reason, error.stage)


@dataclass(frozen=True)
class ResolvedJob:
    request: JobRequest
    job_id: str
    etag: str
    size: int
    output: S3Location  # the job's own folder: <output>/<job_id>/
    sample_fps: float
    video: S3Location  # the object read: the message's key, or the key as written when only that exists
    version_id: str | None = None
    sample_mode: str = "fps"  # or "keyframes"

    def identity(self) -> dict[str, Any]:
        """What names the input in the summary, and what another request for this job id must match."""
        named: dict[str, Any] = {"url": self.video.url, "etag": self.etag}
        if self.version_id:
            named["version_id"] = self.version_id
        return named


@dataclass(frozen=True)
class LocalVideo:
    path: Path
    size: int


@dataclass(frozen=True)
class InferenceResult:
    video: VideoInfo
    lines: Path  # detections.jsonl, one line per sampled frame in frame order
    frames_decoded: int
    frames_sampled: int
    detections: int
    label_counts: dict[str, int]
    input_size: tuple[int, int]  # (height, width) of the frames sent to the model
    model_version: int | None  # as the Predict answers name it
    model_latencies: tuple[float, ...]


@dataclass(frozen=True)
class JobReport:
    """What happened to one job, for the notification, logs and metrics; built once, at the end."""

    input_url: str
    job_id: str = ""
    output_url: str = ""
    status: JobStatus = JobStatus.FAILED
    failure: Failure | None = None
    summary: dict[str, Any] | None = None
    frames_decoded: int = 0
    frames_sampled: int = 0
    detections: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    model_latencies: tuple[float, ...] = ()
    download_failures: int = 0
    upload_failures: int = 0


class _StageClock:
    """Per-stage timings and failed-call counts while a job runs (private to JobRunner.run)."""

    def __init__(self, clock: Clock, received: float) -> None:
        self.clock = clock
        self.received = received
        self.timings: dict[str, float] = {}
        self.download_failures = 0
        self.upload_failures = 0

    def timed(self, stage: str, operation: Callable[[], T]) -> T:
        started = self.clock.monotonic()
        try:
            return operation()
        finally:
            self.timings[stage] = round(self.clock.monotonic() - started, 4)

    def total(self) -> None:
        self.timings["total"] = round(self.clock.monotonic() - self.received, 4)

    def download_failed(self, _: ServiceError) -> None:
        self.download_failures += 1

    def upload_failed(self, _: ServiceError) -> None:
        self.upload_failures += 1


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """What is left of a service's failure, after retries, fails this stage of the job."""
    try:
        yield
    except ServiceError as error:
        raise job_error(error, stage=name) from error


class JobRunner:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        store: ObjectStore,
        model: ModelServer,
        clock: Clock | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.clock = clock or SystemClock()
        self.cancel = cancel or threading.Event()
        self.retry = RetryPolicy(
            attempts=settings.transient_retries + 1,
            base_seconds=settings.backoff_base_seconds,
            max_seconds=settings.backoff_max_seconds,
            clock=self.clock,
        )
        settings.work_dir.mkdir(parents=True, exist_ok=True)

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    # ------------------------------------------------------------------ entry

    def run(self, request: JobRequest, *, received: float | None = None) -> JobReport:
        """Run one job; its failure, if any, is in the report (never raised)."""
        stages = _StageClock(self.clock, self.clock.monotonic() if received is None else received)
        job: ResolvedJob | None = None
        done: CommitResult | None = None
        inference: InferenceResult | None = None
        failure: Failure | None = None
        try:
            job = self.resolve(request)
            logs.bind(job_id=job.job_id)
            log.info("job started", extra={"input": request.video.url, "output": job.output.url, "stage": "resolve"})
            store = ResultStore(
                self.store,
                job.output,
                job.job_id,
                retry=self.retry,
                cancel=self.cancel,
                clock=self.clock,
                on_failure=stages.upload_failed,
            )
            with self._output_stage("resolve", job):
                done = store.completed()
            if done is not None:
                _same_input(job, done.summary)
                if done.status is Completion.SKIPPED:
                    log.info("job already complete; results left as they are", extra={"stage": "resolve"})
            else:
                done, inference = self._work(job, store, stages)
        except (JobError, JobCancelled) as error:
            failure = Failure.of(error)
        return self._report(request, job=job, done=done, inference=inference, failure=failure, stages=stages)

    def _work(self, job: ResolvedJob, store: ResultStore, stages: _StageClock) -> tuple[CommitResult, InferenceResult]:
        with self._scratch() as folder:
            video = stages.timed("download", lambda: self.download(job, folder, on_failure=stages.download_failed))
            self._check_cancel()
            inference = stages.timed("decode_and_infer", lambda: self.decode_and_infer(job, video, folder))
            self._check_cancel()
            with self._output_stage("upload", job):
                staged = stages.timed("upload", lambda: store.stage(inference.lines))
        stages.total()
        summary = self.summary(job, inference, stages.timings)
        with self._output_stage("commit", job):
            done = stages.timed("commit", lambda: store.commit(staged, summary))
        if done.status is not Completion.SUCCEEDED:
            _same_input(job, done.summary)  # another attempt's results: for this very input?
        return done, inference

    def _report(
        self,
        request: JobRequest,
        *,
        job: ResolvedJob | None,
        done: CommitResult | None,
        inference: InferenceResult | None,
        failure: Failure | None,
        stages: _StageClock,
    ) -> JobReport:
        if inference is not None:
            # From receive to finished commit (the summary could not include its own commit).
            stages.total()
        return JobReport(
            input_url=request.video.url,
            job_id=job.job_id if job else (request.job_id or ""),
            output_url=job.output.url if job else "",
            status=JobStatus(done.status.value) if done is not None and failure is None else JobStatus.FAILED,
            failure=failure,
            summary=done.summary if done is not None and failure is None else None,
            frames_decoded=inference.frames_decoded if inference else 0,
            frames_sampled=inference.frames_sampled if inference else 0,
            detections=inference.detections if inference else 0,
            timings=dict(stages.timings),
            model_latencies=inference.model_latencies if inference else (),
            download_failures=stages.download_failures,
            upload_failures=stages.upload_failures,
        )

    @contextlib.contextmanager
    def _output_stage(self, name: str, job: ResolvedJob) -> Iterator[None]:
        """A stage that reads or writes the job's results: a missing bucket is named as such."""
        try:
            yield
        except BucketNotFound as error:
            raise PermanentJobError(
                f"output bucket {job.output.bucket} does not exist (job {job.job_id} writes to {job.output.url})",
                stage=name,
            ) from error
        except ServiceError as error:
            raise job_error(error, stage=name) from error

    def _scratch(self) -> contextlib.AbstractContextManager[Path]:
        return scratch.job_folder(self.settings.work_dir)

    # ------------------------------------------------------------------ resolve

    def resolve(self, request: JobRequest) -> ResolvedJob:
        video = request.video
        shown = f"{video.url}?versionId={request.version_id}" if request.version_id else video.url
        try:
            video, info = self._head(request)
        except NotFound:
            raise PermanentJobError(f"video not found: {shown}", stage="resolve") from None
        except AccessDenied:
            raise PermanentJobError(
                f"access denied to {shown}: grant the worker's role s3:GetObject"
                + (" and s3:GetObjectVersion" if request.version_id else "")
                + " on it",
                stage="resolve",
            ) from None
        except ServiceError as error:
            raise job_error(error, stage="resolve") from error
        if info.size == 0:
            raise PermanentJobError(f"video is empty (0 bytes): {video.url}", stage="resolve")
        if info.size > self.settings.max_object_bytes:
            raise PermanentJobError(
                f"video is {info.size} bytes, over the limit of {self.settings.max_object_bytes} "
                "(FRAMESCALE_WORKER_MAX_OBJECT_BYTES)",
                stage="resolve",
            )
        job_id = request.job_id or derive_job_id(video, info.etag or str(info.size), request.version_id)
        base = request.output
        if base is None:
            if self.settings.output is None:
                raise PermanentJobError(
                    "message names no output and FRAMESCALE_WORKER_OUTPUT is unset", stage="resolve"
                )
            bucket, _, prefix = self.settings.output[len("s3://") :].partition("/")
            base = S3Location(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/")
        sample_fps = request.sample_fps or self.settings.sample_fps
        # A rate in the message means fps mode, whatever the worker's default mode.
        sample_mode = request.sample or ("fps" if request.sample_fps else self.settings.sample_mode)
        return ResolvedJob(
            request,
            job_id,
            info.etag,
            info.size,
            base.child(job_id, ""),
            sample_fps,
            video,
            request.version_id,
            sample_mode,
        )

    def _head(self, request: JobRequest) -> tuple[S3Location, ObjectInfo]:
        """The video's object: at the message's (decoded) key, else at the key exactly as written."""
        candidates = [request.video] + ([request.literal] if request.literal is not None else [])
        for number, video in enumerate(candidates, 1):

            def head(where: S3Location = video) -> ObjectInfo:
                return self.store.head(where, version_id=request.version_id)

            try:
                info = self.retry.call(head, cancel=self.cancel)
            except NotFound:
                if number == len(candidates):
                    raise
                continue
            return video, info
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ download

    def download(
        self, job: ResolvedJob, folder: Path, *, on_failure: Callable[[ServiceError], None] | None = None
    ) -> LocalVideo:
        """The video on local disk. The ETag pins the object version the job id was derived
        from: if the object is replaced mid-job, the GET fails and the retry resolves the new one."""
        video = job.video
        path = folder / ("input" + Path(video.key).suffix[:16])
        with _stage("download"):
            self.retry.call(
                lambda: self.store.download(
                    video, path, etag=job.etag or None, version_id=job.version_id, should_stop=self.cancelled
                ),
                cancel=self.cancel,
                on_failure=on_failure,
            )
        return LocalVideo(path, path.stat().st_size)

    # ------------------------------------------------------------------ decode + infer

    def model_signature(self) -> ModelSignature:
        with _stage("model"):
            return self.retry.call(self.model.signature, cancel=self.cancel)

    def input_size(self) -> tuple[int, int]:
        """(height, width) of the frames the model takes: its signature's, else the configured side."""
        signature = self.model_signature()
        side = self.settings.input_size
        return signature.input_height or side, signature.input_width or side

    def decode_and_infer(self, job: ResolvedJob, video: LocalVideo, folder: Path) -> InferenceResult:
        capture, info = open_video(video.path)
        try:
            self._check_limits(info)
            height, width = self.input_size()
            fit = plan_fit(info.height, info.width, height, width, self.settings.resize_mode)
            stats = DecodeStats()
            frames = sampled_frames(
                capture,
                info,
                Sampling(job.sample_mode, job.sample_fps),
                stats,
                max_bad_ratio=self.settings.max_bad_frame_ratio,
                should_stop=self.cancelled,
                max_seconds=self.settings.max_duration_seconds,
                fit=fit,  # frames come fitted to the model input (RGB), scaled once in YUV
            )
            pipeline = PredictPipeline(
                self.model,
                fit=fit,
                labels=self.settings.labels,
                score_threshold=self.settings.score_threshold,
                max_detections=self.settings.max_detections,
                max_in_flight=self.settings.max_in_flight,
                retry=self.retry,
                cancel=self.cancel,
                clock=self.clock,
            )
            counts: collections.Counter[str] = collections.Counter()
            detections = 0
            lines = folder / results.DETECTIONS_FILE
            with lines.open("w", encoding="utf-8") as out:
                for (index, pts_ms), found in pipeline.run(self._batches(frames, height, width)):
                    out.write(results.frame_line(index, pts_ms, found))
                    counts.update(detection.label for detection in found)
                    detections += len(found)
        finally:
            capture.release()
        return InferenceResult(
            video=info.measured(stats),
            lines=lines,
            frames_decoded=stats.decoded,
            frames_sampled=stats.sampled,
            detections=detections,
            label_counts=dict(counts),
            input_size=(height, width),
            model_version=pipeline.version,
            model_latencies=tuple(pipeline.latencies),
        )

    def _batches(
        self, frames: Iterable[tuple[int, int, np.ndarray]], height: int, width: int
    ) -> Iterator[tuple[np.ndarray, list[Frame]]]:
        """Sampled frames (already fitted to the model input) in batches of ``batch_size``."""
        size = self.settings.batch_size
        batch = np.empty((size, height, width, 3), dtype=np.uint8)
        meta: list[Frame] = []
        for index, pts_ms, frame in frames:
            batch[len(meta)] = frame
            meta.append((index, pts_ms))
            if len(meta) == size:
                yield batch, meta
                batch = np.empty_like(batch)  # the last one may still be in flight
                meta = []
        self._check_cancel()
        if meta:
            yield batch[: len(meta)], meta

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

    def summary(self, job: ResolvedJob, inference: InferenceResult, timings: dict[str, float]) -> dict[str, Any]:
        signature = self.model_signature()
        return results.job_summary(
            job_id=job.job_id,
            input={**job.identity(), "bytes": job.size},
            output=job.output,
            model={
                "name": self.model.model_name,
                # The version that answered, not merely the one the metadata named before.
                "version": inference.model_version if inference.model_version is not None else signature.version,
                "signature": self.model.signature_name,
                "input_size": list(inference.input_size),
                "resize_mode": self.settings.resize_mode,
                "score_threshold": self.settings.score_threshold,
            },
            video=inference.video.as_json(),
            frames={
                "total": inference.video.frame_count,  # in the video stream, counted by the demuxer
                "decoded": inference.frames_decoded,  # the rest were skipped: no sample needed them
                "sampled": inference.frames_sampled,
                "sample_mode": job.sample_mode,
                "sample_fps": job.sample_fps if job.sample_mode == "fps" else None,
            },
            detections=inference.detections,
            label_counts=inference.label_counts,
            timings=timings,
            model_calls=len(inference.model_latencies),
        )


def _same_input(job: ResolvedJob, summary: dict[str, Any]) -> None:
    """A job id names one input: results there for another video (or another version of it) are
    not this job's. What the summary does not name (a record from before a field existed) is not held against it."""
    found = summary.get("input")
    theirs: dict[str, Any] = found if isinstance(found, dict) else {}
    ours = job.identity()
    differs = [
        key
        for key in ("url", "etag", "version_id")
        if (key in theirs or key == "version_id") and theirs.get(key) != ours.get(key)
    ]
    if not differs:
        return

    def describe(named: dict[str, Any]) -> str:
        version = f", version {named['version_id']}" if named.get("version_id") else ""
        return f"{named.get('url')} (ETag {named.get('etag')}{version})"

    raise PermanentJobError(
        f"job id {job.job_id} already holds results for {describe(theirs)}, not for {describe(ours)}; "
        "they were left as they are: send this video with another job_id, or with none (one is derived from it)",
        stage="resolve",
    )


class PredictPipeline:
    """Keeps up to ``max_in_flight`` Predict calls running and yields ``(frame, detections)`` in frame order.

    A batch whose call fails transiently is retried on its own, in order; the batches behind
    it wait. ``latencies`` and ``version`` say how the calls went.
    """

    def __init__(
        self,
        model: ModelServer,
        *,
        fit: Fit,
        labels: dict[int, str],
        score_threshold: float,
        max_detections: int,
        max_in_flight: int,
        retry: RetryPolicy,
        cancel: threading.Event,
        clock: Clock,
    ) -> None:
        self.model = model
        self.fit = fit
        self.labels = labels
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.max_in_flight = max_in_flight
        self.retry = retry
        self.cancel = cancel
        self.clock = clock
        self.latencies: list[float] = []
        self.version: int | None = None

    def run(self, batches: Iterable[tuple[np.ndarray, list[Frame]]]) -> Iterator[tuple[Frame, list[results.Detection]]]:
        pending: collections.deque[tuple[PredictCall, np.ndarray, list[Frame], float]] = collections.deque()
        for batch, frames in batches:
            while len(pending) >= self.max_in_flight:
                yield from self._complete(*pending.popleft())
            pending.append((self.model.submit(batch), batch, frames, self.clock.monotonic()))
        while pending:
            yield from self._complete(*pending.popleft())

    def _complete(
        self, call: PredictCall, batch: np.ndarray, frames: list[Frame], started: float
    ) -> Iterator[tuple[Frame, list[results.Detection]]]:
        with _stage("inference"):
            try:
                response = self._await(call)
                latency = self.clock.monotonic() - started
            except ServiceError as error:
                if not error.transient:
                    raise
                # Retry this batch on its own, in order; later batches wait behind it.
                log.warning("Predict failed, retrying batch", extra={"reason": str(error), "stage": "inference"})
                response, latency = self.retry.call(lambda: self._predict(batch), cancel=self.cancel)
        self.latencies.append(latency)
        self._note_version(response)
        per_frame = read_detections(
            response,
            [self.fit] * len(frames),
            self.labels,
            score_threshold=self.score_threshold,
            max_detections=self.max_detections,
        )
        yield from zip(frames, per_frame, strict=True)

    def _predict(self, batch: np.ndarray) -> tuple[Any, float]:
        started = self.clock.monotonic()
        return self._await(self.model.submit(batch)), self.clock.monotonic() - started

    def _await(self, call: PredictCall) -> Any:
        """The answer to a Predict; a shutdown stops the wait within CANCEL_POLL_SECONDS, not the RPC timeout."""
        while True:
            try:
                return call.result(timeout=CANCEL_POLL_SECONDS)
            except TimeoutError:
                if self.cancel.is_set():
                    call.cancel()
                    raise JobCancelled("shutdown: job handed back during inference") from None

    def _note_version(self, response: Any) -> None:
        version = answered_version(response)
        if version is None:
            return
        if self.version not in (None, version):
            log.warning(
                "the model version changed during the job; the summary names the last one",
                extra={"from_version": self.version, "to_version": version, "stage": "inference"},
            )
        self.version = version
