"""Run the model server: load the models, serve gRPC and REST, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from framescale.logs import configure
from framescale.modelserver.grpc_api import address, create_grpc_server
from framescale.modelserver.repository import ModelRepository, ModelSources, models_under, single_model
from framescale.modelserver.rest_api import RestServer, create_rest_server
from framescale.modelserver.settings import ModelServerSettings
from framescale.modelserver.tensorflow_env import quiet_tensorflow

log = logging.getLogger("framescale.modelserver")


def model_sources(settings: ModelServerSettings) -> ModelSources:
    if settings.model_base_dir is not None:
        return models_under(settings.model_base_dir)
    assert settings.model_base_path is not None  # the settings validator guarantees one of them
    return single_model(settings.model_name, settings.model_base_path)


def _where(settings: ModelServerSettings) -> str:
    return str(settings.model_base_dir or settings.model_base_path)


def load_models(settings: ModelServerSettings) -> ModelRepository:
    """The repository with every model's latest version loaded; exits with the reason if not."""
    repository = ModelRepository(model_sources(settings))
    failures = repository.refresh()
    if failures:
        raise SystemExit("cannot load the models:\n  " + "\n  ".join(failures))
    if not repository.model_names() and not settings.file_system_poll_wait_seconds:
        raise SystemExit(
            f"no model versions found under {_where(settings)} (expected <model>/<version>/saved_model.pb); "
            "export them with `python -m framescale.modelserver.export --out DIR`"
        )
    return repository


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()
        # A second signal ends the process at once, for a shutdown that hangs.
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def serve(settings: ModelServerSettings, announce: Callable[[str], None] | None = None) -> int:
    configure("modelserver", settings.log_level, settings.log_format)
    quiet_tensorflow()
    stop = threading.Event()
    _stop_on_signals(stop)
    repository = load_models(settings)

    # Bind both ports before serving on either, so a port clash fails the start as a whole.
    try:
        grpc_server = create_grpc_server(
            repository,
            settings.host,
            settings.grpc_port,
            threads=settings.threads,
            max_message_bytes=settings.max_message_bytes,
        )
        rest_server: RestServer | None = None
        if settings.rest_port:
            rest_server = create_rest_server(
                repository, settings.host, settings.rest_port, max_body_bytes=settings.max_message_bytes
            )
    except OSError as error:
        raise SystemExit(f"cannot listen: {error}") from None

    grpc_server.start()
    threads = []
    if rest_server is not None:
        threads.append(threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True))
    if settings.file_system_poll_wait_seconds:
        poll = threading.Thread(
            target=repository.poll, args=(settings.file_system_poll_wait_seconds, stop), name="poll", daemon=True
        )
        threads.append(poll)
    for thread in threads:
        thread.start()

    rest = f"http://{address(settings.host, settings.rest_port)}" if rest_server is not None else "off"
    log.info("ready", extra={"models_from": _where(settings), "threads": settings.threads})
    line = (
        f"serving models [{', '.join(repository.model_names())}] "
        f"on grpc {address(settings.host, settings.grpc_port)}, rest {rest}"
    )
    (announce or _print)(line)

    stop.wait()
    if rest_server is not None:
        rest_server.shutdown()
        rest_server.server_close()
    grpc_server.stop(settings.shutdown_grace_seconds).wait()
    log.info("stopped")
    return 0


def _print(line: str) -> None:
    # stdout, flushed: launchers and people watch for this line.
    print(line, flush=True)
