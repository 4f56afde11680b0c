"""Memory and process facts read from /proc (Linux), without extra packages."""

from __future__ import annotations

from pathlib import Path

KIB = 1024
MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mib(pid: int) -> float | None:
    """Resident set size now (VmRSS), in MiB."""
    value = _status_kib(pid, "VmRSS")
    return round(value / KIB, 1) if value is not None else None


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident set size since the process started (VmHWM, the high-water mark), in MiB."""
    value = _status_kib(pid, "VmHWM")
    return round(value / KIB, 1) if value is not None else None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children list)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return sorted(set(found))


def tree_rss_mib(pid: int) -> float | None:
    """VmRSS of ``pid`` and all its descendants, summed (shared pages counted in each)."""
    total = 0.0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        value = rss_mib(current)
        if value is None:
            if current == pid:
                return None
            continue
        total += value
        pending.extend(children(current))
    return round(total, 1)


def memory_total_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / KIB, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def load_average() -> list[float] | None:
    try:
        return [float(part) for part in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None
