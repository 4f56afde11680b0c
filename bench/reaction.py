"""Scaling reaction: how long from a backlog appearing to the desired capacity changing.

framescale (measured): the operator's own pass, ``reconcile.reconcile`` with the real
``AwsActuator``, scheduled by its own ``PipelineClock`` at the kopf timer's tick and the
default poll interval, against an SQS queue and an EC2 Auto Scaling group in moto. Only kopf
and the Kubernetes API are left out (no busy Leases or Nodes are involved when a group
scales out from zero). A message is sent at a known phase of the poll cycle; the clock
stops when a separate observer sees DesiredCapacity change on the group. Phases are spread
evenly over the poll interval, in shuffled order.

The reference (modelled, not measurable here: moto publishes no CloudWatch metrics): the
visible-message metric gets a datapoint once a minute and the alarm acts one evaluation
period after it, as ``bench.policies.OneMinuteVisiblePolicy`` (the simulator's model) does,
for arrivals at the same spread of phases over its minute. Publication delays of real SQS
metrics are not added, which favours the reference.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench import stats
from bench.policies import ClusterView, OneMinuteVisiblePolicy
from framescale import aws
from framescale.local.stack import drain

GROUP_MAX = 5
OBSERVE_SECONDS = 0.1


class _NoNodes:
    """The reconcile pass's Node and Lease APIs: no Kubernetes here, no busy node to annotate and
    no worker Lease to admit or drain (every instance is workerless, so a scale-in needs no
    handshake)."""

    def patch_node(self, name: str, patch: dict[str, Any]) -> None:
        return None

    def patch_lease(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        return None


@dataclass
class _OperatorLoop:
    """The body of the operator's kopf timer for one pipeline, run in a thread."""

    spec: dict[str, Any]
    tick_seconds: float
    poll_seconds: float
    passes: list[float] = field(default_factory=list)  # perf_counter of each pass's start
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from framescale_operator import reconcile, scheduling
        from framescale_operator.aws_actuators import AwsActuator
        from framescale_operator.settings import OperatorSettings

        defaults = OperatorSettings.model_fields  # the operator's own defaults, as kopf runs it

        actuator = AwsActuator()
        clock = scheduling.PipelineClock()
        ref = reconcile.PipelineRef(namespace="bench", name="reaction")
        status: dict[str, Any] = {}
        try:
            while not self.stop.is_set():
                monotonic, now = time.monotonic(), datetime.now(UTC)
                due = clock.due(
                    monotonic=monotonic,
                    now=now,
                    poll_interval=self.poll_seconds,
                    resync_interval=defaults["protection_resync_seconds"].default,
                    generation=1,
                    lease_epoch=0,
                )
                if due is not None:
                    self.passes.append(time.perf_counter())
                    snapshot = reconcile.Snapshot(
                        spec=self.spec, status=status, generation=1, leases=[], nodes={}, now=now
                    )
                    outcome = reconcile.reconcile(
                        ref, snapshot, aws=actuator, nodes_api=_NoNodes(), leases_api=_NoNodes(), scale=due.scale
                    )
                    for key, value in outcome.status_patch.items():
                        if value is None:
                            status.pop(key, None)
                        else:
                            status[key] = value
                    clock.ran(
                        due,
                        monotonic=monotonic,
                        generation=1,
                        lease_epoch=0,
                        next_expiry=outcome.next_expiry(),
                        scaling_retry=bool(outcome.scaling_failure and outcome.scaling_failure.retryable),
                        protection_retry=bool(outcome.protection_failure and outcome.protection_failure.retryable),
                        base_delay=defaults["temporary_error_delay_seconds"].default,
                    )
                self.stop.wait(self.tick_seconds)
        finally:
            actuator.close()


def _make_group(name: str) -> None:
    ec2, autoscaling = aws.client("ec2"), aws.client("autoscaling")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    ec2.create_launch_template(
        LaunchTemplateName=f"lt-{name}",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"},
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": f"lt-{name}"},
        MinSize=0,
        MaxSize=GROUP_MAX,
        DesiredCapacity=0,
        VPCZoneIdentifier=subnet,
    )


def _desired(autoscaling: Any, name: str) -> int:
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return int(groups[0]["DesiredCapacity"])


def _phases(trials: int, period: float, seed: int) -> list[float]:
    """Evenly spread offsets within one period (the middle of each of ``trials`` slices), shuffled."""
    phases = [(number + 0.5) / trials * period for number in range(trials)]
    random.Random(seed).shuffle(phases)
    return phases


def reference_reaction(phases_fraction: list[float], metric_period: int = 60) -> list[float]:
    """Seconds until the reference model's desired capacity changes, for arrivals at these phases."""
    out = []
    for fraction in phases_fraction:
        policy = OneMinuteVisiblePolicy(target_per_node=1, min_nodes=0, max_nodes=GROUP_MAX)
        arrival = fraction * metric_period
        tick = 0
        while True:
            visible = 1 if tick >= arrival else 0
            view = ClusterView(now=tick, visible=visible, in_flight=0, desired=0, nodes=0, busy_nodes=0)
            if policy.decide(view) > 0:
                out.append(tick - arrival)
                break
            tick += metric_period
    return out


def run(*, trials: int, seed: int = 5, log: Any = print) -> dict[str, Any]:
    from framescale_operator.handlers import TICK_SECONDS
    from framescale_operator.settings import OperatorSettings

    poll = float(OperatorSettings.model_fields["default_poll_interval_seconds"].default)
    sqs, autoscaling = aws.client("sqs"), aws.client("autoscaling")
    group = "bench-reaction"
    _make_group(group)
    queue_url = sqs.create_queue(QueueName="bench-reaction")["QueueUrl"]
    spec = {
        "queueUrl": queue_url,
        "nodeGroup": {"autoScalingGroupName": group},
        "autoscaling": {"minReplicas": 0, "maxReplicas": GROUP_MAX, "targetBacklogPerReplica": 2},
    }
    loop = _OperatorLoop(spec=spec, tick_seconds=TICK_SECONDS, poll_seconds=poll)
    thread = threading.Thread(target=loop.run, name="operator-loop", daemon=True)
    thread.start()
    fractions = _phases(trials, 1.0, seed)
    measured = []
    try:
        for number, fraction in enumerate(fractions):
            # Send at the trial's phase after the latest pass (or the next one, if that moment is gone).
            while not loop.passes or loop.passes[-1] + fraction * poll < time.perf_counter() + 0.2:
                time.sleep(0.05)
            time.sleep(max(0.0, loop.passes[-1] + fraction * poll - time.perf_counter()))
            sent = time.perf_counter()
            sqs.send_message(QueueUrl=queue_url, MessageBody='{"video": "s3://bench/reaction.mp4"}')
            deadline = sent + 4 * poll
            while _desired(autoscaling, group) == 0:
                if time.perf_counter() > deadline:
                    raise TimeoutError("the operator's pass did not change the desired capacity")
                time.sleep(OBSERVE_SECONDS)
            seconds = time.perf_counter() - sent
            measured.append(seconds)
            log(f"  reaction trial {number + 1}/{trials}: sent {fraction * poll:.1f} s into the poll, {seconds:.2f} s")
            # Back to an empty queue and zero nodes for the next trial.
            drain(sqs, queue_url)
            autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=0, HonorCooldown=False)
    finally:
        loop.stop.set()
        thread.join(timeout=30)
    reference = reference_reaction(fractions)
    return {
        "framescale": {
            "seconds": stats.spread(measured),
            "trials": [round(value, 3) for value in measured],
            "poll_interval_seconds": poll,
            "tick_seconds": TICK_SECONDS,
            "how": "measured: operator reconcile pass + AwsActuator against moto (SQS, Auto Scaling)",
        },
        "reference": {
            "seconds": stats.spread(reference),
            "metric_period_seconds": 60,
            "alarm_evaluation_periods_before_action": 1,
            "how": "modelled: one-minute datapoint of visible messages; the alarm acts one period later",
        },
        "reference_over_framescale": round(stats.median(reference) / stats.median(measured), 2),
    }


def run_over_the_real_stack(*, scale_ins: int, time_limit: float, log: Any = print) -> dict[str, Any]:
    """The racing scale-in scenario (tests/scenarios): the operator as a process, moto and the
    Kubernetes API emulator over HTTP, the worker's own fake node on every instance. Reaction is
    measured from a burst onto an empty backlog to the group's first capacity increase, and from
    the moment every job was done to its first decrease (which includes the stabilization window
    and the drain handshake); the referee's violation counts come with it."""
    import tempfile
    from pathlib import Path

    from tests.scenarios import harness, scenario

    if not harness.operator_drains_before_terminating():
        return {"skipped": "the operator has no drain handshake yet (framescale_operator.plan)"}
    size = scenario.ScenarioSize(scale_ins=scale_ins, time_limit=time_limit)
    with tempfile.TemporaryDirectory(prefix="bench-race-") as workdir, harness.local_stack(Path(workdir)) as stack:
        stack.operator()
        result = scenario.run(stack, size, log=log)
    figures = result.as_dict()
    figures["how"] = (
        "measured: operator process + moto server + Kubernetes API emulator, fake worker nodes on the worker's "
        f"Lease keeper and job fence; {size.pipelines} pipelines at once, poll 1 s, no cooldowns, "
        "1 s scale-in stabilization"
    )
    return figures
