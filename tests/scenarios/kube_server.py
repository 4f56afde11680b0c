"""The Kubernetes API emulator in a process of its own: ``python -m tests.scenarios.kube_server``
prints its URL on one line, then serves until its standard input closes (or its parent dies).

kmock keeps every request it served, and to route each new one it filters that whole list once per
reaction: a request costs time in proportion to all the requests before it (measured here: 90 ms
per Lease patch after 300 writes, 290 ms after 400). A scenario makes tens of thousands, so the
list is cut to the latest ones every second; only the request being routed needs to be in it.
"""

from __future__ import annotations

import sys
import threading

from framescale import lifecycle
from tests.integration.operator.kube_emulator import EmulatorThread

KEEP_REQUESTS = 50


def _forget_old_requests(emulator: EmulatorThread, stop: threading.Event) -> None:
    def trim() -> None:
        served = emulator.emulator._requests if emulator.emulator is not None else []
        del served[:-KEEP_REQUESTS]

    while not stop.wait(1.0):
        emulator.loop.call_soon_threadsafe(trim)


def main() -> None:
    lifecycle.die_with_parent()
    emulator = EmulatorThread().start()
    stop = threading.Event()
    threading.Thread(target=_forget_old_requests, args=(emulator, stop), daemon=True).start()
    print(emulator.url, flush=True)
    sys.stdin.read()  # until the parent closes the pipe
    stop.set()
    emulator.stop()


if __name__ == "__main__":
    main()
