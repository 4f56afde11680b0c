"""The local TF-Serving-protocol model server as a child process, for tests and the demo.

    server = ModelServerProcess(models_dir, log_path=tmp / "model-server.log").start()
    channel = grpc.insecure_channel(server.grpc_target, options=channel_options())
    ...
    server.stop()   # and server.start() again: same ports, so clients reconnect

The ports are chosen once, at construction, so a stopped server comes back where its
clients expect it. ``start`` returns when GetModelStatus reports every model AVAILABLE.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

import grpc

from framescale.local.processes import ManagedProcess, free_port, python_argv
from framescale.tfserving import tfserving_pb2 as pb
from framescale.tfserving.stubs import ModelServiceStub

# Importing TensorFlow alone takes 4-27 s on a small machine, then the models load.
START_TIMEOUT_SECONDS = 180.0


def exported_models(models_dir: Path) -> list[str]:
    """Model folders under ``models_dir`` that hold at least one numeric version folder."""
    if not models_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in models_dir.iterdir()
        if entry.is_dir()
        and not entry.name.startswith(".")
        and any(child.name.isdigit() and child.is_dir() for child in entry.iterdir())
    )


def _two_free_ports(host: str) -> tuple[int, int]:
    first = free_port(host)
    second = free_port(host)
    while second == first:
        second = free_port(host)
    return first, second


class ModelServerProcess(ManagedProcess):
    """``python -m framescale.modelserver --model_base_dir DIR`` on free (or given) ports."""

    start_timeout = START_TIMEOUT_SECONDS

    def __init__(
        self,
        models_dir: Path,
        *,
        models: Sequence[str] | None = None,
        grpc_port: int = 0,
        rest_port: int = 0,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.models_dir = Path(models_dir)
        # The models whose availability start() waits for: all exported ones by default.
        self.models = list(models) if models is not None else exported_models(self.models_dir)
        self.host = host
        free_grpc, free_rest = _two_free_ports(host)
        self.grpc_port = grpc_port or free_grpc
        self.rest_port = rest_port or free_rest
        if log_path is None:
            # Without a log there is nothing to show when a start fails.
            log_path = Path(tempfile.mkdtemp(prefix="framescale-model-server-")) / "model-server.log"
        argv = python_argv(
            "-m",
            "framescale.modelserver",
            "--model_base_dir",
            str(self.models_dir),
            "--host",
            host,
            "--grpc_port",
            str(self.grpc_port),
            "--rest_port",
            str(self.rest_port),
            *extra_args,
        )
        super().__init__("model-server", argv, env=env, log_path=log_path)

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    def ready(self, timeout: float = 2.0) -> bool:
        """Whether GetModelStatus reports every awaited model AVAILABLE right now."""
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = ModelServiceStub(channel)
            for name in self.models:
                request = pb.GetModelStatusRequest(model_spec=pb.ModelSpec(name=name))
                try:
                    response = stub.GetModelStatus(request, timeout=timeout)
                except grpc.RpcError:
                    return False
                states = [status.state for status in response.model_version_status]
                if pb.ModelVersionStatus.AVAILABLE not in states:
                    return False
        return True

    def describe_ready(self) -> str:
        return f"model server on {self.grpc_target} to serve {', '.join(self.models)}"

    def start(self, timeout: float | None = None) -> Self:
        if not self.models:
            raise RuntimeError(
                f"no exported models in {self.models_dir}: run `python -m framescale.modelserver.export "
                f"--out {self.models_dir}` (make models)"
            )
        return super().start(timeout)
