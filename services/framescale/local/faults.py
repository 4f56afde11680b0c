"""A fault-injecting HTTP proxy in front of the moto server, for chaos tests.

Clients use the proxy's URL as AWS_ENDPOINT_URL; it forwards every request to moto and,
for requests that match a rule, answers with an S3-style error (503 SlowDown, 500
InternalError) or drops the connection instead — what S3 throttling, 5xx and network
resets look like to boto3. A rule can also let the request through and then drop the
answer (the write happened, the client cannot know), or forward it only after a delay
(a slow network or a slow S3).
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>injected by framescale '
    "fault proxy</Message><RequestId>fault</RequestId></Error>"
)
# Hop-by-hop headers are the proxy's own business (RFC 9110, section 7.6.1).
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class FaultRule:
    method: str  # GET, PUT, HEAD, POST, DELETE or * for any
    path: str  # regular expression over the request path (S3 is path-style here: /bucket/key)
    probability: float = 1.0  # chance that a matching request fails
    status: int = 503
    code: str = "SlowDown"
    reset: bool = False  # drop the connection instead of answering
    lose_answer: bool = False  # forward the request, then drop the connection instead of answering
    delay: float = 0.0  # forward the request after this many seconds (no error)
    target: str | None = None  # X-Amz-Target header to match (JSON APIs: "AmazonSQS.DeleteMessage")
    limit: int | None = None  # fail at most this many requests
    failed: int = 0

    def matches(self, method: str, path: str, target: str) -> bool:
        return self.method in ("*", method) and re.search(self.path, path) is not None and self.target in (None, target)


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 0, host: str = "127.0.0.1", port: int = 0) -> None:
        target = urlsplit(upstream)
        self.upstream_host = target.hostname or "127.0.0.1"
        self.upstream_port = target.port or 80
        self.rules: list[FaultRule] = []
        self.requests = 0
        self.injected = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self._read_body()
                rule = proxy._decide(self.command, self.path.split("?", 1)[0], self.headers.get("X-Amz-Target", ""))
                if rule is not None and rule.delay:
                    time.sleep(rule.delay)
                    self._forward(body)
                    return
                if rule is not None and rule.lose_answer:
                    self._forward(body, answer=False)
                    self._reset()
                    return
                if rule is not None and rule.reset:
                    self._reset()
                    return
                if rule is not None:
                    payload = _ERROR_BODY.format(code=rule.code).encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                self._forward(body)

            def _reset(self) -> None:
                # RST instead of FIN: what a network reset looks like to the client.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length", "0") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self, body: bytes, *, answer: bool = True) -> None:
                connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    payload = response.read()
                finally:
                    connection.close()
                if not answer:
                    return
                self.send_response(response.status, response.reason)
                # A HEAD answer carries the object's length with no body: pass it through.
                keep_length = self.command == "HEAD"
                for key, value in response.getheaders():
                    if key.lower() in _HOP_BY_HOP or (key.lower() == "content-length" and not keep_length):
                        continue
                    self.send_header(key, value)
                if not keep_length:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _decide(self, method: str, path: str, target: str) -> FaultRule | None:
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if not rule.matches(method, path, target):
                    continue
                if rule.limit is not None and rule.failed >= rule.limit:
                    continue
                if self._random.random() < rule.probability:
                    rule.failed += 1
                    self.injected += 1
                    return rule
        return None

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
