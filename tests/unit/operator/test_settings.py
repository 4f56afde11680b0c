"""FRAMESCALE_OPERATOR_* settings: defaults, parsing, and one clear line per bad variable."""

from __future__ import annotations

import os

import pytest

from framescale.settings import SettingsError
from framescale_operator.__main__ import watched_namespaces
from framescale_operator.settings import OperatorSettings, load


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FRAMESCALE_OPERATOR_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    settings = load()
    assert settings.namespaces == []
    assert settings.lease_namespace == ""
    assert settings.default_poll_interval_seconds == 15
    assert settings.health_port == 8080
    assert settings.metrics_port == 9090
    assert settings.log_format == "json"
    assert settings.standalone is True


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMESCALE_OPERATOR_NAMESPACES", "video, jobs ,")
    monkeypatch.setenv("FRAMESCALE_OPERATOR_LEASE_NAMESPACE", "framescale")
    monkeypatch.setenv("FRAMESCALE_OPERATOR_DEFAULT_POLL_INTERVAL_SECONDS", "5")
    monkeypatch.setenv("FRAMESCALE_OPERATOR_LOG_FORMAT", "text")
    monkeypatch.setenv("FRAMESCALE_OPERATOR_LOG_LEVEL", "debug")
    settings = load()
    assert settings.namespaces == ["video", "jobs"]
    assert settings.default_poll_interval_seconds == 5.0
    assert settings.log_format == "text"
    assert settings.log_level == "DEBUG"
    assert watched_namespaces(settings) == ["video", "jobs", "framescale"]


def test_an_empty_namespace_list_means_the_whole_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMESCALE_OPERATOR_NAMESPACES", "")
    monkeypatch.setenv("FRAMESCALE_OPERATOR_LEASE_NAMESPACE", "framescale")
    assert watched_namespaces(load()) == []


def test_each_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMESCALE_OPERATOR_HEALTH_PORT", "eighty")
    monkeypatch.setenv("FRAMESCALE_OPERATOR_DEFAULT_POLL_INTERVAL_SECONDS", "0")
    monkeypatch.setenv("FRAMESCALE_OPERATOR_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as caught:
        load()
    message = caught.value.message
    assert "FRAMESCALE_OPERATOR_HEALTH_PORT" in message
    assert "FRAMESCALE_OPERATOR_DEFAULT_POLL_INTERVAL_SECONDS" in message
    assert "FRAMESCALE_OPERATOR_LOG_FORMAT" in message


def test_unknown_variables_under_the_prefix_are_ignored_by_the_environment_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAMESCALE_OPERATOR_NOT_A_SETTING", "1")
    assert isinstance(load(), OperatorSettings)
