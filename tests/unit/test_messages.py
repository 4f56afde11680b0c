"""The three job message forms, and every way a message can be wrong."""

from __future__ import annotations

import json

import pytest

from framescale.messages import (
    MAX_BODY_BYTES,
    MAX_NESTING,
    MAX_REASON_CHARS,
    InvalidMessage,
    S3Location,
    derive_job_id,
    parse_message,
)


def s3_event(key: str, bucket: str = "videos", event: str = "ObjectCreated:Put") -> dict:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": event,
                "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 123, "eTag": "abc123"}},
            }
        ]
    }


def sns(inner: dict) -> str:
    return json.dumps({"Type": "Notification", "MessageId": "m", "Message": json.dumps(inner)})


def test_own_form_with_every_field() -> None:
    parsed = parse_message(
        json.dumps({"video": "s3://videos/a/b.mp4", "output": "s3://out/res", "job_id": "j-1", "sample_fps": 2})
    )
    (job,) = parsed.jobs
    assert job.video == S3Location("videos", "a/b.mp4")
    assert job.output == S3Location("out", "res/")
    assert job.job_id == "j-1"
    assert job.sample_fps == 2.0


def test_own_form_only_video_leaves_defaults_to_config() -> None:
    (job,) = parse_message('{"video": "s3://videos/x.avi"}').jobs
    assert job.output is None and job.job_id is None and job.sample_fps is None


def test_s3_event_key_is_url_decoded() -> None:
    (job,) = parse_message(json.dumps(s3_event("my+folder/clip%281%29.mp4"))).jobs
    assert job.video.key == "my folder/clip(1).mp4"
    assert job.version_id is None and job.literal is None


def test_s3_event_inside_sns_envelope() -> None:
    (job,) = parse_message(sns(s3_event("a.mp4"))).jobs
    assert job.video == S3Location("videos", "a.mp4")


def test_own_form_inside_sns_envelope() -> None:
    (job,) = parse_message(sns({"video": "s3://videos/k.mp4", "job_id": "x"})).jobs
    assert job.job_id == "x"


def test_s3_test_event_is_ignored_not_failed() -> None:
    parsed = parse_message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "videos"}))
    assert parsed.jobs == [] and parsed.ignored_reason == "S3 test event"


def test_s3_delete_event_is_ignored() -> None:
    parsed = parse_message(json.dumps(s3_event("a.mp4", event="ObjectRemoved:Delete")))
    assert parsed.jobs == [] and parsed.ignored_reason


def test_s3_event_with_several_records_gives_several_jobs() -> None:
    event = s3_event("a.mp4")
    event["Records"].append(s3_event("b.mp4")["Records"][0])
    assert [job.video.key for job in parse_message(json.dumps(event)).jobs] == ["a.mp4", "b.mp4"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"output": "s3://out/"}', "no 'video' field"),
        ('{"video": "http://example.com/a.mp4"}', "s3://bucket/key"),
        ('{"video": "s3://videos"}', "no object key"),
        ('{"video": "s3://Bad_Bucket/a.mp4"}', "invalid bucket"),
        ('{"video": "s3://videos/a.mp4", "sample_fps": 0}', "sample_fps"),
        ('{"video": "s3://videos/a.mp4", "sample_fps": "fast"}', "sample_fps"),
        ('{"video": "s3://videos/a.mp4", "job_id": "../escape"}', "job_id"),
        ('{"video": "s3://videos/a.mp4", "sample_rate": 2}', "sample_rate"),
        ('{"video": "s3://videos/a.mp4", "output": "videos/out"}', "output"),
        ('{"Records": []}', "no Records"),
        ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}', "lacks s3.bucket.name"),
        ('{"Type": "Notification", "Message": "{broken"}', "not JSON"),
        ('{"Type": "Notification", "Message": 5}', "JSON string"),
        ('{"video": "s3://videos/a.mp4", "sample_fps": true}', "sample_fps: Input should be a valid number"),
        ('{"video": "s3://videos/a.mp4", "sample_fps": "2"}', "sample_fps: Input should be a valid number"),
        ('{"video": "s3://videos/a.mp4", "sample_fps": NaN}', "sample_fps: Input should be a finite number"),
        ('{"video": "s3://videos/a.mp4", "output": ""}', "output is empty"),
        ('{"video": "s3://videos/a.mp4", "output": 7}', "output"),
        (
            '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": 1}}}]}',
            "must be strings",
        ),
    ],
)
def test_bad_messages_say_what_is_wrong(body: str, says: str) -> None:
    with pytest.raises(InvalidMessage) as error:
        parse_message(body)
    assert says in str(error.value)


# Bodies that once escaped parse_message as RecursionError, ValueError or UnicodeEncodeError
# and cost the worker its slot.
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("[" * 200_000, f"more than {MAX_NESTING} deep"),
        ('{"video": "s3://videos/a.mp4", "x": ' + "{" * 200_000, f"more than {MAX_NESTING} deep"),
        (json.dumps({"Type": "Notification", "Message": "[" * 5_000}), "Message nests arrays or objects more than"),
        ('{"video": "s3://videos/a.mp4", "sample_fps": 1' + "0" * 5_000 + "}", "number of 5001 digits"),
        (json.dumps(s3_event("x")).replace('"size": 123', '"size": ' + "9" * 5_000), "number of 5000 digits"),
        ('{"video": "s3://videos/\\ud800.mp4"}', "video key is not valid Unicode"),
        ('{"video": "s3://videos/a.mp4", "output": "s3://out/\\udfff/"}', "output key is not valid Unicode"),
        (json.dumps(s3_event("x")).replace('"key": "x"', '"key": "\\ud800"'), "record 0 key is not valid Unicode"),
        ("{" + " " * MAX_BODY_BYTES + "}", f"at most {MAX_BODY_BYTES}"),
    ],
    ids=[
        "deep-array",
        "deep-object",
        "deep-in-sns",
        "long-number",
        "long-number-in-s3-event",
        "surrogate-video",
        "surrogate-output",
        "surrogate-s3-event",
        "too-big",
    ],
)
def test_hostile_bodies_are_invalid_messages(body: str, says: str) -> None:
    with pytest.raises(InvalidMessage) as error:
        parse_message(body)
    assert says in str(error.value)


def test_nesting_limit_counts_brackets_outside_strings_only() -> None:
    (job,) = parse_message(json.dumps({"video": "s3://videos/" + "[" * 500 + ".mp4"})).jobs
    assert job.video.key == "[" * 500 + ".mp4"
    at_limit = "[" * MAX_NESTING + "]" * MAX_NESTING
    with pytest.raises(InvalidMessage, match="JSON object"):  # deep enough, but allowed: the shape is what is wrong
        parse_message(at_limit)
    with pytest.raises(InvalidMessage, match="deep"):
        parse_message("[" + at_limit + "]")


def test_reasons_are_short_and_printable_whatever_the_body_held() -> None:
    # The reason becomes an SQS message attribute: no control characters, no surrogates, bounded size.
    with pytest.raises(InvalidMessage) as unknown_field:
        parse_message('{"video": "s3://videos/a.mp4", "bad\\u0000\\ud800": 1}')
    with pytest.raises(InvalidMessage) as long_url:
        parse_message(json.dumps({"video": "http://" + "x" * 100_000}))
    for error in (unknown_field, long_url):
        reason = str(error.value)
        assert reason.isprintable(), reason
        reason.encode("utf-8")  # raises on a surrogate
        assert len(reason) <= MAX_REASON_CHARS + 4
    assert "must be an s3://bucket/key URL" in str(long_url.value)


def test_output_null_means_the_default_like_a_missing_field() -> None:
    (job,) = parse_message('{"video": "s3://videos/a.mp4", "output": null}').jobs
    assert job.output is None


def test_non_utf8_body_is_rejected() -> None:
    with pytest.raises(InvalidMessage, match="UTF-8"):
        parse_message(b"\xff\xfe\x00")


def test_derived_job_id_is_deterministic_and_depends_on_etag() -> None:
    video = S3Location("videos", "dir/My Clip.mp4")
    first = derive_job_id(video, "etag-1")
    assert first == derive_job_id(video, '"etag-1"')
    assert first != derive_job_id(video, "etag-2")
    assert first != derive_job_id(S3Location("videos", "dir/other.mp4"), "etag-1")
    assert first.startswith("My-Clip-")


@pytest.mark.parametrize(
    ("url", "key", "literal"),
    [
        ("s3://videos/my%20folder/clip%281%29.mp4", "my folder/clip(1).mp4", "my%20folder/clip%281%29.mp4"),
        ("s3://videos/my+folder/a.mp4", "my folder/a.mp4", "my+folder/a.mp4"),
        ("s3://videos/a%2Bb.mp4", "a+b.mp4", "a%2Bb.mp4"),
        ("s3://videos/my folder/a.mp4", "my folder/a.mp4", None),  # already decoded: nothing to fall back to
        ("s3://videos/plain.mp4", "plain.mp4", None),
    ],
)
def test_own_message_keys_are_decoded_as_s3_event_keys_are(url: str, key: str, literal: str | None) -> None:
    (job,) = parse_message(json.dumps({"video": url})).jobs
    assert job.video == S3Location("videos", key)
    assert job.literal == (S3Location("videos", literal) if literal else None)


def test_an_encoded_control_character_is_refused_like_a_raw_one() -> None:
    with pytest.raises(InvalidMessage, match="video key contains control characters"):
        parse_message(json.dumps({"video": "s3://videos/a%0Ab.mp4"}))


def test_a_version_id_pins_the_object_version() -> None:
    (job,) = parse_message(json.dumps({"video": "s3://videos/a.mp4?versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"})).jobs
    assert job.video == S3Location("videos", "a.mp4")
    assert job.version_id == "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"
    (event_job,) = parse_message(
        json.dumps(s3_event("a.mp4")).replace('"eTag": "abc123"', '"eTag": "abc123", "versionId": "v-7"')
    ).jobs
    assert event_job.version_id == "v-7"
    (unversioned,) = parse_message(
        json.dumps(s3_event("a.mp4")).replace('"eTag": "abc123"', '"eTag": "abc123", "versionId": "null"')
    ).jobs
    assert unversioned.version_id is None


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"video": "s3://videos/a.mp4?versionId="}', "video names an invalid versionId ''"),
        ('{"video": "s3://videos/a.mp4?versionId=a b"}', "video names an invalid versionId 'a b'"),
        (json.dumps(s3_event("a.mp4")).replace('"eTag": "abc123"', '"versionId": 7'), "invalid s3.object.versionId"),
    ],
)
def test_a_bad_version_id_is_refused(body: str, says: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(body)
    assert says in str(caught.value)


def test_the_derived_job_id_includes_a_pinned_version() -> None:
    video = S3Location("videos", "dir/clip.mp4")
    assert derive_job_id(video, "e", "v1") != derive_job_id(video, "e", "v2") != derive_job_id(video, "e")
    assert derive_job_id(video, "e", None) == derive_job_id(video, "e")
