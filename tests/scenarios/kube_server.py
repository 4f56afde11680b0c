"""The Kubernetes API emulator in a process of its own: ``python -m tests.scenarios.kube_server``
prints its URL on one line, then serves until its standard input closes (or its parent dies)."""

from __future__ import annotations

import sys

from framescale import lifecycle
from tests.integration.operator.kube_emulator import EmulatorThread


def main() -> None:
    lifecycle.die_with_parent()
    emulator = EmulatorThread().start()
    print(emulator.url, flush=True)
    sys.stdin.read()  # until the parent closes the pipe
    emulator.stop()


if __name__ == "__main__":
    main()
