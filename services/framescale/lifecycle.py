"""Processes that end with the process that started them.

A child started in its own session (so that Ctrl-C reaches only its parent) outlives a parent
that is killed outright (SIGKILL, an OOM kill, a CI time-out) unless Linux is asked to signal
it: ``PR_SET_PDEATHSIG``. The setting survives ``exec``, so ``python -m framescale.lifecycle
PARENT_PID COMMAND...`` sets it and then becomes COMMAND (same PID).

Linux sends the signal when the *thread* that started the child ends; every caller here starts
its children from the main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m framescale.lifecycle PARENT_PID COMMAND [ARG...]")
    parent, command = int(argv[0]), argv[1:]
    # SIGTERM, not SIGKILL: moto, the model server and the worker shut down cleanly on it
    # (the worker hands its jobs back).
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request above took effect
        sys.exit(f"parent process {parent} is gone; not starting {command[0]}")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
