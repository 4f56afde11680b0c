"""``python -m framescale.modelserver``: a TF-Serving-protocol model server.

Flags override ``FRAMESCALE_MODELSERVER_*`` variables; ``--port`` and ``--rest_api_port``
are accepted as in ``tensorflow_model_server``. TensorFlow is imported only after the
arguments are parsed, so ``--help`` and bad settings answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from framescale.modelserver.settings import ModelServerSettings
from framescale.settings import load_settings


def _help(field: str) -> str:
    description = ModelServerSettings.model_fields[field].description or ""
    default = ModelServerSettings.model_fields[field].default
    env = f"FRAMESCALE_MODELSERVER_{field.upper()}"
    return f"{description} [env {env}; default {default}]".replace("%", "%%")


def parse_args(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Only the flags given, as settings overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m framescale.modelserver",
        description="Serve SavedModels over TF Serving's gRPC and REST APIs with TensorFlow.",
        argument_default=argparse.SUPPRESS,
    )
    models = parser.add_argument_group("models (give --model_base_dir, or --model_base_path with --model_name)")
    models.add_argument("--model_base_dir", type=Path, metavar="DIR", help=_help("model_base_dir"))
    models.add_argument("--model_base_path", type=Path, metavar="PATH", help=_help("model_base_path"))
    models.add_argument("--model_name", metavar="NAME", help=_help("model_name"))
    models.add_argument(
        "--file_system_poll_wait_seconds", type=float, metavar="SECONDS", help=_help("file_system_poll_wait_seconds")
    )
    listen = parser.add_argument_group("listening")
    listen.add_argument("--host", metavar="HOST", help=_help("host"))
    listen.add_argument("--grpc_port", "--port", dest="grpc_port", type=int, metavar="PORT", help=_help("grpc_port"))
    listen.add_argument(
        "--rest_port", "--rest_api_port", dest="rest_port", type=int, metavar="PORT", help=_help("rest_port")
    )
    listen.add_argument("--max_message_bytes", type=int, metavar="BYTES", help=_help("max_message_bytes"))
    listen.add_argument("--threads", type=int, metavar="N", help=_help("threads"))
    listen.add_argument("--shutdown_grace_seconds", type=float, metavar="SECONDS", help=_help("shutdown_grace_seconds"))
    logs = parser.add_argument_group("logs")
    logs.add_argument("--log_level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=_help("log_level"))
    logs.add_argument("--log_format", choices=["json", "text"], help=_help("log_format"))
    return vars(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(ModelServerSettings, **parse_args(argv))
    from framescale.modelserver.server import serve

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
