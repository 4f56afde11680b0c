"""Every Prometheus metric the worker exports, and the one place that updates them.

Names follow what SageMaker asynchronous inference users already read (ModelLatency,
TotalProcessingTime, TimeInBacklog, Invocation4XX/5XXErrors, S3 download/upload latency
and failures). Labels have few values; never a video or job id.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_JOB_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs_in_progress = Gauge("framescale_worker_jobs_in_progress", "Jobs being processed now", registry=r)
        self.invocations = Counter(
            "framescale_worker_invocations_total", "Messages handled, by what became of them", ["outcome"], registry=r
        )
        self.invocation_failures = Counter(
            "framescale_worker_invocation_failures_total",
            "Failed jobs by kind (permanent → dead-letter queue, transient → retried later) and stage",
            ["kind", "stage"],
            registry=r,
        )
        self.model_latency = Histogram(
            "framescale_worker_model_latency_seconds",
            "Predict call latency (one batch)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.total_processing_time = Histogram(
            "framescale_worker_total_processing_time_seconds",
            "Job time from receive to results committed",
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.time_in_backlog = Histogram(
            "framescale_worker_time_in_backlog_seconds",
            "Time a message waited in the queue before a worker took it",
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.download_latency = Histogram(
            "framescale_worker_s3_download_latency_seconds", "Video download time", buckets=_JOB_BUCKETS, registry=r
        )
        self.upload_latency = Histogram(
            "framescale_worker_s3_upload_latency_seconds", "Results upload time", buckets=_JOB_BUCKETS, registry=r
        )
        self.download_failures = Counter(
            "framescale_worker_s3_download_failures_total", "Failed video download attempts", registry=r
        )
        self.upload_failures = Counter(
            "framescale_worker_s3_upload_failures_total", "Failed results upload attempts", registry=r
        )
        self.frames_decoded = Counter("framescale_worker_frames_decoded_total", "Frames decoded", registry=r)
        self.frames_sampled = Counter("framescale_worker_frames_sampled_total", "Frames sent to the model", registry=r)
        self.detections = Counter("framescale_worker_detections_total", "Detections written", registry=r)
        self.slot_restarts = Counter(
            "framescale_worker_slot_restarts_total", "Slot processes restarted after they died", registry=r
        )
        self.busy = Gauge("framescale_worker_node_busy", "1 while this node has a job in hand", registry=r)
        self.drain_requests = Counter(
            "framescale_worker_drain_requests_total",
            "Drain requests answered, by verdict (drained: idle and fenced; refused: a job was in hand)",
            ["verdict"],
            registry=r,
        )
        self.lease_renew_failures = Counter(
            "framescale_worker_lease_renew_failures_total",
            "Failed renewals of the node Lease (past its duration the node takes no new job)",
            registry=r,
        )

    # The Lease keeper's (framescale.worker.lease.KeeperMetrics).
    def drain_answered(self, verdict: Any) -> None:
        self.drain_requests.labels(str(verdict.value)).inc()

    def lease_renew_failed(self) -> None:
        self.lease_renew_failures.inc()

    def observe(self, event: dict[str, Any]) -> None:
        """Apply one event from a slot process."""
        kind = event.get("type")
        # jobs_in_progress is set by the supervisor from its slots' state, so that a slot
        # that dies mid-job (and never says it finished) does not leave it counted.
        if kind == "job_started":
            if event.get("time_in_backlog") is not None:
                self.time_in_backlog.observe(float(event["time_in_backlog"]))
        elif kind == "job_finished":
            # The decided action, not what settling managed: a permanent failure whose
            # dead-lettering failed is still a permanent failure.
            outcome = event["outcome"]
            action = outcome.action.value
            self.invocations.labels(action).inc()
            if action == "dead_lettered":
                self.invocation_failures.labels("permanent", outcome.stage or "unknown").inc()
            elif action == "retry_later":
                self.invocation_failures.labels("transient", outcome.stage or "unknown").inc()
            for report in outcome.reports:
                self._report(report)

    def _report(self, report: Any) -> None:
        for latency in report.model_latencies:
            self.model_latency.observe(latency)
        if "total" in report.timings:
            self.total_processing_time.observe(report.timings["total"])
        if "download" in report.timings:
            self.download_latency.observe(report.timings["download"])
        if "upload" in report.timings:
            self.upload_latency.observe(report.timings["upload"] + report.timings.get("commit", 0.0))
        self.download_failures.inc(report.download_failures)
        self.upload_failures.inc(report.upload_failures)
        self.frames_decoded.inc(report.frames_decoded)
        self.frames_sampled.inc(report.frames_sampled)
        self.detections.inc(report.detections)
