"""Errors as TF Serving reports them: one canonical status code, one message, two transports.

The core raises :class:`ServingError`; the gRPC layer aborts with its code and the REST layer
answers ``{"error": message}`` with the HTTP status TF Serving's REST server maps it to.
"""

from __future__ import annotations

import grpc

# TF Serving's REST server maps canonical codes to HTTP statuses this way
# (model_servers/http_server.cc); anything not listed is a 500.
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# TensorFlow's error codes are the canonical codes, by number.
_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request failed with a canonical status code and TF Serving's kind of message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def status_code_from_number(number: int) -> grpc.StatusCode:
    """The canonical code for a TensorFlow error code (``OpError.error_code``)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
