"""Scratch folders for jobs, each owned by the process using it, and the clean-up that respects that.

A job's folder ``<work_dir>/job-<id>/`` holds its download and its detections while it runs.
Beside it, ``job-<id>.lock`` is held with ``flock`` for as long as the folder is in use; the
kernel drops the lock when its process dies, however it dies. So the clean-up at a
supervisor's start deletes only folders whose lock is free: a slot killed mid-job leaves one
behind, and it goes; a live process's folder (a slot of an earlier supervisor that has not
died yet) stays, whatever the clean-up thinks of its owner.

The lock is taken before the folder exists and released after it is gone. A clean-up that
takes a lock deletes the folder, then the lock file, while holding it; a job that finds its
new lock file unlinked under it (the clean-up got there between its create and its lock)
starts again with another name.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "job-"
LOCK_SUFFIX = ".lock"


def _lock(path: Path, *, create: bool) -> int | None:
    """An open, flock'ed descriptor of ``path`` that still names that file; None if it cannot be had."""
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except (FileNotFoundError, FileExistsError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if path.stat().st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)  # unlinked (and perhaps made anew) since we opened it
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def job_folder(work_dir: Path) -> Iterator[Path]:
    """A new folder under ``work_dir``, owned by this process until the block ends, then removed."""
    work_dir.mkdir(parents=True, exist_ok=True)
    while True:
        name = f"{PREFIX}{uuid.uuid4().hex}"
        lock = work_dir / (name + LOCK_SUFFIX)
        fd = _lock(lock, create=True)
        if fd is not None:
            break
    folder = work_dir / name
    try:
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def remove_abandoned(work_dir: Path) -> int:
    """Delete the job folders (and lock files) no live process owns; how many folders went."""
    removed = 0
    names = {path.name.removesuffix(LOCK_SUFFIX) for path in work_dir.glob(PREFIX + "*")}
    for name in sorted(names):
        folder, lock = work_dir / name, work_dir / (name + LOCK_SUFFIX)
        fd = _lock(lock, create=False)
        if fd is None and lock.exists():
            continue  # held: its owner is alive
        try:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            if fd is not None:
                lock.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
    if removed:
        log.info("removed scratch folders left by dead slots", extra={"count": removed})
    return removed
