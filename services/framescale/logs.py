"""Structured logs: one JSON object per line, with whatever context the call adds.

``log.info("frames decoded", extra={"job_id": ..., "stage": "decode", "seconds": 1.2})``
puts those keys at the top level of the record. ``with logs.scope(message_id=...)`` adds
fields to every record made inside it (``bind`` adds more later, e.g. the job id once it
is known), so lines logged deep in retry or inference code still say which job they are
about.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else came from ``extra`` and is logged as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


# The fields of the innermost scope. A scope's dict is shared, not copied, with threads
# started through ``thread`` so a helper thread (the heartbeat) sees a job id bound later.
_scope: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("framescale_log_scope", default=None)


@contextmanager
def scope(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (and whatever ``bind`` adds) to every record logged inside the block."""
    token = _scope.set({**(_scope.get() or {}), **fields})
    try:
        yield
    finally:
        _scope.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the current scope (no effect outside one); a field set to None is left out."""
    current = _scope.get()
    if current is not None:
        current.update(fields)


def thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread that logs with the caller's scope (threads do not inherit context)."""
    context = contextvars.copy_context()
    return threading.Thread(target=context.run, args=(target,), name=name, daemon=True)


class ScopeFilter(logging.Filter):
    """Copies the current scope's fields onto a record; fields passed in ``extra`` win."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_scope.get() or {}).items():
            if value is not None and not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        line = f"{record.levelname[0]} {record.name}: {record.getMessage()}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(component: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component) if fmt == "json" else TextFormatter())
    handler.addFilter(ScopeFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Their per-request chatter drowns ours.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
