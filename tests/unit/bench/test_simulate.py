"""The capacity simulator's model: draining, start-up, scale-in, interruptions, policies."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench import traces
from bench.policies import ClusterView, FramescalePolicy, OneMinuteVisiblePolicy, StaticPolicy
from bench.reaction import reference_reaction
from bench.simulate import compare, simulate
from bench.traces import Cluster, Job, Trace


def make_trace(
    jobs: list[tuple[int, int]],
    *,
    horizon: int = 3600,
    startup: int = 0,
    per_node: int = 2,
    max_nodes: int = 5,
    visibility: int = 120,
    autoscaling: dict[str, int] | None = None,
) -> Trace:
    return Trace(
        name="test",
        description="",
        horizon_seconds=horizon,
        cluster=Cluster(
            node_startup_seconds=startup,
            jobs_per_node=per_node,
            min_nodes=0,
            max_nodes=max_nodes,
            visibility_timeout_seconds=visibility,
        ),
        jobs=tuple(Job(arrival, service) for arrival, service in jobs),
        autoscaling=autoscaling or {"targetBacklogPerReplica": per_node},
    )


@dataclass
class ScriptedPolicy:
    """Sets the desired capacity at given seconds; evaluated every second."""

    schedule: dict[int, int]
    protects_busy_nodes: bool
    name: str = "scripted"
    interval_seconds: int = 1
    seen: list[ClusterView] = field(default_factory=list)

    def decide(self, view: ClusterView) -> int:
        self.seen.append(view)
        return self.schedule.get(view.now, view.desired)


# ---------------------------------------------------------------- draining


@pytest.mark.parametrize(("count", "nodes", "per_node", "service"), [(1000, 5, 2, 30), (7, 2, 2, 10), (10, 1, 3, 5)])
def test_a_static_fleet_drains_a_burst_in_waves(count: int, nodes: int, per_node: int, service: int) -> None:
    trace = make_trace([(0, service)] * count, per_node=per_node, max_nodes=nodes)
    result = simulate(trace, StaticPolicy(nodes), initial_nodes=nodes)
    figures = result.metrics()
    waves = math.ceil(count / (nodes * per_node))
    assert figures["completed"] == count
    assert figures["drain_seconds"] == waves * service
    assert figures["node_hours"] == pytest.approx(nodes * trace.horizon_seconds / 3600, abs=0.01)
    assert figures["jobs_interrupted_by_scale_in"] == 0


def test_backlog_age_percentiles_of_the_burst_follow_the_waves() -> None:
    # 1,000 jobs, 10 slots, 30 s each: wave k (10 jobs) waits 30 k seconds.
    trace = make_trace([(0, 30)] * 1000, max_nodes=5)
    ages = simulate(trace, StaticPolicy(5), initial_nodes=5).metrics()["backlog_age_seconds"]
    assert ages["p50"] == pytest.approx(1485.0)  # between the 500th (1470 s) and 501st (1500 s) job
    assert ages["max"] == pytest.approx(2970.0)


def test_a_job_waits_for_its_node_to_start() -> None:
    trace = make_trace([(0, 40)], startup=120)
    result = simulate(trace, ScriptedPolicy({0: 1}, protects_busy_nodes=True))
    job = result.jobs[0]
    assert (job.start, job.end) == (120, 160)
    assert result.series.nodes[0] == 1  # billed while it starts


def test_unfinished_jobs_are_reported_not_drained() -> None:
    trace = make_trace([(0, 100)] * 3, horizon=150)
    figures = simulate(trace, StaticPolicy(1), initial_nodes=1).metrics()
    assert figures["unfinished"] == 1
    assert figures["drain_seconds"] is None


# ---------------------------------------------------------------- scale-in


def test_scale_in_without_protection_interrupts_running_jobs_and_they_run_again() -> None:
    trace = make_trace([(0, 100)] * 4, visibility=120)
    policy = ScriptedPolicy({0: 2, 10: 0, 200: 2}, protects_busy_nodes=False)
    result = simulate(trace, policy)
    figures = result.metrics()
    assert figures["jobs_interrupted_by_scale_in"] == 4
    assert figures["jobs_interrupted_at_least_once"] == 4
    assert figures["lost_work_node_hours"] == pytest.approx(4 * 10 / 3600, abs=1e-3)
    # Until the visibility timeout ends, the interrupted messages are in flight, not visible.
    assert (result.series.visible[50], result.series.in_flight[50]) == (0, 4)
    assert (result.series.visible[150], result.series.in_flight[150]) == (4, 0)
    assert all(job.end == 300 and job.interruptions == 1 for job in result.jobs)


def test_scale_in_with_protection_waits_for_busy_nodes_to_finish() -> None:
    trace = make_trace([(0, 100)] * 4)
    result = simulate(trace, ScriptedPolicy({0: 2, 10: 0}, protects_busy_nodes=True))
    figures = result.metrics()
    assert figures["jobs_interrupted_by_scale_in"] == 0
    assert all(job.end == 100 for job in result.jobs)
    assert result.series.nodes[99] == 2
    assert result.series.nodes[100] == 0


def test_scale_in_removes_starting_nodes_before_busy_ones() -> None:
    # Two busy nodes; a third launched at 5 s is still starting when the capacity drops back
    # to two at 6 s, so it is the one removed, even without protection.
    trace = make_trace([(0, 100)] * 4, startup=30)
    result = simulate(trace, ScriptedPolicy({5: 3, 6: 2}, protects_busy_nodes=False), initial_nodes=2)
    assert result.series.nodes[5] == 3
    assert result.series.nodes[6] == 2
    assert result.metrics()["jobs_interrupted_by_scale_in"] == 0
    assert all(job.end == 100 for job in result.jobs)


def test_the_policy_sees_in_flight_messages_and_busy_nodes() -> None:
    trace = make_trace([(0, 100)] * 3)
    policy = ScriptedPolicy({0: 2}, protects_busy_nodes=True)
    simulate(trace, policy)
    view = policy.seen[50]
    assert (view.visible, view.in_flight, view.desired, view.nodes, view.busy_nodes) == (0, 3, 2, 2, 2)


# ---------------------------------------------------------------- the policies


def test_framescale_policy_scales_from_zero_straight_to_the_backlog() -> None:
    policy = FramescalePolicy({"targetBacklogPerReplica": 2}, group_min=0, group_max=5)
    assert policy.interval_seconds == 15  # the operator's default poll interval
    assert policy.decide(ClusterView(now=0, visible=7, in_flight=0, desired=0, nodes=0, busy_nodes=0)) == 4


def test_framescale_policy_keeps_its_scale_out_cooldown_between_calls() -> None:
    policy = FramescalePolicy({"targetBacklogPerReplica": 2, "scaleOutCooldownSeconds": 60}, group_min=0, group_max=10)
    assert policy.decide(ClusterView(now=0, visible=4, in_flight=0, desired=0, nodes=0, busy_nodes=0)) == 2
    busy = ClusterView(now=15, visible=6, in_flight=4, desired=2, nodes=2, busy_nodes=2)
    assert policy.decide(busy) == 2  # cooling down after the scale-out at 0 s
    assert policy.decide(ClusterView(now=60, visible=6, in_flight=4, desired=2, nodes=2, busy_nodes=2)) == 5


def test_framescale_policy_never_scales_in_below_busy_nodes() -> None:
    policy = FramescalePolicy({"targetBacklogPerReplica": 2}, group_min=0, group_max=10)
    policy.decide(ClusterView(now=0, visible=6, in_flight=0, desired=0, nodes=0, busy_nodes=0))
    # Much later: three jobs in flight on three nodes; the backlog alone would allow two.
    late = ClusterView(now=3600, visible=0, in_flight=3, desired=3, nodes=3, busy_nodes=3)
    assert policy.decide(late) == 3


def test_visible_only_policy_acts_one_period_after_the_datapoint() -> None:
    policy = OneMinuteVisiblePolicy(target_per_node=2, min_nodes=0, max_nodes=5)
    assert policy.decide(ClusterView(now=0, visible=5, in_flight=0, desired=0, nodes=0, busy_nodes=0)) == 0
    assert policy.decide(ClusterView(now=60, visible=5, in_flight=0, desired=0, nodes=0, busy_nodes=0)) == 3


def test_visible_only_policy_scales_in_while_jobs_are_in_flight() -> None:
    policy = OneMinuteVisiblePolicy(target_per_node=2, min_nodes=0, max_nodes=5, scale_in_datapoints=3)
    decisions = [
        policy.decide(ClusterView(now=60 * k, visible=0, in_flight=6, desired=3, nodes=3, busy_nodes=3))
        for k in range(4)
    ]
    assert decisions == [3, 3, 3, 0]


def test_reference_reaction_is_the_rest_of_the_minute_plus_one_period() -> None:
    assert reference_reaction([0.5, 0.25]) == [90.0, 105.0]


def test_on_steady_traffic_the_visible_only_policy_interrupts_jobs_and_framescale_does_not() -> None:
    # A job every 30 s, 60 s each: the workers keep up, so the queue's visible count is
    # nearly always zero while two or three jobs run.
    trace = make_trace([(30 * k, 60) for k in range(120)], horizon=2 * 3600, startup=60)
    figures, _ = compare(trace)
    policies = figures["policies"]
    assert policies["framescale"]["jobs_interrupted_by_scale_in"] == 0
    assert policies["framescale"]["completed"] == 120
    assert policies["one-minute-visible"]["jobs_interrupted_by_scale_in"] > 0
    assert set(figures["framescale_versus"]) == {"static-5", "one-minute-visible", "one-minute-visible-15min-in"}


# ---------------------------------------------------------------- traces


def test_a_trace_survives_saving_and_loading(tmp_path: Path) -> None:
    trace = make_trace([(5, 10), (0, 3)], autoscaling={"targetBacklogPerReplica": 3, "maxReplicas": 4})
    loaded = traces.load(traces.save(trace, tmp_path / "t.json"))
    assert loaded.jobs == (Job(0, 3), Job(5, 10))  # sorted by arrival
    assert loaded.cluster == trace.cluster
    assert loaded.autoscaling == trace.autoscaling


def test_the_shipped_traces_are_what_their_generators_make() -> None:
    for name, make in traces.SHIPPED.items():
        shipped = traces.load(traces.TRACES_DIR / f"{name}.json")
        assert shipped.jobs == tuple(sorted(make().jobs, key=lambda job: job.arrival)), name


def test_the_burst_trace_is_the_published_scenario() -> None:
    burst = traces.load(traces.TRACES_DIR / "burst-1000.json")
    assert len(burst.jobs) == 1000
    assert {(job.arrival, job.service) for job in burst.jobs} == {(0, 30)}
    assert (burst.cluster.jobs_per_node, burst.cluster.max_nodes) == (2, 5)
