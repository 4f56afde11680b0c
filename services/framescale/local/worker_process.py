"""``python -m framescale.worker`` as a child process, for local runs and tests."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from framescale.local.processes import ManagedProcess, python_argv


class WorkerProcess(ManagedProcess):
    def __init__(self, env: Mapping[str, str], *, log_path: Path | None = None, name: str = "worker") -> None:
        full = dict(os.environ)
        full.update(env)
        full.setdefault("FRAMESCALE_WORKER_HEALTH_PORT", "0")
        super().__init__(name, python_argv("-m", "framescale.worker"), env=full, log_path=log_path)

    def slot_pids(self) -> list[int]:
        """PIDs of the slot processes (the children doing the jobs)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            children = [int(pid) for pid in path.read_text().split()]
        except (OSError, ValueError):
            return []
        slots = []
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            # multiprocessing's resource tracker is a child too; slots run spawn_main.
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                slots.append(pid)
        return slots
