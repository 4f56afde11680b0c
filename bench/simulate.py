"""Capacity simulator: replay an arrival trace through a scaling policy, second by second.

The model of the node group (from the trace's ``cluster``):

- a launched node starts taking jobs ``node_startup_seconds`` later, with ``jobs_per_node``
  slots; it is billed from launch to termination;
- waiting jobs go to free slots first come, first served, at once (workers long-poll);
- a job holds its slot for its service time;
- the group converges on the desired capacity every second: it launches nodes to reach it
  and terminates nodes above it. Nodes still starting go first, then idle ones. With
  scale-in protection (framescale) busy nodes stay until their jobs end; without it (the
  reference) busy nodes go too, picked at random, and the jobs on them are interrupted.
  Idle-before-busy favours the reference: a real group does not know which nodes are idle;
- an interrupted job's message reappears ``visibility_timeout_seconds`` later and is run
  again from the start; until then it counts as in flight, as SQS reports it.

Each second, in order: jobs finish, interrupted messages reappear, new jobs arrive, the
policy runs (at its interval, on the state at the end of the previous second, as a poll of
the queue would read it), the group converges, free slots take jobs, and the state is
recorded.

    python -m bench.simulate bench/traces/burst-1000.json --out bench/results
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import stats
from bench.policies import ClusterView, FramescalePolicy, OneMinuteVisiblePolicy, Policy, StaticPolicy
from bench.traces import HOUR, Trace, load


@dataclass
class _Node:
    ident: int
    launched: int
    ready_at: int
    jobs: dict[int, int] = field(default_factory=dict)  # job index -> second it ends

    def ready(self, now: int) -> bool:
        return now >= self.ready_at


@dataclass
class JobRecord:
    arrival: int
    service: int
    start: int | None = None  # the start of the run that completed
    end: int | None = None
    interruptions: int = 0


@dataclass
class Series:
    """The state after each second (what the plots show)."""

    visible: np.ndarray
    in_flight: np.ndarray
    nodes: np.ndarray
    desired: np.ndarray


@dataclass
class Result:
    policy: str
    trace: str
    horizon_seconds: int
    jobs: list[JobRecord]
    node_seconds: int
    interruptions: int
    lost_work_seconds: int
    scale_changes: int
    series: Series

    def metrics(self) -> dict[str, Any]:
        """The figures the benchmark reports for one policy on one trace."""
        done = [job for job in self.jobs if job.end is not None]
        waits = [float(job.start - job.arrival) for job in done if job.start is not None]
        first_arrival = min((job.arrival for job in self.jobs), default=0)
        last_arrival = max((job.arrival for job in self.jobs), default=0)
        all_done = len(done) == len(self.jobs)
        last_end = max((job.end for job in done if job.end is not None), default=None)
        drain = (last_end - first_arrival) if all_done and last_end is not None else None
        backlog = self.series.visible + self.series.in_flight
        return {
            "jobs": len(self.jobs),
            "completed": len(done),
            "unfinished": len(self.jobs) - len(done),
            "drain_seconds": drain,
            "drain_after_last_arrival_seconds": (last_end - last_arrival) if drain is not None and last_end else None,
            "jobs_per_minute_while_draining": stats.ratio(len(done) * 60.0, drain, 2) if drain else None,
            "backlog_age_seconds": stats.percentiles(waits),
            "node_hours": round(self.node_seconds / HOUR, 2),
            "jobs_interrupted_by_scale_in": self.interruptions,
            "jobs_interrupted_at_least_once": sum(1 for job in self.jobs if job.interruptions),
            "lost_work_node_hours": round(self.lost_work_seconds / HOUR, 3),
            "peak_nodes": int(self.series.nodes.max()) if len(self.series.nodes) else 0,
            "peak_backlog": int(backlog.max()) if len(backlog) else 0,
            "scale_changes": self.scale_changes,
        }


def simulate(trace: Trace, policy: Policy, *, seed: int = 0, initial_nodes: int = 0) -> Result:
    """Run ``trace`` through ``policy``; ``initial_nodes`` are already up at 0 s (a warm static fleet)."""
    cluster = trace.cluster
    horizon = trace.horizon_seconds
    rng = random.Random(seed)
    records = [JobRecord(job.arrival, job.service) for job in trace.jobs]
    order = sorted(range(len(records)), key=lambda i: records[i].arrival)
    next_arrival = 0

    nodes: list[_Node] = [_Node(i, 0, 0) for i in range(initial_nodes)]
    next_ident = initial_nodes
    desired = initial_nodes
    visible: deque[int] = deque()
    reappear: list[tuple[int, int]] = []  # (second, job index) of interrupted messages
    started: dict[int, int] = {}  # job index -> second its current run started
    node_seconds = interruptions = lost_work = scale_changes = 0
    series = Series(*(np.zeros(horizon, dtype=np.int32) for _ in range(4)))
    last = {"visible": 0, "in_flight": 0, "nodes": len(nodes), "busy_nodes": 0}

    def terminate(node: _Node, now: int) -> None:
        nonlocal interruptions, lost_work
        for index in node.jobs:
            interruptions += 1
            lost_work += now - started.pop(index)
            records[index].interruptions += 1
            heapq.heappush(reappear, (now + cluster.visibility_timeout_seconds, index))
        nodes.remove(node)

    for now in range(horizon):
        # Jobs finish.
        for node in nodes:
            for index in [i for i, end in node.jobs.items() if end <= now]:
                del node.jobs[index]
                records[index].start = started.pop(index)
                records[index].end = now
        # Interrupted messages come back.
        while reappear and reappear[0][0] <= now:
            visible.append(heapq.heappop(reappear)[1])
        # New jobs arrive.
        while next_arrival < len(order) and records[order[next_arrival]].arrival <= now:
            visible.append(order[next_arrival])
            next_arrival += 1
        # The policy runs at its own interval, on the queue and nodes as they stood at the end
        # of the previous second (a poll reads the state; it does not see this second's arrivals).
        if now % policy.interval_seconds == 0:
            view = ClusterView(now=now, desired=desired, **last)
            wanted = max(cluster.min_nodes, min(cluster.max_nodes, policy.decide(view)))
            if wanted != desired:
                scale_changes += 1
                desired = wanted
        # The group converges on the desired capacity.
        while len(nodes) < desired:
            nodes.append(_Node(next_ident, now, now + cluster.node_startup_seconds))
            next_ident += 1
        excess = len(nodes) - desired
        if excess > 0:
            starting = [node for node in nodes if not node.ready(now)]
            idle = [node for node in nodes if node.ready(now) and not node.jobs]
            busy = [node for node in nodes if node.jobs]
            # Starting nodes go first (newest first), then idle ones; busy ones only when unprotected.
            victims = sorted(starting, key=lambda node: -node.launched)[:excess]
            if len(victims) < excess:
                victims += rng.sample(idle, min(len(idle), excess - len(victims)))
            if len(victims) < excess and not policy.protects_busy_nodes:
                victims += rng.sample(busy, excess - len(victims))
            for node in victims:
                terminate(node, now)
        # Free slots take waiting jobs, first come first served.
        for node in nodes:
            if not node.ready(now):
                continue
            while visible and len(node.jobs) < cluster.jobs_per_node:
                index = visible.popleft()
                node.jobs[index] = now + records[index].service
                started[index] = now
        node_seconds += len(nodes)
        in_flight = sum(len(node.jobs) for node in nodes) + len(reappear)
        last = {
            "visible": len(visible),
            "in_flight": in_flight,
            "nodes": len(nodes),
            "busy_nodes": sum(1 for node in nodes if node.jobs),
        }
        series.visible[now] = len(visible)
        series.in_flight[now] = in_flight
        series.nodes[now] = len(nodes)
        series.desired[now] = desired

    return Result(
        policy=policy.name,
        trace=trace.name,
        horizon_seconds=horizon,
        jobs=records,
        node_seconds=node_seconds,
        interruptions=interruptions,
        lost_work_seconds=lost_work,
        scale_changes=scale_changes,
        series=series,
    )


# ---------------------------------------------------------------- comparisons


def standard_policies(trace: Trace) -> list[tuple[Policy, int]]:
    """The policies every trace is run through, with the nodes each starts with."""
    cluster = trace.cluster
    target = int(trace.autoscaling.get("targetBacklogPerReplica", 5))
    return [
        (FramescalePolicy(trace.autoscaling, group_min=cluster.min_nodes, group_max=cluster.max_nodes), 0),
        (StaticPolicy(cluster.max_nodes), cluster.max_nodes),
        (
            OneMinuteVisiblePolicy(target_per_node=target, min_nodes=cluster.min_nodes, max_nodes=cluster.max_nodes),
            0,
        ),
        # The same with CloudWatch target tracking's slower scale-in alarm (15 datapoints):
        # fewer interruptions, more node-hours. Shows the result is not an artefact of one setting.
        (
            OneMinuteVisiblePolicy(
                target_per_node=target,
                min_nodes=cluster.min_nodes,
                max_nodes=cluster.max_nodes,
                scale_in_datapoints=15,
                name="one-minute-visible-15min-in",
            ),
            0,
        ),
    ]


def compare(trace: Trace, *, seed: int = 0) -> tuple[dict[str, Any], dict[str, Result]]:
    """Every standard policy on ``trace``: figures per policy and framescale's ratios to the others."""
    results: dict[str, Result] = {}
    for policy, initial in standard_policies(trace):
        results[policy.name] = simulate(trace, policy, seed=seed, initial_nodes=initial)
    figures = {name: result.metrics() for name, result in results.items()}
    ours = figures["framescale"]
    versus: dict[str, Any] = {}
    for name, other in figures.items():
        if name == "framescale":
            continue
        versus[name] = {
            "node_hours_ratio": stats.ratio(ours["node_hours"], other["node_hours"]),
            "drain_seconds_ratio": stats.ratio(ours["drain_seconds"], other["drain_seconds"]),
            "backlog_age_p90_ratio": stats.ratio(
                ours["backlog_age_seconds"]["p90"], other["backlog_age_seconds"]["p90"]
            ),
            "jobs_interrupted": {
                "framescale": ours["jobs_interrupted_by_scale_in"],
                name: other["jobs_interrupted_by_scale_in"],
            },
        }
    return {"trace": trace.summary(), "policies": figures, "framescale_versus": versus}, results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulate",
        description="Replay arrival traces through framescale's scaling policy, a static fleet and the "
        "reference's one-minute visible-only policy.",
    )
    parser.add_argument("traces", nargs="+", type=Path, help="trace JSON files (bench/traces/*.json)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for JSON and PNG output")
    parser.add_argument("--seed", type=int, default=0, help="seed of the group's choice of node on scale-in")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for path in args.traces:
        trace = load(path)
        figures, results = compare(trace, seed=args.seed)
        report[trace.name] = figures
        if not args.no_plots:
            from bench.plots import plot_simulation

            figures["plot"] = str(plot_simulation(trace, results, args.out))
        print(format_table(trace.name, figures["policies"]))
    destination = args.out / "simulation.json"
    destination.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {destination}")
    return 0


def format_table(name: str, policies: dict[str, dict[str, Any]]) -> str:
    def cell(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:.0f}{unit}"

    header = f"  {'policy':<28} {'drain':>9} {'p50 wait':>9} {'p90 wait':>9} {'node-h':>8} {'interrupted':>12}"
    rows = [f"{name}:", header]
    for policy, figures in policies.items():
        ages = figures["backlog_age_seconds"]
        drain = cell(figures["drain_seconds"], " s") if figures["unfinished"] == 0 else "unfinished"
        rows.append(
            f"  {policy:<28} {drain:>9} {cell(ages['p50']):>9} {cell(ages['p90']):>9} "
            f"{figures['node_hours']:>8} {figures['jobs_interrupted_by_scale_in']:>12}"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
