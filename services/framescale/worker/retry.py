"""Bounded exponential backoff for transient failures inside a job."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from framescale.backoff import doubled
from framescale.worker.errors import JobCancelled, ServiceError
from framescale.worker.ports import Clock, SystemClock

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, including the first
    base_seconds: float = 0.5
    max_seconds: float = 10.0
    clock: Clock = field(default_factory=SystemClock, compare=False)

    def delay(self, attempt: int) -> float:
        """Full-jitter backoff before try ``attempt + 1`` (attempt counts from 1)."""
        ceiling = doubled(self.base_seconds, attempt - 1, self.max_seconds)
        return random.uniform(ceiling / 2, ceiling)

    def call(
        self,
        operation: Callable[[], T],
        *,
        cancel: threading.Event,
        on_failure: Callable[[ServiceError], None] | None = None,
    ) -> T:
        """Run ``operation``, trying again after a transient ServiceError.

        A permanent ServiceError, or the last transient one, is raised as it is (typed: the
        caller decides what it means for its stage). ``on_failure`` hears of every try that
        failed transiently (a permanent answer such as NotFound is not a failed try). A set
        ``cancel`` ends the wait at once (JobCancelled).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except ServiceError as error:
                failure = error
            if not failure.transient:
                raise failure  # an answer (not found, denied), not a failed try
            if on_failure is not None:
                on_failure(failure)
            if cancel.is_set():
                raise JobCancelled(f"shutdown: job handed back after a transient failure ({failure})") from failure
            if attempt >= self.attempts:
                raise failure
            pause = self.delay(attempt)
            log.warning(
                "transient failure, retrying",
                extra={"reason": str(failure), "attempt": attempt, "delay": round(pause, 2)},
            )
            if self.clock.wait(cancel, pause):
                raise JobCancelled(f"shutdown: job handed back while waiting to retry ({failure})") from failure
