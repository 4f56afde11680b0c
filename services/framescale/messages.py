"""Job messages: the three accepted forms, validated, and deterministic job ids.

Accepted SQS bodies (DESIGN.md, "Job message"):
- framescale's own: ``{"video": "s3://b/k.mp4", "output": "s3://b/p/", "job_id": "x", "sample_fps": 1.0}``
  (``"sample": "keyframes"`` instead of a rate samples one frame per keyframe)
- an S3 Event Notification (``Records[].s3``; keys arrive URL-encoded; ``s3:TestEvent`` is dropped)
- either of those inside an SNS envelope (``"Type": "Notification"``, ``"Message": "<json>"``)

Keys: an S3 event's key is URL-encoded ('+' or ``%20`` for a space); the ``video`` URL of
framescale's own message is decoded by the same rule, and when no object has the decoded key
the key as written is tried too (a key may hold a real '+' or '%'). ``?versionId=V`` at the end
of a ``video`` URL (or ``s3.object.versionId`` in an event) pins that version of the object.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_SAMPLE_FPS = 240.0
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1024

# Limits on an untrusted body, checked before it is decoded. A real job message is a few
# hundred bytes and an S3 event a few KiB, nested five deep; past these limits Python's
# JSON decoder would fail with RecursionError or ValueError instead of a reason.
MAX_BODY_BYTES = 256 * 1024  # SQS's classic message size limit
MAX_NESTING = 32
MAX_INTEGER_DIGITS = 20  # any 64-bit integer, sign included (S3 sizes, counts)
# A reason travels on as an SQS message attribute, a log field and a notification.
MAX_REASON_CHARS = 500

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


class InvalidMessage(ValueError):
    """The message cannot become a job; the text says what is wrong. Goes to the dead-letter queue."""

    def __init__(self, reason: str) -> None:
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + " ..."
        # Quoted parts of the body may hold control characters or unpaired surrogates, which
        # SQS refuses in an attribute value and UTF-8 cannot encode: show them escaped.
        super().__init__("".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in reason))


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, *parts: str) -> S3Location:
        prefix = self.key if not self.key or self.key.endswith("/") else f"{self.key}/"
        return S3Location(self.bucket, prefix + "/".join(parts))


def parse_s3_url(url: str, *, what: str, prefix: bool = False) -> S3Location:
    """``s3://bucket/key`` → S3Location, with the rules S3 itself enforces checked up front."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        form = "s3://bucket/prefix/" if prefix else "s3://bucket/key"
        raise InvalidMessage(f"{what} must be an {form} URL, got {url!r}")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not _BUCKET_PATTERN.match(bucket) or ".." in bucket:
        raise InvalidMessage(f"{what} has an invalid bucket name {bucket!r}")
    if not prefix and not key:
        raise InvalidMessage(f"{what} names a bucket but no object key: {url!r}")
    if prefix and key and not key.endswith("/"):
        key += "/"
    check_key(key, what=what)
    return S3Location(bucket, key)


def check_key(key: str, *, what: str) -> None:
    try:
        encoded = key.encode()
    except UnicodeEncodeError:
        # JSON can spell an unpaired surrogate (\ud800); no S3 key can hold one.
        raise InvalidMessage(f"{what} key is not valid Unicode (it holds an unpaired surrogate)") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidMessage(f"{what} key is longer than S3's 1024-byte limit")
    if any(ord(char) < 32 for char in key):
        raise InvalidMessage(f"{what} key contains control characters")


@dataclass(frozen=True)
class JobRequest:
    """One video to process, as the message asked for it (defaults not yet applied)."""

    video: S3Location
    output: S3Location | None = None
    job_id: str | None = None
    sample_fps: float | None = None
    version_id: str | None = None  # pins this version of the video object
    sample: str | None = None  # "fps" or "keyframes"; None: the worker's default
    # The key exactly as the message wrote it, when decoding changed it: tried if the decoded one is not there.
    literal: S3Location | None = None


VERSION_QUERY = "?versionId="
_VERSION_ID = re.compile(r"^[A-Za-z0-9._+/=-]{1,1024}$")


def _video_url(url: str) -> tuple[str, str | None]:
    """Split ``s3://b/k?versionId=V`` into the URL and the version id (None when it names none)."""
    if not isinstance(url, str) or VERSION_QUERY not in url:
        return url, None
    base, _, version = url.rpartition(VERSION_QUERY)
    if not _VERSION_ID.match(version):
        raise InvalidMessage(f"video names an invalid versionId {version!r}")
    return base, version


@dataclass(frozen=True)
class ParsedMessage:
    jobs: list[JobRequest] = field(default_factory=list)
    # Set when the message is valid but asks for nothing (an S3 test event, a delete event).
    ignored_reason: str | None = None


class _OwnMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    video: str = Field(description="s3:// URL of the video")
    output: str | None = Field(default=None, description="s3:// prefix for results")
    job_id: str | None = None
    # Strict: a JSON number only. Lax parsing would take ``true`` as 1.0 and ``"2"`` as 2.0.
    sample_fps: float | None = Field(default=None, gt=0, le=MAX_SAMPLE_FPS, strict=True, allow_inf_nan=False)
    # "fps" samples sample_fps frames a second; "keyframes" one frame per keyframe (a fast scan).
    sample: Literal["fps", "keyframes"] | None = None

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str | None) -> str | None:
        if value is not None and not JOB_ID_PATTERN.match(value):
            raise ValueError("job_id must be 1-128 characters of letters, digits, '.', '_' or '-'")
        return value


def parse_message(body: str | bytes) -> ParsedMessage:
    """Parse an SQS message body into jobs, or raise InvalidMessage saying why not.

    The body is untrusted: whatever it holds, the outcome is a ParsedMessage or an
    InvalidMessage, never another exception (which would cost the worker its slot and
    bring the message back until the queue's redrive gave up on it, without a reason).
    """
    size = len(body) if isinstance(body, bytes) else len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise InvalidMessage(f"message body is {size} bytes; a job message is at most {MAX_BODY_BYTES}")
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage("message body is not UTF-8 text") from None
    try:
        return _parse_document(_decode_json(body, "message body"), depth=0)
    except InvalidMessage:
        raise
    except Exception as error:
        # Every known way a body can be wrong has its own reason above; this is the net for
        # a case we did not foresee. Retrying cannot help: the same body fails the same way.
        raise InvalidMessage(f"message could not be parsed ({type(error).__name__}: {error})") from error


def _decode_json(text: str, what: str) -> Any:
    if _nests_deeper_than(text, MAX_NESTING):
        raise InvalidMessage(f"{what} nests arrays or objects more than {MAX_NESTING} deep")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as error:
        raise InvalidMessage(f"{what} is not JSON ({error.msg} at position {error.pos})") from None


def _nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the JSON text's arrays and objects nest deeper than ``limit`` (brackets in strings do not count).

    One pass that stops at the first bracket too deep, so that the decoder, which recurses
    once per level, never sees such a body.
    """
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _bounded_int(digits: str) -> int:
    # Python refuses to convert more than 4300 digits (ValueError); no field needs more than 20.
    if len(digits) > MAX_INTEGER_DIGITS:
        raise InvalidMessage(f"message body holds a number of {len(digits)} digits; at most {MAX_INTEGER_DIGITS}")
    return int(digits)


def _parse_document(document: Any, depth: int) -> ParsedMessage:
    if not isinstance(document, dict):
        raise InvalidMessage(f"message body must be a JSON object, got {type(document).__name__}")
    if document.get("Type") == "Notification" and "Message" in document:
        if depth > 0:
            raise InvalidMessage("SNS envelope nested inside another envelope")
        inner = document["Message"]
        if not isinstance(inner, str):
            raise InvalidMessage("SNS envelope's Message must be a JSON string")
        return _parse_document(_decode_json(inner, "SNS envelope's Message"), depth + 1)
    if document.get("Event") == "s3:TestEvent":
        return ParsedMessage(ignored_reason="S3 test event")
    if "Records" in document:
        return _parse_s3_event(document["Records"])
    return ParsedMessage(jobs=[_parse_own(document)])


def _parse_own(document: dict[str, Any]) -> JobRequest:
    if "video" not in document:
        known = ", ".join(sorted(document)) or "none"
        raise InvalidMessage(f"message has no 'video' field (fields present: {known})")
    try:
        message = _OwnMessage.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'message'}: {item['msg']}" for item in error.errors()
        )
        raise InvalidMessage(f"invalid job message: {problems}") from None
    if message.output == "":
        # Falling back to the default here would write results where the sender did not ask.
        raise InvalidMessage(
            "output is empty: give an s3://bucket/prefix/ URL, or leave the field out for the worker's default"
        )
    if message.sample == "keyframes" and message.sample_fps is not None:
        # A rate and "every keyframe" contradict each other: guessing which was meant would
        # give the sender results they did not ask for.
        raise InvalidMessage('sample_fps cannot be combined with "sample": "keyframes" (which keeps every keyframe)')
    url, version_id = _video_url(message.video)
    literal = parse_s3_url(url, what="video")
    # URL-encoded as an S3 event's key is ('+' or %20 a space); the key as written stays a fallback.
    video = parse_s3_url(f"s3://{literal.bucket}/{unquote_plus(literal.key)}", what="video")
    return JobRequest(
        video=video,
        output=parse_s3_url(message.output, what="output", prefix=True) if message.output is not None else None,
        job_id=message.job_id,
        sample_fps=message.sample_fps,
        version_id=version_id,
        literal=literal if literal != video else None,
        sample=message.sample,
    )


def _parse_s3_event(records: Any) -> ParsedMessage:
    if not isinstance(records, list) or not records:
        raise InvalidMessage("S3 event has no Records")
    jobs: list[JobRequest] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidMessage(f"S3 event record {index} is not an object")
        event_name = str(record.get("eventName", ""))
        if not event_name.startswith("ObjectCreated"):
            continue
        try:
            s3 = record["s3"]
            bucket = s3["bucket"]["name"]
            raw_key = s3["object"]["key"]
        except (KeyError, TypeError):
            raise InvalidMessage(f"S3 event record {index} lacks s3.bucket.name or s3.object.key") from None
        if not isinstance(bucket, str) or not isinstance(raw_key, str):
            raise InvalidMessage(f"S3 event record {index}: s3.bucket.name and s3.object.key must be strings")
        # S3 event keys are URL-encoded with '+' for spaces.
        key = unquote_plus(raw_key)
        location = parse_s3_url(f"s3://{bucket}/{key}", what=f"S3 event record {index}")
        version = (s3.get("object") or {}).get("versionId")
        if version is not None and not (isinstance(version, str) and _VERSION_ID.match(version)):
            raise InvalidMessage(f"S3 event record {index} has an invalid s3.object.versionId")
        # "null" is what S3 names the version of an object written before versioning was on.
        jobs.append(JobRequest(video=location, version_id=version if version not in (None, "null") else None))
    if not jobs:
        return ParsedMessage(ignored_reason="S3 event without ObjectCreated records")
    return ParsedMessage(jobs=jobs)


def derive_job_id(video: S3Location, etag: str, version_id: str | None = None) -> str:
    """Deterministic id from bucket, key, ETag (and the version, when one is pinned): a
    redelivered message maps to the same output."""
    pinned = f"\0{version_id}" if version_id else ""
    digest = hashlib.sha256(f"{video.bucket}\0{video.key}\0{etag.strip(chr(34))}{pinned}".encode()).hexdigest()[:16]
    stem = video.key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:48]
    return f"{stem}-{digest}" if stem else digest
