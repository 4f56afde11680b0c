"""Success and error notifications (SNS), shaped like SageMaker asynchronous inference's."""

from __future__ import annotations

import json
import logging
from typing import Any

from framescale import results
from framescale.worker.ports import Publisher

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, publisher: Publisher, success_topic_arn: str | None, error_topic_arn: str | None) -> None:
        self.publisher = publisher
        self.success_topic_arn = success_topic_arn
        self.error_topic_arn = error_topic_arn

    def success(self, *, job_id: str, input_url: str, output_url: str, summary: dict[str, Any] | None) -> None:
        body = results.notification(
            status="Completed", job_id=job_id, input_url=input_url, output_url=output_url, summary=summary
        )
        self._publish(self.success_topic_arn, body, "Completed")

    def error(self, *, job_id: str, input_url: str, output_url: str | None, reason: str) -> None:
        body = results.notification(
            status="Failed", job_id=job_id, input_url=input_url, output_url=output_url, failure_reason=reason
        )
        self._publish(self.error_topic_arn, body, "Failed")

    def _publish(self, topic: str | None, body: dict[str, Any], status: str) -> None:
        if not topic:
            return
        try:
            self.publisher.publish(topic, json.dumps(body), {"invocationStatus": status})
        except Exception as error:
            # A notification is a courtesy; the results in S3 are the record. Losing the
            # notification must not fail (or repeat) the job.
            log.error("notification not published", extra={"topic": topic, "error": str(error)})
