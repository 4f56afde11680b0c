"""Scratch folders: the clean-up removes a dead owner's, never a live process's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from framescale.worker import scratch

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from framescale.worker import scratch
    with scratch.job_folder(Path(sys.argv[1])) as folder:
        (folder / "input.mp4").write_bytes(b"video")
        print(folder, flush=True)
        time.sleep(60)
    """
)


def holder(work_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another process with a job folder in use (what a slot of an earlier supervisor is)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_live_owners_folder_stays_and_a_dead_owners_goes(tmp_path: Path) -> None:
    live, live_folder = holder(tmp_path)
    dead, dead_folder = holder(tmp_path)
    try:
        dead.send_signal(signal.SIGKILL)  # killed mid-job: its folder is left behind
        dead.wait(10)
        assert dead_folder.is_dir()
        assert scratch.remove_abandoned(tmp_path) == 1
        assert not dead_folder.exists() and not dead_folder.with_name(dead_folder.name + ".lock").exists()
        assert (live_folder / "input.mp4").read_bytes() == b"video", "a live process's folder was touched"
    finally:
        live.kill()
        live.wait(10)
    assert scratch.remove_abandoned(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_removed_with_its_lock_when_the_job_ends(tmp_path: Path) -> None:
    with scratch.job_folder(tmp_path) as folder:
        (folder / "detections.jsonl").write_text("{}\n")
        assert scratch.remove_abandoned(tmp_path) == 0, "the clean-up took this process's own folder"
        assert folder.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_folders_without_a_lock_and_stray_locks_are_removed(tmp_path: Path) -> None:
    (tmp_path / "job-old").mkdir()  # from a worker that kept no locks
    (tmp_path / "job-gone.lock").touch()  # its owner died before making the folder
    (tmp_path / "keep-me").mkdir()
    assert scratch.remove_abandoned(tmp_path) == 1
    assert [path.name for path in tmp_path.iterdir()] == ["keep-me"]


def test_a_new_folder_whose_lock_the_clean_up_took_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_lock = scratch._lock
    first = []

    def clean_up_in_between(path: Path, *, create: bool) -> int | None:
        if create and not first:
            first.append(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            os.close(fd)
            scratch.remove_abandoned(tmp_path)  # it finds the free lock and takes it away
        return real_lock(path, create=create and path not in first)

    monkeypatch.setattr(scratch, "_lock", clean_up_in_between)
    with scratch.job_folder(tmp_path) as folder:
        assert folder.name + ".lock" != first[0].name
        assert (tmp_path / (folder.name + ".lock")).exists()


def test_a_slots_entry_module_imports_nothing_slow() -> None:
    # The parent-death signal is armed in framescale.worker.slot_entry before the slot's slow
    # imports; importing the module itself must not bring them in (a spawned slot unpickles
    # its target from there first).
    probe = (
        "import sys, framescale.worker.slot_entry; "
        "print(sorted(m for m in ('boto3', 'botocore', 'grpc', 'cv2', 'numpy', 'pydantic') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]"
