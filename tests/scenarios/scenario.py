"""The racing scale-in scenario: bursts, trickles and quiet spells against one pipeline, until
enough instances were scaled in; then the referee's counts and the reaction figures.

The load is random but seeded: a burst of messages (the group scales out), a trickle (a few
nodes busy, the rest idle: scale-in races the workers that take the next job 0-1.5 s after
finishing one), a quiet spell (everything drains, the group goes to its minimum).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.scenarios import harness


@dataclass(frozen=True)
class ScenarioSize:
    scale_ins: int  # at least this many instances scaled in
    time_limit: float  # seconds of load before giving up
    max_replicas: int = 10
    target_backlog_per_replica: int = 1
    weights: tuple[int, int, int] = (5, 2, 3)  # burst, trickle, quiet
    pipelines: int = 2  # each with its own group, queue and load, all at once


@dataclass
class ScenarioResult:
    scale_ins: int
    causes: dict[str, int]  # the call each instance died in
    hold_causes: dict[str, int]  # with the lifecycle hook: the call that put each one on hold
    jobs: int
    messages: int
    seconds: float
    scale_out_reaction: dict[str, Any]
    scale_in_reaction: dict[str, Any]
    violations: dict[str, list[Any]]
    handed_back: int
    nodes: int
    drain_answers: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale_ins": self.scale_ins,
            "termination_causes": self.causes,
            "hold_causes": self.hold_causes,
            "jobs_started": self.jobs,
            "messages": self.messages,
            "seconds": round(self.seconds, 1),
            "backlog_to_capacity_seconds": {"scale_out": self.scale_out_reaction, "scale_in": self.scale_in_reaction},
            "violations": {key: len(value) for key, value in self.violations.items()},
            "messages_handed_back_after_the_fence": self.handed_back,
            "nodes_started": self.nodes,
            "drain_answers": self.drain_answers,
        }


def pipeline_settings(size: ScenarioSize) -> dict[str, Any]:
    """Fast settings: no cooldowns, a 1 s poll and a short stabilization window where the
    operator has one (the keys it does not know are left out)."""
    return {
        "minReplicas": 0,
        "maxReplicas": size.max_replicas,
        "targetBacklogPerReplica": size.target_backlog_per_replica,
        "scaleOutCooldownSeconds": 0,
        "scaleInCooldownSeconds": 0,
        "pollIntervalSeconds": 1,
        "scaleInStabilizationSeconds": 1,
        "scaleInStabilizationWindowSeconds": 1,
        "stabilizationWindowSeconds": 1,
    }


@dataclass
class _Lane:
    """One pipeline of the scenario and the load it gets."""

    name: str
    queue_url: str
    group: str
    rng: random.Random
    sent: int = 0


def run(
    stack: harness.Stack,
    size: ScenarioSize,
    *,
    seed: int = 11,
    log: Any = print,
    group_spec: harness.GroupSpec | None = None,
) -> ScenarioResult:
    """``size.pipelines`` pipelines, each over a fresh queue and group and loaded by its own thread,
    until their groups together scaled in ``size.scale_ins`` instances (the operator already runs
    in ``stack``)."""
    lanes = []
    for number in range(size.pipelines):
        suffix = uuid.uuid4().hex[:6]
        namespace, name = f"race-{suffix}", "detector"
        queue_url = harness.make_queue(f"race-{suffix}")
        group = harness.make_group(f"race-{suffix}", group_spec or harness.GroupSpec(max_size=size.max_replicas))
        stack.fleet.manage(group, namespace=namespace, pipeline=name, queue_url=queue_url)
        stack.pipeline(namespace=namespace, name=name, queue_url=queue_url, group=group, **pipeline_settings(size))
        lanes.append(_Lane(name=f"lane{number}", queue_url=queue_url, group=group, rng=random.Random(seed + number)))
    ledger = stack.ledger
    groups = {lane.group for lane in lanes}
    bursts: list[tuple[str, float]] = []  # (group, send time) of bursts onto an empty backlog
    quiet_from: list[tuple[str, float]] = []  # (group, moment every job of its lane so far was done)
    started = time.monotonic()

    def scale_ins() -> int:
        return sum(len(ledger.scale_ins(group)) for group in groups)

    def going() -> bool:
        return scale_ins() < size.scale_ins and time.monotonic() - started < size.time_limit

    def drive(lane: _Lane) -> None:
        rng, prefix = lane.rng, f"{lane.name}-"
        while going():
            kind = rng.choices(["burst", "trickle", "quiet"], weights=list(size.weights))[0]
            if kind == "burst":
                most = size.max_replicas * size.target_backlog_per_replica
                count = rng.randint(size.target_backlog_per_replica * 2, most)
                if ledger.all_done(prefix):
                    bursts.append((lane.group, time.monotonic()))
                harness.send_jobs(lane.queue_url, ledger, count, f"{prefix}burst")
                lane.sent += count
                time.sleep(rng.uniform(1.0, 3.0))
            elif kind == "trickle":
                for _ in range(rng.randint(3, 8)):
                    count = rng.randint(1, 2)
                    harness.send_jobs(lane.queue_url, ledger, count, f"{prefix}trickle")
                    lane.sent += count
                    time.sleep(rng.uniform(0.3, 1.2))
            else:
                deadline = time.monotonic() + 20
                while not ledger.all_done(prefix) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if ledger.all_done(prefix):
                    quiet_from.append((lane.group, time.monotonic()))
                time.sleep(rng.uniform(1.0, 3.0))
            log(
                f"  t={time.monotonic() - started:5.0f}s {lane.name} {kind:7s} sent={lane.sent} scale-ins={scale_ins()}"
            )

    threads = [threading.Thread(target=drive, args=(lane,), name=lane.name, daemon=True) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Let every job finish and the groups come back to their minimum.
    deadline = time.monotonic() + 60
    while not ledger.all_done() and time.monotonic() < deadline:
        time.sleep(0.2)
    quiet_from.extend((group, time.monotonic()) for group in groups)
    deadline = time.monotonic() + 30
    while any(harness.group_view(g)["DesiredCapacity"] > 0 for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    seconds = time.monotonic() - started
    time.sleep(1.0)  # stragglers: a termination under way
    sent = sum(lane.sent for lane in lanes)
    return summarize(stack, groups, sent=sent, seconds=seconds, bursts=bursts, quiet_from=quiet_from)


def summarize(
    stack: harness.Stack,
    groups: set[str],
    *,
    sent: int,
    seconds: float,
    bursts: list[tuple[str, float]],
    quiet_from: list[tuple[str, float]],
) -> ScenarioResult:
    ledger = stack.ledger
    terminations = [t for group in sorted(groups) for t in ledger.scale_ins(group)]
    with ledger.lock:
        changes = sorted((c for c in ledger.capacity if c.group in groups), key=lambda c: c.at)
    causes: dict[str, int] = {}
    for termination in terminations:
        causes[termination.cause] = causes.get(termination.cause, 0) + 1
    with ledger.lock:
        holds = [h for h in ledger.holds if h.group in groups]
    hold_causes: dict[str, int] = {}
    for hold in holds:
        hold_causes[hold.cause] = hold_causes.get(hold.cause, 0) + 1
    out_reaction = _reaction(bursts, [(c.group, c.at) for c in changes if c.after > c.before])
    in_reaction = _reaction(quiet_from, [(c.group, c.at) for c in changes if c.after < c.before])
    answers: dict[str, int] = {}
    nodes = [node for node in list(stack.fleet.nodes.values()) if node.group in groups]
    for node in nodes:
        for _, verdict, in_hand in node.drain_answers():
            key = verdict if verdict != "drained" or in_hand == 0 else "drained-with-a-job"
            answers[key] = answers.get(key, 0) + 1
    jobs = sum(1 for job in ledger.jobs() if job.node in {node.node_name for node in nodes})
    return ScenarioResult(
        scale_ins=len(terminations),
        causes=causes,
        hold_causes=hold_causes,
        jobs=jobs,
        messages=sent,
        seconds=seconds,
        scale_out_reaction=harness.spread(out_reaction),
        scale_in_reaction=harness.spread(in_reaction),
        violations=ledger.violations(groups),
        handed_back=sum(node.fenced() for node in nodes),
        nodes=len(nodes),
        drain_answers=answers,
    )


def _reaction(starts: list[tuple[str, float]], changes: list[tuple[str, float]], within: float = 30.0) -> list[float]:
    """For each (group, start), seconds to that group's first change after it (none within
    ``within``: left out)."""
    out = []
    for group, start in starts:
        later = sorted(at for changed, at in changes if changed == group and at >= start)
        if later and later[0] - start <= within:
            out.append(later[0] - start)
    return out


def write(result: ScenarioResult, path: Path, **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, **result.as_dict()}, indent=2) + "\n")
