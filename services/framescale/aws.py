"""AWS clients, made one way for every component.

boto3 already honours ``AWS_ENDPOINT_URL`` (and the per-service
``AWS_ENDPOINT_URL_<SERVICE>``), which is how local runs point every client at the moto
server. What we add is one retry policy and connection-pool sizing.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

DEFAULT_REGION = "us-east-1"


def client_config(max_pool_connections: int = 16, max_attempts: int = 5) -> Config:
    # "standard" retry mode backs off on throttling and 5xx with jitter and a retry quota.
    return Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=5,
        read_timeout=60,
    )


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def client(service: str, *, config: Config | None = None, **kwargs: Any) -> Any:
    """A boto3 client for ``service`` in the configured region, honouring AWS_ENDPOINT_URL."""
    session = boto3.session.Session()
    return session.client(service, region_name=region(), config=config or client_config(), **kwargs)


def client_error_code(error: ClientError) -> str:
    """The error code AWS answered (``NoSuchKey``, ``SlowDown``, ``404`` for a HEAD), "" when it gave none."""
    return str(error.response.get("Error", {}).get("Code", ""))
