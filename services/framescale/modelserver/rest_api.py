"""TF Serving's REST API over a model repository (the standard library's HTTP server).

- ``POST /v1/models/<name>[/versions/<v>]:predict`` with the row format
  ``{"instances": [...]}`` (answered ``{"predictions": [...]}``) or the columnar format
  ``{"inputs": ...}`` (answered ``{"outputs": ...}``), optional ``"signature_name"``;
- ``GET /v1/models/<name>[/versions/<v>]``: the model's version status;
- ``GET /v1/models/<name>[/versions/<v>]/metadata``: its signatures.

Errors are ``{"error": "..."}`` with the HTTP status TF Serving maps the code to (400 for a
bad request, 404 for an unknown model or version).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from framescale.modelserver.errors import ServingError, invalid_argument
from framescale.modelserver.repository import ModelRepository, VersionState
from framescale.tfserving import tfserving_pb2 as pb
from framescale.tfserving.codec import numpy_dtype

log = logging.getLogger("framescale.modelserver")

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>:predict|:classify|:regress|/metadata)?$"
)


# ---------------------------------------------------------------- JSON <-> numpy

# Stands for an input the signature does not have: only its name matters, because the
# signature check reports it with the rest of the mismatch.
_UNKNOWN = np.empty(0, dtype=object)


def _strings(value: Any) -> Any:
    """JSON strings and ``{"b64": ...}`` objects (TF Serving's binary form) to bytes."""
    if isinstance(value, list):
        return [_strings(item) for item in value]
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode()
    raise invalid_argument(f"expected a string or {{'b64': ...}}, got {type(value).__name__}")


def _array(alias: str, value: Any, dtype: int) -> np.ndarray:
    """A JSON value as the array the signature's dtype asks for; bad values are a 400."""
    if dtype == pb.DT_STRING:
        strings = _strings(value)
        try:
            array = np.empty(np.shape(strings), dtype=object) if strings else np.array([], dtype=object)
            array[...] = strings
        except ValueError:
            raise invalid_argument(f"input '{alias}' is ragged: every list at one depth must have one length") from None
        return array
    try:
        wanted = numpy_dtype(dtype)
    except ValueError:
        raise invalid_argument(f"input '{alias}': the signature's dtype cannot be given as JSON") from None
    try:
        array = np.array(value)
    except ValueError:
        raise invalid_argument(f"input '{alias}' is ragged: every list at one depth must have one length") from None
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "b") != (wanted.kind == "b"):
        kind = "booleans" if wanted.kind == "b" else "numbers"
        raise invalid_argument(f"input '{alias}' must hold {kind} only, for {wanted.name}")
    if wanted.kind in "iu" and array.size:
        if array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
            raise invalid_argument(f"input '{alias}' must hold integers for {wanted.name}")
        limits = np.iinfo(wanted)
        if array.min() < limits.min or array.max() > limits.max:
            raise invalid_argument(f"input '{alias}' has values outside {wanted.name}'s range")
    return array.astype(wanted)


def _jsonable(alias: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OS":
        # As TF Serving: outputs named *_bytes come back as base64 objects, other strings as text.
        binary = alias.endswith("_bytes")
        flat = [
            {"b64": base64.b64encode(item).decode()} if binary else item.decode(errors="replace")
            for item in array.reshape(-1).tolist()
        ]
        shaped = np.empty(len(flat), dtype=object)
        shaped[:] = flat
        return shaped.reshape(array.shape).tolist()
    return array.tolist()


def _row_inputs(instances: Any, specs: Mapping[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid_argument("'instances' must be a list")
    named = bool(instances) and all(isinstance(item, dict) and "b64" not in item for item in instances)
    if not named:
        if len(specs) != 1:
            raise invalid_argument(
                f"the signature has inputs {sorted(specs)}: each instance must be an object naming them"
            )
        ((alias, dtype),) = specs.items()
        return {alias: _array(alias, instances, dtype)}
    arrays = {}
    for alias in set().union(*(item.keys() for item in instances)):
        if alias not in specs:
            arrays[alias] = _UNKNOWN
            continue
        missing = sum(alias not in item for item in instances)
        if missing:
            raise invalid_argument(f"{missing} instance(s) lack the named input '{alias}'")
        arrays[alias] = _array(alias, [item[alias] for item in instances], specs[alias])
    return arrays


def _columnar_inputs(inputs: Any, specs: Mapping[str, int]) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and "b64" not in inputs:
        return {
            alias: _array(alias, value, specs[alias]) if alias in specs else _UNKNOWN for alias, value in inputs.items()
        }
    if len(specs) != 1:
        raise invalid_argument(f"the signature has inputs {sorted(specs)}: 'inputs' must be an object naming them")
    ((alias, dtype),) = specs.items()
    return {alias: _array(alias, inputs, dtype)}


def _row_outputs(outputs: Mapping[str, np.ndarray]) -> Any:
    if len(outputs) == 1:
        ((alias, array),) = outputs.items()
        return _jsonable(alias, array)
    sizes = {alias: array.shape[0] if array.ndim else None for alias, array in outputs.items()}
    batch = next(iter(sizes.values()))
    for alias, size in sizes.items():
        if size is None or size != batch:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output '{alias}' has batch size {size}, others {batch}: use the columnar form ('inputs')",
            )
    columns = {alias: _jsonable(alias, array) for alias, array in outputs.items()}
    return [{alias: column[row] for alias, column in columns.items()} for row in range(batch or 0)]


def status_json(states: list[VersionState]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(state.version),
                "state": state.state_name,
                "status": {"error_code": state.error_code.name, "error_message": state.error_message},
            }
            for state in states
        ]
    }


# ---------------------------------------------------------------- the API


class RestApi:
    """Requests as (method, path, body) -> (status, JSON); no HTTP plumbing, easy to test."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            return 200, self._route(method, path, body)
        except ServingError as error:
            return error.http_status, {"error": error.message}
        except Exception as error:  # answered, not a dropped connection
            log.exception("REST request failed unexpectedly")
            return 500, {"error": f"{type(error).__name__}: {error}"}

    def _route(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        match = _PATH.match(path.split("?", 1)[0])
        if match is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {path}")
        name, label, suffix = match["name"], match["label"], match["suffix"]
        version = int(match["version"]) if match["version"] else None
        if method == "GET" and suffix is None:
            if label:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            return status_json(self.repository.status(name, version))
        if method == "GET" and suffix == "/metadata":
            return self._metadata(name, version, label)
        if method == "POST" and suffix == ":predict":
            return self._predict(name, version, label, body)
        if method == "POST" and suffix in (":classify", ":regress"):
            raise invalid_argument(f"{suffix[1:]} is not supported by this server; use :predict")
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _metadata(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        servable = self.repository.lookup(name, version, label)
        signature_defs = json_format.MessageToDict(
            servable.signature_defs, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return {
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": signature_defs},
        }

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> dict[str, Any]:
        servable = self.repository.lookup(name, version, label)
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise invalid_argument(f"JSON Parse error: {error}") from None
        if not isinstance(request, dict):
            raise invalid_argument("the request body must be a JSON object")
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid_argument("'signature_name' key must be a string value.")
        row = "instances" in request
        if row == ("inputs" in request):
            raise invalid_argument("the request must have exactly one of 'instances' (row) and 'inputs' (columnar)")
        signature = servable.signature(signature_name)
        specs = {alias: spec.dtype for alias, spec in signature.inputs.items()}
        inputs = _row_inputs(request["instances"], specs) if row else _columnar_inputs(request["inputs"], specs)
        _, outputs = servable.predict(signature_name, inputs)
        if row:
            return {"predictions": _row_outputs(outputs)}
        if len(outputs) == 1:
            ((alias, array),) = outputs.items()
            return {"outputs": _jsonable(alias, array)}
        return {"outputs": {alias: _jsonable(alias, array) for alias, array in outputs.items()}}


class _Handler(BaseHTTPRequestHandler):
    server: RestServer
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries its Content-Length

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the body stays unread
            self._reply(400, {"error": f"request body of {length} bytes exceeds {self.server.max_body_bytes}"})
            return
        self._serve(self.rfile.read(length))

    def _serve(self, body: bytes) -> None:
        status, payload = self.server.api.handle(self.command, self.path, body)
        self._reply(status, payload)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("rest " + format, *args)


class RestServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow client must not hold up shutdown

    def __init__(self, address: tuple[str, int], api: RestApi, max_body_bytes: int) -> None:
        self.api = api
        self.max_body_bytes = max_body_bytes
        super().__init__(address, _Handler)


def create_rest_server(repository: ModelRepository, host: str, port: int, *, max_body_bytes: int) -> RestServer:
    """A bound REST server; call ``serve_forever`` on a thread and ``shutdown`` to stop it."""
    return RestServer((host, port), RestApi(repository), max_body_bytes)
