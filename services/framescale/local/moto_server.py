"""moto in server mode on 127.0.0.1: real HTTP, so every boto3 client is exercised as in AWS.

The server runs with ``moto_extensions`` installed: Auto Scaling lifecycle hooks, scale-in and
termination behave as AWS documents (see that module for exactly what is simulated).
"""

from __future__ import annotations

import os
from pathlib import Path

from framescale.local.processes import ManagedProcess, free_port, http_ok, python_argv

# moto accepts any credentials; these only keep boto3 from looking for real ones.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class MotoServer(ManagedProcess):
    """``python -m moto.server`` on a free port; ``env`` gives what clients need to use it."""

    def __init__(self, port: int = 0, log_path: Path | None = None, region: str = "us-east-1") -> None:
        self.port = port or free_port()
        self.region = region
        env = dict(os.environ)
        env.update(FAKE_CREDENTIALS)
        env["AWS_DEFAULT_REGION"] = region
        super().__init__(
            "moto",
            python_argv("-m", "framescale.local.moto_extensions", "-H", "127.0.0.1", "-p", str(self.port)),
            env=env,
            log_path=log_path,
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        """Environment for any process that should talk to this server instead of AWS."""
        return {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def ready(self) -> bool:
        return http_ok(f"{self.endpoint_url}/moto-api/data.json")

    def describe_ready(self) -> str:
        return f"moto server on {self.endpoint_url}"

    def reset(self) -> None:
        """Drop every resource (moto's own reset endpoint)."""
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
