"""Each way a message can be wrong has its own reason, word for word (it reaches a person as a
dead-letter attribute and a notification), and each limit sits exactly where it is documented."""

from __future__ import annotations

import hashlib
import json

import pytest

from framescale.messages import (
    MAX_BODY_BYTES,
    MAX_INTEGER_DIGITS,
    MAX_KEY_BYTES,
    MAX_NESTING,
    MAX_REASON_CHARS,
    InvalidMessage,
    S3Location,
    derive_job_id,
    parse_message,
)

OWN = '{{"video": "s3://videos/a.mp4", {}}}'


def event(record: object) -> str:
    return json.dumps({"Records": [record]})


def created(**obj: object) -> dict:
    return {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "videos"}, "object": {"key": "a.mp4", **obj}}}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "message body is not JSON (Expecting value at position 0)"),
        ("[1, 2]", "message body must be a JSON object, got list"),
        ('{"output": "s3://out/"}', "message has no 'video' field (fields present: output)"),
        ("{}", "message has no 'video' field (fields present: none)"),
        ('{"video": "http://e.com/a.mp4"}', "video must be an s3://bucket/key URL, got 'http://e.com/a.mp4'"),
        ('{"video": "s3://videos"}', "video names a bucket but no object key: 's3://videos'"),
        ('{"video": "s3://Bad_Bucket/a.mp4"}', "video has an invalid bucket name 'Bad_Bucket'"),
        ('{"video": "s3://a..b/a.mp4"}', "video has an invalid bucket name 'a..b'"),
        (OWN.format('"output": "http://x/"'), "output must be an s3://bucket/prefix/ URL, got 'http://x/'"),
        (OWN.format('"job_id": "../x"'),
         "invalid job message: job_id: Value error, "
         "job_id must be 1-128 characters of letters, digits, '.', '_' or '-'"),
        (OWN.format('"sample_rate": 2'), "invalid job message: sample_rate: Extra inputs are not permitted"),
        (OWN.format('"sample_fps": 241'), "invalid job message: sample_fps: Input should be less than or equal to 240"),
        (OWN.format('"output": ""'),
         "output is empty: give an s3://bucket/prefix/ URL, or leave the field out for the worker's default"),
        ('{"Records": []}', "S3 event has no Records"),
        ('{"Records": "x"}', "S3 event has no Records"),
        ('{"Records": [5]}', "S3 event record 0 is not an object"),
        (event({"eventName": "ObjectCreated:Put", "s3": {}}),
         "S3 event record 0 lacks s3.bucket.name or s3.object.key"),
        (event({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": 1}}}),
         "S3 event record 0: s3.bucket.name and s3.object.key must be strings"),
        ('{"Type": "Notification", "Message": 5}', "SNS envelope's Message must be a JSON string"),
        ('{"Type": "Notification", "Message": "{broken"}',
         "SNS envelope's Message is not JSON (Expecting property name enclosed in double quotes at position 1)"),
        (json.dumps({"Type": "Notification", "Message": json.dumps({"Type": "Notification", "Message": "{}"})}),
         "SNS envelope nested inside another envelope"),
        ('{"video": "s3://videos/a\\u0001b"}', "video key contains control characters"),
        ('{"video": "s3://videos/' + "k" * (MAX_KEY_BYTES + 1) + '"}', "video key is longer than S3's 1024-byte limit"),
        ("[" * (MAX_NESTING + 1), f"message body nests arrays or objects more than {MAX_NESTING} deep"),
        ('{"n": ' + "1" * (MAX_INTEGER_DIGITS + 1) + "}",
         f"message body holds a number of 21 digits; at most {MAX_INTEGER_DIGITS}"),
        (b"\xff", "message body is not UTF-8 text"),
    ],
)  # fmt: skip
def test_each_bad_message_has_its_reason(body: str | bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(body)
    assert str(caught.value) == reason


def test_ignored_messages_say_why() -> None:
    assert parse_message('{"Event": "s3:TestEvent"}').ignored_reason == "S3 test event"
    deleted = parse_message(event({"eventName": "ObjectRemoved:Delete"}))
    assert deleted.ignored_reason == "S3 event without ObjectCreated records" and deleted.jobs == []


def test_limits_sit_exactly_where_they_are_documented() -> None:
    parse_message('{"video": "s3://videos/' + "k" * MAX_KEY_BYTES + '"}')  # 1024 bytes: allowed
    parse_message(event(created(size=int("1" * MAX_INTEGER_DIGITS))))
    with pytest.raises(InvalidMessage, match="must be a JSON object"):  # as deep as allowed: only the shape is wrong
        parse_message("[" * MAX_NESTING + "]" * MAX_NESTING)
    body = '{"Records": [], "pad": "' + " " * (MAX_BODY_BYTES - 26) + '"}'
    assert len(body.encode()) == MAX_BODY_BYTES
    with pytest.raises(InvalidMessage, match=r"^S3 event has no Records$"):  # read: it is not too big
        parse_message(body)
    with pytest.raises(InvalidMessage, match=f"^message body is {MAX_BODY_BYTES + 1} bytes; a job message is at most"):
        parse_message(body[:-2] + ' "}')
    (job,) = parse_message(OWN.format('"sample_fps": 240')).jobs
    assert job.sample_fps == 240


def test_a_long_reason_is_cut_and_marked() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(json.dumps({"video": "http://" + "x" * 2000}))
    reason = str(caught.value)
    assert len(reason) == MAX_REASON_CHARS + 4 and reason.endswith(" ...")
    assert reason.startswith("video must be an s3://bucket/key URL, got 'http://xxx")


def test_unprintable_characters_in_a_reason_are_escaped() -> None:
    assert str(InvalidMessage("a\nb\u0000c")) == "a\\nb\\x00c"
    assert str(InvalidMessage("plain words")) == "plain words"


def test_an_s3_event_names_records_from_zero_and_skips_non_created_ones() -> None:
    records = [{"eventName": "ObjectRemoved:Delete"}, created(), {"eventName": "ObjectCreated:Copy", "s3": 3}]
    with pytest.raises(InvalidMessage) as caught:
        parse_message(json.dumps({"Records": records}))
    assert str(caught.value) == "S3 event record 2 lacks s3.bucket.name or s3.object.key"


def test_own_messages_keep_their_fields() -> None:
    (job,) = parse_message(
        '{"video": "s3://videos/a.mp4", "output": "s3://out/res", "job_id": "J-1.x_y", "sample_fps": 2.5}'
    ).jobs
    assert (job.video, job.output, job.job_id, job.sample_fps) == (
        S3Location("videos", "a.mp4"),
        S3Location("out", "res/"),
        "J-1.x_y",
        2.5,
    )
    (bare,) = parse_message('{"video": "s3://videos/a.mp4", "output": "s3://out"}').jobs
    assert bare.output == S3Location("out", "")


@pytest.mark.parametrize(
    ("key", "stem"),
    [
        ("dir/My Clip (1).mp4", "My-Clip-1"),
        ("clip.tar.mp4", "clip.tar"),
        ("-._weird_.-.mp4", "weird"),
        ("...mp4", ""),
        ("x" * 60 + ".mp4", "x" * 48),
    ],
)
def test_a_derived_job_id_is_a_readable_stem_and_16_hex_digits(key: str, stem: str) -> None:
    digest = hashlib.sha256(f"videos\0{key}\0abc".encode()).hexdigest()[:16]
    assert derive_job_id(S3Location("videos", key), '"abc"') == (f"{stem}-{digest}" if stem else digest)
    pinned = hashlib.sha256(f"videos\0{key}\0abc\0v9".encode()).hexdigest()[:16]
    assert derive_job_id(S3Location("videos", key), "abc", "v9").endswith(pinned)


def test_child_locations_join_with_one_slash() -> None:
    assert S3Location("b", "p/").child("j", "f.json") == S3Location("b", "p/j/f.json")
    assert S3Location("b", "p").child("j", "") == S3Location("b", "p/j/")
    assert S3Location("b", "").child("f") == S3Location("b", "f")
    assert S3Location("b", "k").url == "s3://b/k"
