"""The fake node's command line and config refuse bad input with a message naming it."""

from __future__ import annotations

import pytest

from framescale.local.fake_node import FakeNode, FakeNodeConfig, parse_args

BASE = ["--node", "n1", "--queue-url", "http://localhost:5000/1/q"]


def test_the_command_line_makes_the_config() -> None:
    config = parse_args([*BASE, "--job-seconds", "0.5:3", "--slots", "2", "--wall-skew", "-120"])
    assert (config.job_seconds, config.slots, config.wall_skew_seconds) == ((0.5, 3.0), 2, -120.0)
    assert parse_args([*BASE, "--job-seconds", "2"]).job_seconds == (2.0, 2.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--job-seconds", "3:1"], "expected 0 <= LOW <= HIGH, not '3:1'"),
        (["--job-seconds", "fast"], "expected LOW:HIGH seconds (e.g. 0.5:3), not 'fast'"),
        (["--slots", "0"], "--slots must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_by_name(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*BASE, *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"job_seconds": (2.0, 1.0)}, "job_seconds must be (low, high)"), ({"slots": 0}, "slots must be at least 1")],
)
def test_a_bad_config_is_refused_before_anything_starts(changes: dict, message: str) -> None:
    config = FakeNodeConfig(node_name="n1", queue_url="http://localhost:5000/1/q", **changes)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FakeNode(config, leases=object(), sqs=object())  # type: ignore[arg-type]
