"""Keeps a message invisible while its job runs, so no second worker picks it up."""

from __future__ import annotations

import logging
import threading

from framescale import logs
from framescale.worker.errors import ReceiptHandleGone
from framescale.worker.ports import Clock, Queue, SystemClock

log = logging.getLogger(__name__)


class VisibilityHeartbeat:
    """Extends the message's visibility every ``period`` seconds by ``extension`` seconds.

    It runs in a daemon thread of the process doing the job: when that process dies, the
    heartbeat dies with it and the message reappears after its current timeout. Stop it
    before deleting the message or changing its visibility, or a late beat could undo a
    hand-back.
    """

    def __init__(
        self,
        queue: Queue,
        receipt_handle: str,
        *,
        extension: int,
        period: float,
        clock: Clock | None = None,
    ) -> None:
        self.queue = queue
        self.receipt_handle = receipt_handle
        self.extension = extension
        self.period = period
        self.clock = clock or SystemClock()
        self.beats = 0
        self.failures = 0
        self.lost = False  # the receipt handle stopped working: the message may be another worker's now
        self._stop = threading.Event()
        self._thread = logs.thread(self._run, name="visibility-heartbeat")

    def __enter__(self) -> VisibilityHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop beating; returns once no beat is in flight (bounded by the SQS call's own timeouts)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self.clock.wait(self._stop, self.period):
            try:
                self.queue.change_visibility(self.receipt_handle, self.extension)
                self.beats += 1
            except ReceiptHandleGone as error:
                # Beating again cannot help. The job goes on: if another worker runs it
                # too, the conditional commit lets only one result set through.
                self.failures += 1
                self.lost = True
                log.error(
                    "visibility heartbeat: the message is no longer held by this worker (receipt handle "
                    "not valid); another worker may run the job too, and only one result will be committed",
                    extra={"error": str(error), "stage": "heartbeat"},
                )
                return
            except Exception as error:  # keep beating: a blip must not end the job
                self.failures += 1
                log.warning("visibility heartbeat failed; will try again", extra={"error": str(error)})
