"""The racing scale-in scenario: bursts, trickles and quiet spells against one pipeline, until
enough instances were scaled in; then the referee's counts and the reaction figures.

The load is random but seeded: a burst of messages (the group scales out), a trickle (a few
nodes busy, the rest idle: scale-in races the workers that take the next job 0-1.5 s after
finishing one), a quiet spell (everything drains, the group goes to its minimum).
"""

from __future__ import annotations

import json
import random
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


@dataclass
class ScenarioResult:
    scale_ins: int
    causes: dict[str, int]
    jobs: int
    messages: int
    seconds: float
    scale_out_reaction: dict[str, Any]
    scale_in_reaction: dict[str, Any]
    violations: dict[str, list[Any]]
    handed_back: int
    lost_to_dead_receivers: int
    drain_answers: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale_ins": self.scale_ins,
            "termination_causes": self.causes,
            "jobs_started": self.jobs,
            "messages": self.messages,
            "seconds": round(self.seconds, 1),
            "backlog_to_capacity_seconds": {"scale_out": self.scale_out_reaction, "scale_in": self.scale_in_reaction},
            "violations": {key: len(value) for key, value in self.violations.items()},
            "messages_handed_back_after_the_fence": self.handed_back,
            "messages_received_by_a_dying_node": self.lost_to_dead_receivers,
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


def run(
    stack: harness.Stack,
    size: ScenarioSize,
    *,
    seed: int = 11,
    log: Any = print,
    group_spec: harness.GroupSpec | None = None,
) -> ScenarioResult:
    """One pipeline over a fresh queue and group, the operator already running in ``stack``."""
    rng = random.Random(seed)
    suffix = uuid.uuid4().hex[:6]
    namespace, name = f"race-{suffix}", "detector"
    queue_url = harness.make_queue(f"race-{suffix}")
    group = harness.make_group(f"race-{suffix}", group_spec or harness.GroupSpec(max_size=size.max_replicas))
    stack.fleet.manage(group, namespace=namespace, pipeline=name, queue_url=queue_url)
    stack.pipeline(namespace=namespace, name=name, queue_url=queue_url, group=group, **pipeline_settings(size))
    ledger = stack.ledger
    bursts: list[float] = []  # send times of bursts onto an empty backlog
    quiet_from: list[float] = []  # moments every job so far was done
    started = time.monotonic()
    sent = 0

    def scale_ins() -> int:
        return len(ledger.scale_ins(group))

    while scale_ins() < size.scale_ins and time.monotonic() - started < size.time_limit:
        kind = rng.choices(["burst", "trickle", "quiet"], weights=list(size.weights))[0]
        if kind == "burst":
            most = size.max_replicas * size.target_backlog_per_replica
            count = rng.randint(size.target_backlog_per_replica * 2, most)
            if ledger.all_done():
                bursts.append(time.monotonic())
            harness.send_jobs(queue_url, ledger, count, "burst")
            sent += count
            time.sleep(rng.uniform(1.0, 3.0))
        elif kind == "trickle":
            for _ in range(rng.randint(3, 8)):
                count = rng.randint(1, 2)
                harness.send_jobs(queue_url, ledger, count, "trickle")
                sent += count
                time.sleep(rng.uniform(0.3, 1.2))
        else:
            deadline = time.monotonic() + 20
            while not ledger.all_done() and time.monotonic() < deadline:
                time.sleep(0.1)
            if ledger.all_done():
                quiet_from.append(time.monotonic())
            time.sleep(rng.uniform(1.0, 3.0))
        log(f"  t={time.monotonic() - started:5.0f}s  {kind:7s} sent={sent} scale-ins={scale_ins()}")
    # Let every job finish and the group come back to its minimum.
    deadline = time.monotonic() + 60
    while not ledger.all_done() and time.monotonic() < deadline:
        time.sleep(0.2)
    quiet_from.append(time.monotonic())
    deadline = time.monotonic() + 30
    while harness.group_view(group)["DesiredCapacity"] > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    seconds = time.monotonic() - started
    time.sleep(1.0)  # stragglers: a termination under way
    return summarize(stack, group, sent=sent, seconds=seconds, bursts=bursts, quiet_from=quiet_from)


def summarize(
    stack: harness.Stack, group: str, *, sent: int, seconds: float, bursts: list[float], quiet_from: list[float]
) -> ScenarioResult:
    ledger = stack.ledger
    terminations = ledger.scale_ins(group)
    changes = [change for change in ledger.capacity if change.group == group]
    causes: dict[str, int] = {}
    for termination in terminations:
        causes[termination.cause] = causes.get(termination.cause, 0) + 1
    out_reaction = _reaction(bursts, [c.at for c in changes if c.after > c.before])
    in_reaction = _reaction(quiet_from, [c.at for c in changes if c.after < c.before])
    answers: dict[str, int] = {}
    for node in list(stack.fleet.nodes.values()):
        for _, verdict, in_hand in node.drain_answers:
            key = verdict if verdict != "drained" or in_hand == 0 else "drained-with-a-job"
            answers[key] = answers.get(key, 0) + 1
    with ledger.lock:
        jobs = len(ledger.jobs)
    return ScenarioResult(
        scale_ins=len(terminations),
        causes=causes,
        jobs=jobs,
        messages=sent,
        seconds=seconds,
        scale_out_reaction=harness.spread(out_reaction),
        scale_in_reaction=harness.spread(in_reaction),
        violations=ledger.violations({group}),
        handed_back=ledger.handed_back,
        lost_to_dead_receivers=ledger.lost_to_dead_receivers,
        drain_answers=answers,
    )


def _reaction(starts: list[float], changes: list[float], within: float = 30.0) -> list[float]:
    """For each start, seconds to the first change after it (none within ``within``: left out)."""
    out = []
    for start in starts:
        later = [at for at in changes if at >= start]
        if later and later[0] - start <= within:
            out.append(later[0] - start)
    return out


def write(result: ScenarioResult, path: Path, **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, **result.as_dict()}, indent=2) + "\n")
