"""``python -m framescale.worker``: run the worker with settings from FRAMESCALE_WORKER_*."""

from __future__ import annotations

import sys

from framescale import logs
from framescale.settings import load_settings
from framescale.worker.service import StartupError, Supervisor
from framescale.worker.settings import WorkerSettings


def main() -> int:
    settings = load_settings(WorkerSettings)
    logs.configure("worker", settings.log_level, settings.log_format)
    try:
        return Supervisor(settings).run()
    except StartupError as error:
        print(f"framescale worker cannot start: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
