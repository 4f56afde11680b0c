"""Log scopes: lines logged deep inside a job (retries, heartbeat) say which job they are about."""

from __future__ import annotations

import io
import json
import logging

import pytest

from framescale import logs


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("test"))
    handler.addFilter(logs.ScopeFilter())
    logger = logging.getLogger("framescale.test-scope")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_job_id_bound_later_reaches_the_heartbeat_thread(captured: io.StringIO) -> None:
    log = logging.getLogger("framescale.test-scope")
    with logs.scope(message_id="m-1"):
        beat = logs.thread(lambda: log.warning("beat"), name="beat")
        logs.bind(job_id=None)  # not known yet: left out, not logged as null
        log.info("received")
        logs.bind(job_id="job-7")  # resolved after the helper thread was made
        log.warning("transient failure, retrying")
        beat.start()
        beat.join()
        log.info("explicit", extra={"job_id": "other"})
    log.info("outside")
    received, retry, heartbeat, explicit, outside = records(captured)
    assert "job_id" not in received and received["message_id"] == "m-1"
    assert retry["job_id"] == "job-7" and heartbeat["job_id"] == "job-7"
    assert explicit["job_id"] == "other"
    assert "job_id" not in outside and "message_id" not in outside
