"""The settings base every component's settings class builds on.

Each component has exactly one settings class (``FRAMESCALE_WORKER_``,
``FRAMESCALE_OPERATOR_``, ``FRAMESCALE_MODELSERVER_``). AWS endpoints are not ours to
configure: boto3 reads the standard ``AWS_ENDPOINT_URL`` itself.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

S = TypeVar("S", bound=BaseSettings)


class ComponentSettings(BaseSettings):
    """Base: environment only, unknown fields rejected, values validated on assignment."""

    model_config = SettingsConfigDict(
        extra="forbid",
        validate_assignment=True,
        validate_default=True,
        case_sensitive=False,
    )


class SettingsError(SystemExit):
    """Raised at start-up when the environment does not describe a valid component.

    A SystemExit carrying the message, so an entry point prints it and exits with status 1,
    without a traceback that hides the one line the user needs.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def describe_validation_error(cls: type[BaseSettings], error: ValidationError) -> str:
    """One line per bad setting, named by its environment variable."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = [f"invalid {cls.__name__} ({len(error.errors())} problem(s)); fix the environment and restart:"]
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(settings)"
        variable = f"{prefix}{field}".upper()
        value = problem.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {variable}: {problem['msg']}{shown}")
    return "\n".join(lines)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment (plus explicit overrides) or exit with a clear message."""
    try:
        return cls(**overrides)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(cls, error)) from None
    except PydanticSettingsError as error:
        # Raised before validation when a JSON-valued variable (a dict or list) is not JSON.
        match = re.search(r'field "([^"]+)"', str(error))
        prefix = str(cls.model_config.get("env_prefix", ""))
        variable = f"{prefix}{match.group(1)}".upper() if match else "(a setting)"
        raise SettingsError(
            f"invalid {cls.__name__}; fix the environment and restart:\n  {variable}: must be JSON ({error})"
        ) from None
