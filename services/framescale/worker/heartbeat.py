"""Keeps a message invisible while its job runs, so no second worker picks it up."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class VisibilityHeartbeat:
    """Extends the message's visibility every ``period`` seconds by ``extension`` seconds.

    It runs in a daemon thread of the process doing the job: when that process dies, the
    heartbeat dies with it and the message reappears after its current timeout.
    """

    def __init__(self, sqs: Any, queue_url: str, receipt_handle: str, *, extension: int, period: float) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.receipt_handle = receipt_handle
        self.extension = extension
        self.period = period
        self.beats = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="visibility-heartbeat", daemon=True)

    def __enter__(self) -> VisibilityHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=self.receipt_handle, VisibilityTimeout=self.extension
                )
                self.beats += 1
            except Exception as error:  # keep beating: a blip must not end the job
                self.failures += 1
                log.warning("visibility heartbeat failed", extra={"error": str(error)})
