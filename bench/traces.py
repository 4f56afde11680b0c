"""Arrival traces for the capacity simulator: the file format, loading, and the shipped traces.

A trace is a JSON file::

    {
      "name": "burst-1000",
      "description": "...",
      "horizon_seconds": 7200,          # how long to simulate (every policy gets the same window)
      "cluster": {                       # the model of the node group
        "node_startup_seconds": 120,     # launch -> worker taking jobs
        "jobs_per_node": 2,              # worker slots per node
        "min_nodes": 0, "max_nodes": 5,  # the Auto Scaling group's limits
        "visibility_timeout_seconds": 120  # an interrupted job's message reappears after this
      },
      "autoscaling": {"targetBacklogPerReplica": 2, ...},  # VideoPipeline spec.autoscaling
      "jobs": [[arrival_seconds, service_seconds], ...]
    }

``jobs`` may be any list of arrivals (for example exported from S3 access logs), so users
can replay their own traffic. ``python -m bench.traces`` rewrites the shipped traces from
fixed seeds; they are small enough to keep in the repository.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TRACES_DIR = Path(__file__).resolve().parent / "traces"
DAY = 86_400
HOUR = 3_600


@dataclass(frozen=True)
class Cluster:
    node_startup_seconds: int = 120
    jobs_per_node: int = 2
    min_nodes: int = 0
    max_nodes: int = 5
    visibility_timeout_seconds: int = 120


@dataclass(frozen=True)
class Job:
    arrival: int  # seconds from the start of the trace
    service: int  # seconds of work on one worker slot


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    horizon_seconds: int
    cluster: Cluster
    jobs: tuple[Job, ...]
    autoscaling: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "horizon_seconds": self.horizon_seconds,
            "cluster": asdict(self.cluster),
            "autoscaling": self.autoscaling,
            "jobs": [[job.arrival, job.service] for job in self.jobs],
        }

    def summary(self) -> dict[str, Any]:
        services = [job.service for job in self.jobs]
        return {
            "jobs": len(self.jobs),
            "horizon_hours": round(self.horizon_seconds / HOUR, 2),
            "mean_service_seconds": round(sum(services) / len(services), 1) if services else None,
            "work_node_hours": round(sum(services) / self.cluster.jobs_per_node / HOUR, 2),
            **asdict(self.cluster),
            "autoscaling": self.autoscaling,
        }


def load(path: Path) -> Trace:
    data = json.loads(Path(path).read_text())
    jobs = tuple(sorted((Job(int(a), max(1, int(s))) for a, s in data["jobs"]), key=lambda job: job.arrival))
    if any(job.arrival < 0 for job in jobs):
        raise ValueError(f"{path}: arrivals must be at or after 0 s")
    return Trace(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        horizon_seconds=int(data["horizon_seconds"]),
        cluster=Cluster(**data.get("cluster", {})),
        jobs=jobs,
        autoscaling=dict(data.get("autoscaling", {})),
    )


def save(trace: Trace, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One job per line keeps diffs of regenerated traces readable.
    head = {key: value for key, value in trace.to_json().items() if key != "jobs"}
    lines = ",\n".join(f"    [{job.arrival}, {job.service}]" for job in trace.jobs)
    text = json.dumps(head, indent=2)[:-2] + ',\n  "jobs": [\n' + lines + "\n  ]\n}\n"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the shipped traces

# One node per two jobs of backlog: with two slots per node, no job waits once nodes are up.
AUTOSCALING = {"targetBacklogPerReplica": 2}


def _service_times(
    rng: np.random.Generator, count: int, *, median: float, sigma: float, low: int, high: int
) -> list[int]:
    """Lognormal service times: most videos are short, a few are long."""
    values = rng.lognormal(math.log(median), sigma, size=count)
    return [int(v) for v in np.clip(np.rint(values), low, high)]


def _poisson_arrivals(rng: np.random.Generator, rate_per_second: np.ndarray) -> list[int]:
    """Arrival seconds of a Poisson process whose rate varies second by second."""
    counts = rng.poisson(rate_per_second)
    return [int(second) for second in np.repeat(np.arange(len(counts)), counts)]


def burst(count: int = 1000, service: int = 30) -> Trace:
    """The published managed-endpoint scenario: 1,000 videos at once, 30 s each, 2 per node, 5 nodes."""
    return Trace(
        name="burst-1000",
        description=(
            f"{count} videos arrive at once; {service} s of work each; 2 jobs per node; at most 5 nodes. "
            "The published managed-endpoint example drained the same burst at about 18 videos per minute."
        ),
        horizon_seconds=2 * HOUR,
        cluster=Cluster(node_startup_seconds=120, jobs_per_node=2, min_nodes=0, max_nodes=5),
        autoscaling=dict(AUTOSCALING),
        jobs=tuple(Job(0, service) for _ in range(count)),
    )


def diurnal(seed: int = 7) -> Trace:
    """One day: quiet at night, a daytime peak of about 6 videos a minute, lognormal service times."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(DAY)
    # Lowest at 04:00, highest at 16:00 (a raised cosine), from 0.1 to 6 videos per minute.
    shape = (1.0 - np.cos(2.0 * np.pi * (seconds - 4 * HOUR) / DAY)) / 2.0
    rate = (0.1 + 5.9 * shape) / 60.0
    arrivals = _poisson_arrivals(rng, rate)
    services = _service_times(rng, len(arrivals), median=90, sigma=0.6, low=10, high=1800)
    return Trace(
        name="diurnal-day",
        description=(
            "24 hours of Poisson arrivals whose rate follows the day (0.1/min at 04:00, 6/min at 16:00); "
            "service times lognormal around 90 s; 2 jobs per node; at most 10 nodes."
        ),
        horizon_seconds=DAY + HOUR,
        cluster=Cluster(node_startup_seconds=120, jobs_per_node=2, min_nodes=0, max_nodes=10),
        autoscaling=dict(AUTOSCALING),
        jobs=tuple(Job(a, s) for a, s in zip(arrivals, services, strict=True)),
    )


def spiky(seed: int = 11) -> Trace:
    """Six hours of light background traffic with sudden spikes of 50-250 videos."""
    rng = np.random.default_rng(seed)
    horizon = 6 * HOUR
    rate = np.full(horizon, 0.5 / 60.0)
    # Spikes start at random times and pour their videos in within two minutes.
    for start in sorted(rng.integers(10 * 60, horizon - 90 * 60, size=6)):
        size = int(rng.integers(50, 251))
        rate[start : start + 120] += size / 120.0
    arrivals = _poisson_arrivals(rng, rate)
    services = _service_times(rng, len(arrivals), median=60, sigma=0.5, low=10, high=900)
    return Trace(
        name="spiky",
        description=(
            "6 hours: 0.5 videos/min of background plus six spikes of 50-250 videos arriving within "
            "two minutes; service times lognormal around 60 s; 2 jobs per node; at most 10 nodes."
        ),
        horizon_seconds=horizon + HOUR,
        cluster=Cluster(node_startup_seconds=120, jobs_per_node=2, min_nodes=0, max_nodes=10),
        autoscaling=dict(AUTOSCALING),
        jobs=tuple(Job(a, s) for a, s in zip(arrivals, services, strict=True)),
    )


SHIPPED: dict[str, Callable[[], Trace]] = {"burst-1000": burst, "diurnal-day": diurnal, "spiky": spiky}


def shipped_paths() -> list[Path]:
    return [TRACES_DIR / f"{name}.json" for name in SHIPPED]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.traces", description="Write the shipped traces.")
    parser.add_argument("--out", type=Path, default=TRACES_DIR)
    args = parser.parse_args(argv)
    for name, make in SHIPPED.items():
        trace = make()
        path = save(trace, args.out / f"{name}.json")
        print(f"{path}: {len(trace.jobs)} jobs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
