"""Bounded backoff over typed service errors, and what each AWS answer means (the boto3 adapter)."""

from __future__ import annotations

import threading

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError

from framescale.worker import errors
from framescale.worker.adapters import classify
from framescale.worker.errors import JobCancelled, ServiceError, Throttled, Unavailable
from framescale.worker.retry import RetryPolicy
from tests.fakes import FakeClock


def client_error(code: str, status: int, message: str = "m") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


def upload_failed(cause: ClientError) -> S3UploadFailedError:
    try:
        try:
            raise cause
        except ClientError as error:
            raise S3UploadFailedError(f"Failed to upload: {error}") from None
    except S3UploadFailedError as wrapped:
        wrapped.__context__ = cause
        return wrapped


@pytest.mark.parametrize(
    ("error", "kind", "transient"),
    [
        (client_error("SlowDown", 503), errors.Throttled, True),
        (client_error("InternalError", 500), errors.Unavailable, True),
        (client_error("WhoKnows", 502), errors.Unavailable, True),
        (client_error("TooManyRequests", 429), errors.Unavailable, True),
        (client_error("PreconditionFailed", 412), errors.ConditionFailed, True),
        (client_error("ConditionalRequestConflict", 409), errors.Throttled, True),
        (client_error("404", 404), errors.NotFound, False),
        (client_error("NoSuchKey", 404), errors.NotFound, False),
        (client_error("NoSuchBucket", 404), errors.BucketNotFound, False),
        (client_error("AccessDenied", 403), errors.AccessDenied, False),
        (client_error("403", 403), errors.AccessDenied, False),
        (client_error("ReceiptHandleIsInvalid", 400), errors.ReceiptHandleGone, False),
        (
            client_error("InvalidParameterValue", 400, "Value x for parameter ReceiptHandle is invalid"),
            errors.ReceiptHandleGone,
            False,
        ),
        (client_error("InvalidParameterValue", 400, "Value x for parameter VisibilityTimeout"), ServiceError, False),
        (EndpointConnectionError(endpoint_url="http://x"), errors.Unavailable, True),
        (ConnectionResetError(104, "reset"), errors.Unavailable, True),
        # botocore refused the request itself (e.g. a bucket name from settings S3 cannot have).
        (ParamValidationError(report="Invalid bucket name"), errors.InvalidRequest, False),
        # The managed upload wraps S3's answer in text: the answer inside decides.
        (upload_failed(client_error("AccessDenied", 403)), errors.AccessDenied, False),
        (upload_failed(client_error("InternalError", 500)), errors.Unavailable, True),
    ],
)
def test_each_answer_becomes_its_type(error: Exception, kind: type, transient: bool) -> None:
    translated = classify(error, "GET s3://b/k")
    assert type(translated) is kind
    assert translated is not None and translated.transient is transient
    assert str(translated).startswith("GET s3://b/k: ")


def test_an_error_that_is_not_the_services_is_not_translated() -> None:
    assert classify(KeyError("Body"), "GET s3://b/k") is None  # a bug of ours: it must surface as one


def policy(attempts: int = 5, *, base: float = 1.0, cap: float = 4.0, clock: FakeClock | None = None) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, base_seconds=base, max_seconds=cap, clock=clock or FakeClock())


def test_retries_transient_then_succeeds_after_backoff_waits() -> None:
    calls = []
    clock = FakeClock()

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Throttled("GET", "SlowDown")
        return "ok"

    failures: list[ServiceError] = []
    result = policy(clock=clock).call(flaky, cancel=threading.Event(), on_failure=failures.append)
    assert result == "ok" and len(calls) == 3
    assert len(failures) == 2
    # Full jitter between half and all of 1 s, then of 2 s.
    assert 0.5 <= clock.waits[0] <= 1.0 and 1.0 <= clock.waits[1] <= 2.0


def test_a_cancel_ends_the_backoff_wait_at_once() -> None:
    cancel = threading.Event()
    clock = FakeClock(auto=False)

    def failing() -> None:
        threading.Timer(0.05, cancel.set).start()
        raise Throttled("GET", "SlowDown")

    with pytest.raises(JobCancelled):
        policy(base=30.0, cap=30.0, clock=clock).call(failing, cancel=cancel)
    assert clock.now == 1_000_000.0, "the backoff was waited out despite the cancel"


def test_a_set_cancel_is_not_retried() -> None:
    cancel = threading.Event()
    cancel.set()
    calls = []

    def failing() -> None:
        calls.append(1)
        raise Unavailable("GET", "reset")

    with pytest.raises(JobCancelled):
        policy().call(failing, cancel=cancel)
    assert len(calls) == 1


def test_gives_up_after_the_bound_with_the_last_typed_error() -> None:
    calls = []

    def always() -> None:
        calls.append(1)
        raise Throttled("GET", f"SlowDown {len(calls)}")

    with pytest.raises(Throttled, match="SlowDown 3"):
        policy(3).call(always, cancel=threading.Event())
    assert len(calls) == 3


def test_permanent_errors_are_not_retried_and_keep_their_type() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise errors.NotFound("HEAD s3://b/k", "404")

    with pytest.raises(errors.NotFound):
        policy().call(missing, cancel=threading.Event())
    assert len(calls) == 1


def test_other_exceptions_pass_through_untouched() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("x")

    with pytest.raises(KeyError):
        policy().call(broken, cancel=threading.Event())
    assert len(calls) == 1


def test_backoff_grows_and_is_capped() -> None:
    retry = policy(10)
    assert all(2.0 <= retry.delay(10) <= 4.0 for _ in range(50))
    assert all(0.5 <= retry.delay(1) <= 1.0 for _ in range(50))
    assert all(1.0 <= retry.delay(2) <= 2.0 for _ in range(50))
