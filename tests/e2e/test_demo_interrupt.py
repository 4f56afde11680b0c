"""``make demo`` stops everything it started when it is interrupted, at start-up or later.

Its children run in sessions of their own, so a terminal's signal reaches only the demo;
if the demo does not stop them, nobody does. The demo runs as it would from a terminal
(its own process group, signalled as a whole), and every process below it is recorded
by PID while it runs, because an orphan is re-parented and no longer shows in the tree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
STOPPED = "everything the demo started has been stopped"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None  # starttime: tells a reused PID apart


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every live process below ``root``: PID -> (start time, command line)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, tuple[str, str]] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        start = _start_time(pid)
        if start is not None:
            found[pid] = (start, _cmdline(pid))
            pending.extend(children.get(pid, []))
    return found


def still_running(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start


@pytest.mark.parametrize(
    ("signum", "moment"),
    [
        (signal.SIGINT, "start-up"),  # Ctrl-C while the model server loads TensorFlow
        (signal.SIGHUP, "start-up"),  # the terminal closed
        (signal.SIGTERM, "running"),  # workers at work on the videos
    ],
    ids=["ctrl-c-at-start-up", "hangup-at-start-up", "sigterm-while-running"],
)
def test_interrupted_demo_leaves_no_process_behind(
    signum: signal.Signals, moment: str, models_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "demo.out"
    command = [sys.executable, "-m", "framescale.demo", "--models", str(models_dir), "--out", str(tmp_path / "out")]
    with output.open("w") as sink:
        demo = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, text=True
        )
    seen: dict[int, tuple[str, str]] = {}

    def commands() -> list[str]:
        seen.update(descendants(demo.pid))
        return [cmdline for _, cmdline in seen.values()]

    def reached() -> bool:
        started = commands()
        if moment == "start-up":
            # The model server exists, and the demo has not yet said it is ready.
            return any("framescale.modelserver" in c for c in started)
        # Both workers and their slot processes (multiprocessing spawn children) exist.
        workers = sum("framescale.worker" in c for c in started)
        return workers == 2 and sum("spawn_main" in c for c in started) >= 2

    try:
        wait_for(reached, timeout=300, what=f"the demo's {moment}", interval=0.1)
        commands()
        os.killpg(demo.pid, signum)  # as a terminal signals its foreground job
        demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        survivors = [pid for pid, (start, _) in seen.items() if still_running(pid, start)]
        for pid in survivors:  # never leave them to the next test, whatever the outcome
            os.kill(pid, signal.SIGKILL)
    text = output.read_text()
    if moment == "start-up":
        assert "TF Serving protocol at" not in text, "the signal came after start-up: the test proved nothing"
    assert len(seen) >= (2 if moment == "start-up" else 6), seen  # moto, model server (+ workers, slots)
    assert not survivors, {pid: seen[pid][1] for pid in survivors}
    assert demo.returncode == 128 + signum, text[-3000:]
    assert f"{signum.name}: {STOPPED}" in text
