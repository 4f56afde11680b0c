"""Which model versions are served, as TF Serving's file-system source decides it.

A model is a base path holding numeric version folders (``<base>/<version>/``); other
entries (``labels.json``, hidden folders of an export in progress) are ignored. As with TF
Serving's default version policy, only the latest version of each model is loaded; when a
newer one appears (``refresh``, called by the poll loop), it is loaded first and then swapped
in, so requests never find the model missing. Versions that were replaced are reported with
state END, as GetModelStatus does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from framescale.modelserver.errors import invalid_argument, not_found
from framescale.tfserving import tfserving_pb2 as pb

if TYPE_CHECKING:
    from framescale.modelserver.servable import Servable

log = logging.getLogger("framescale.modelserver")

ModelSources = Callable[[], dict[str, Path]]
Loader = Callable[[str, int, Path], "Servable"]

# TF Serving retries a failed load a few times too (--max_num_load_retries, default 5); after
# that a broken version stays reported as END with its error instead of being retried forever.
MAX_LOAD_ATTEMPTS = 5
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def models_under(base_dir: Path) -> ModelSources:
    """Every visible sub-folder of ``base_dir`` is a model of that name."""

    def sources() -> dict[str, Path]:
        if not base_dir.is_dir():
            return {}
        return {
            entry.name: entry
            for entry in sorted(base_dir.iterdir())
            if entry.is_dir() and not entry.name.startswith(".")
        }

    return sources


def single_model(name: str, base_path: Path) -> ModelSources:
    return lambda: {name: base_path}


def version_folders(base_path: Path) -> dict[int, Path]:
    """Numeric sub-folders holding a SavedModel, by version number ("007" is version 7).

    A folder without ``saved_model.pb`` yet is still being written; it is left for a later scan
    rather than counted as a failed load.
    """
    if not base_path.is_dir():
        return {}
    return {
        int(entry.name): entry
        for entry in sorted(base_path.iterdir())
        if entry.name.isdigit() and any((entry / name).is_file() for name in SAVED_MODEL_FILES)
    }


def _load(name: str, version: int, path: Path) -> Servable:
    # Imported here so that the repository (and --help) does not import TensorFlow.
    from framescale.modelserver.servable import load_servable

    return load_servable(name, version, path)


@dataclass
class VersionState:
    version: int
    state: int  # a pb.ModelVersionStatus.State value
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""

    @property
    def state_name(self) -> str:
        return str(pb.ModelVersionStatus.State.Name(self.state))  # type: ignore[arg-type]


class ModelRepository:
    def __init__(self, sources: ModelSources, loader: Loader = _load) -> None:
        self._sources = sources
        self._loader = loader
        self._lock = threading.Lock()  # guards the two maps below; never held while loading
        self._serving: dict[str, Servable] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._attempts: dict[tuple[str, int], int] = {}
        self._refreshing = threading.Lock()  # one refresh at a time

    # ------------------------------------------------------------ what requests see

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._serving)

    def lookup(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request's ModelSpec names, or TF Serving's error for it."""
        if label:
            # Labels exist only in TF Serving's model config file, which this server has not.
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        with self._lock:
            servable = self._serving.get(name)
        if version is None:
            if servable is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            return servable
        if servable is None or servable.version != version:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def status(self, name: str, version: int | None = None) -> list[VersionState]:
        with self._lock:
            states = dict(self._states.get(name, {}))
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [states[version]]
        return [states[key] for key in sorted(states, reverse=True)]

    # ------------------------------------------------------------ following the file system

    def refresh(self) -> list[str]:
        """Load what is new on disk, unload what is gone; returns the load failures."""
        with self._refreshing:
            sources = self._sources()
            failures = []
            for name, base_path in sources.items():
                problem = self._follow(name, base_path)
                if problem:
                    failures.append(problem)
            for name in set(self.model_names()) - set(sources):
                self._unload(name)
            return failures

    def _follow(self, name: str, base_path: Path) -> str | None:
        versions = version_folders(base_path)
        if not versions:
            self._unload(name)
            return None
        latest = max(versions)
        with self._lock:
            current = self._serving.get(name)
        if current is not None and current.version == latest:
            return None
        if self._attempts.get((name, latest), 0) >= MAX_LOAD_ATTEMPTS:
            return None
        self._set_state(name, VersionState(latest, pb.ModelVersionStatus.LOADING))
        started = time.monotonic()
        try:
            servable = self._loader(name, latest, versions[latest])
        except Exception as error:  # any load failure is reported, never fatal to the others
            self._attempts[(name, latest)] = self._attempts.get((name, latest), 0) + 1
            message = f"{type(error).__name__}: {error}"
            self._set_state(name, VersionState(latest, pb.ModelVersionStatus.END, grpc.StatusCode.UNKNOWN, message))
            log.warning("loading failed", extra={"model": name, "version": latest, "error": message})
            return f"{name} version {latest}: {message}"
        with self._lock:
            previous = self._serving.get(name)
            self._serving[name] = servable
            self._states.setdefault(name, {})[latest] = VersionState(latest, pb.ModelVersionStatus.AVAILABLE)
            if previous is not None:
                self._states[name][previous.version] = VersionState(previous.version, pb.ModelVersionStatus.END)
        log.info(
            "model available",
            extra={"model": name, "version": latest, "seconds": round(time.monotonic() - started, 2)},
        )
        return None

    def _unload(self, name: str) -> None:
        with self._lock:
            previous = self._serving.pop(name, None)
            if previous is not None:
                self._states[name][previous.version] = VersionState(previous.version, pb.ModelVersionStatus.END)
        if previous is not None:
            log.info("model unloaded", extra={"model": name, "version": previous.version})

    def _set_state(self, name: str, state: VersionState) -> None:
        with self._lock:
            self._states.setdefault(name, {})[state.version] = state

    def poll(self, interval: float, stop: threading.Event) -> None:
        """Refresh every ``interval`` seconds until ``stop`` is set (run on a thread)."""
        while not stop.wait(interval):
            try:
                self.refresh()
            except Exception:  # a bad scan must not end polling for good
                log.exception("refreshing the models failed")
