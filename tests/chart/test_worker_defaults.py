"""The chart's worker defaults agree with WorkerSettings: the fallbacks its templates compute
with (``batchSize | default 8``) and the defaults its values.yaml comments promise."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from pydantic.alias_generators import to_camel

from framescale.worker.settings import WorkerSettings
from tests.chart.conftest import CHART

pytestmark = pytest.mark.chart

TEMPLATES = CHART / "templates"
UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "s": 1, "min": 60, "h": 3600}


def default_of(field: str) -> Any:
    return WorkerSettings.model_fields[field].get_default(call_default_factory=True)


def field_of(camel: str) -> str:
    (field,) = [name for name in WorkerSettings.model_fields if to_camel(name) == camel]
    return field


def template_fallbacks() -> list[tuple[str, str]]:
    """(setting, fallback) for every ``worker.settings.X | default Y`` in the templates."""
    found = []
    for path in TEMPLATES.rglob("*.*"):
        found += re.findall(r"worker\.settings\.(\w+) \| default ([^\s)}]+)", path.read_text())
    return found


def comment_defaults() -> list[tuple[str, str]]:
    """(setting, "...") for every worker setting whose values.yaml comment says "(default ...)"."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "settings:" and line.startswith("    "))
    found, comment = [], ""
    for line in lines[start + 1 :]:
        if not line.startswith("      "):
            break
        text = line.strip()
        if text.startswith("#"):
            comment += " " + text
            continue
        key = text.split(":", 1)[0]
        match = re.search(r"\(default ([^)]*)\)", comment)
        if match:
            found.append((key, match.group(1)))
        comment = ""
    return found


def parse(text: str) -> Any:
    """A default as the chart's docs write it: 8, 0.3, INFO, 10 GiB, 6 h, 3840*2160, {1: person}."""
    text = text.strip()
    if re.fullmatch(r"\d+\*\d+", text):
        left, right = text.split("*")
        return int(left) * int(right)
    number = re.fullmatch(r"(\d+(?:\.\d+)?) ?([A-Za-z]+)", text)
    if number and number.group(2) in UNITS:
        return float(number.group(1)) * UNITS[number.group(2)]
    value = yaml.safe_load(text)
    if isinstance(value, dict):
        return {int(key): str(name) for key, name in value.items()}
    return value


def test_the_templates_fall_back_to_the_workers_own_defaults() -> None:
    fallbacks = template_fallbacks()
    assert {"batchSize", "shutdownGraceSeconds"} <= {name for name, _ in fallbacks}
    for camel, fallback in fallbacks:
        assert parse(fallback) == default_of(field_of(camel)), f"worker.settings.{camel} | default {fallback}"


def test_the_values_comments_state_the_workers_own_defaults() -> None:
    stated = comment_defaults()
    assert len(stated) >= 20, stated  # every setting with a plain default says it
    for camel, text in stated:
        expected = default_of(field_of(camel))
        assert parse(text) == expected, f"values.yaml says worker.settings.{camel} defaults to {text}, not {expected}"


@pytest.mark.parametrize(
    ("text", "value"),
    [("8", 8), ("0.3", 0.3), ("INFO", "INFO"), ("10 GiB", 10 * 1024**3), ("6 h", 21600.0), ("3840*2160", 8294400)],
)
def test_defaults_are_read_as_written(text: str, value: Any) -> None:
    assert parse(text) == value
