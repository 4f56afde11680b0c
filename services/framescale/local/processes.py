"""Start and stop helper processes (moto server, model server, workers) for local runs and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Self


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ManagedProcess:
    """A child process with a log file, stopped with SIGTERM then SIGKILL.

    ``start`` returns once the child is ready (``ready``, for subclasses that serve
    something); if the start fails or is interrupted in any way, the child is stopped
    before the exception goes on, so a failed start never leaves a process behind.
    """

    start_timeout = 60.0

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def ready(self) -> bool:
        """Whether the running child is ready for use; by default as soon as it runs."""
        return True

    def describe_ready(self) -> str:
        """What ``start`` waits for, for its time-out message."""
        return f"{self.name} to be ready"

    def start(self, timeout: float | None = None) -> Self:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        out = self._log if self._log is not None else subprocess.DEVNULL
        # A new session so that Ctrl-C in a terminal reaches only the parent, which stops
        # its children in order (they would otherwise all start shutting down at once).
        # The price: whoever starts a child must stop it, on every path out.
        # And it must die with this process even when this one is killed outright, or a
        # SIGKILLed test run or demo would leave moto and a model server running.
        guarded = [sys.executable, "-m", "framescale.lifecycle", str(os.getpid()), *self.argv]
        self.process = subprocess.Popen(
            guarded, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd, start_new_session=True
        )
        try:
            wait_until(
                lambda: not self.alive() or self.ready(),
                self.start_timeout if timeout is None else timeout,
                self.describe_ready(),
                interval=0.25,
            )
            if not self.alive():
                code = self.process.returncode
                raise RuntimeError(f"{self.name} exited with status {code} at start; its log ends:\n{self.log_tail()}")
        except TimeoutError as error:
            self.stop()
            raise TimeoutError(f"{error}; its log ends:\n{self.log_tail()}") from None
        except BaseException:
            # Also KeyboardInterrupt and the demo's SIGTERM/SIGHUP: the caller has no handle on
            # this child yet, so nobody else could stop it.
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        try:
            if self.alive():
                self.process.terminate()
                if self.wait(timeout) is None:
                    self.process.kill()
                    self.wait(5)
        except BaseException:
            # Interrupted while waiting for a graceful exit (a second Ctrl-C): do not wait again.
            self.process.kill()
            raise
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]
