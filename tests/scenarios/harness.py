"""The real local stack for racing scenarios, with a referee that counts what must never happen.

What runs, and how real each part is:

* **AWS**: moto in server mode over real HTTP, in its own process, with taps
  (tests.scenarios.moto_tap) that report the exact moment an EC2 instance dies to the referee and
  wait for it: ``Instance.terminate`` is tapped, whatever asked for it (the operator's
  ``TerminateInstanceInAutoScalingGroup``, a ``SetDesiredCapacity`` decrease, a completed
  lifecycle action, a test terminating "from outside"), with who asked (each operator signs with
  its own access key id; ``MotoTapped.writes_by`` lists their writes). The operator and every fake
  node talk to it over HTTP through boto3, as they would to AWS. The lifecycle-hook simulation of
  ``framescale.local.moto_extensions`` is installed when it exists.
* **Kubernetes**: the HTTP API emulator of tests/integration/operator (kmock plus what kopf needs),
  in its own process.
* **The operator**: ``python -m framescale_operator`` as a child process (``OperatorRun``).
* **Nodes** (``Fleet``): one fake node per instance of the group, started when moto launches the
  instance (a Node object with the instance's providerID, then the worker), killed without a
  word when moto terminates it (the worker's threads stop at their next step, nothing is handed
  back, its Lease just stops being renewed), and its Node deleted as the node controller would.
  The fake node is the worker's own (``framescale.local.fake_node.FakeNode``): the worker's Lease
  keeper (contract v2 of ``framescale.busy_lease``) and job-start fence (``JobGate``), with jobs
  that sleep.

The referee (``Ledger``) records every job (message, node, start, end) and every termination.
A violation is: an instance terminated while a job was in hand on it; an instance that AWS chose
(terminated by a ``SetDesiredCapacity``/``UpdateAutoScalingGroup`` decrease rather than by an
explicit termination); a message completed twice, or never.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from framescale import aws, busy_lease, names
from framescale.local.processes import free_port, http_ok
from tests.integration.operator.conftest import KubeClient, _kubeconfig

REPO_ROOT = Path(__file__).resolve().parents[2]

# Causes of a termination, as the tap names them (the outermost AWS call it happened in).
BY_TERMINATE_IN_GROUP = "TerminateInstanceInAutoScalingGroup"  # a chosen instance
BY_DESIRED_CAPACITY = "SetDesiredCapacity"  # AWS chose the victim
BY_GROUP_UPDATE = "UpdateAutoScalingGroup"  # AWS chose the victim too
BY_LIFECYCLE_COMPLETION = "CompleteLifecycleAction"
BY_EC2 = "TerminateInstances"  # someone terminated the instance through EC2 directly
BY_HOOK_TIMEOUT = "LifecycleTimeout"  # a held termination whose hook timed out
AWS_CHOSE = (BY_DESIRED_CAPACITY, BY_GROUP_UPDATE)


_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client(service: str) -> Any:
    """One boto3 client per service and endpoint (thread-safe, shared by every fake node: making
    one costs a tenth of a second of CPU), with a pool wide enough for every slot's long poll."""
    key = (service, os.environ.get("AWS_ENDPOINT_URL", ""))
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = aws.client(service, config=aws.client_config(max_pool_connections=128, max_attempts=3))
        return _CLIENTS[key]


# ---------------------------------------------------------------------------- the referee


@dataclass
class Job:
    job_id: str
    message_id: str
    node: str
    started: float  # monotonic
    ended: float | None = None
    # running | done | killed (cut by the machine's death, or "done" by a machine already dead)
    # | handed_back (a clean stop) | failed (a delete or hand-back that did not go through)
    outcome: str = "running"


@dataclass(frozen=True)
class Termination:
    instance_id: str
    group: str | None
    cause: str
    at: float  # monotonic
    jobs_in_hand: tuple[str, ...]  # the jobs the node had in hand when it died
    caller: str = ""  # the access key id of the request it happened in


@dataclass(frozen=True)
class Hold:
    """An instance put in Terminating:Wait by the lifecycle hook (the simulation's), and why."""

    instance_id: str
    group: str | None
    cause: str
    at: float
    caller: str = ""


@dataclass(frozen=True)
class CapacityChange:
    group: str
    before: int
    after: int
    at: float  # monotonic


class Ledger:
    """Every job (read from the nodes' own records), termination and capacity change, with the
    checks that must come out zero."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nodes: list[Node] = []
        self.terminations: list[Termination] = []
        self.holds: list[Hold] = []
        self.capacity: list[CapacityChange] = []
        self.sent: dict[str, float] = {}  # job id -> monotonic send time
        self.message_jobs: dict[str, str] = {}  # SQS message id -> job id

    def register(self, node: Node) -> None:
        with self.lock:
            self.nodes.append(node)

    def send(self, job_id: str, message_id: str) -> None:
        with self.lock:
            self.sent[job_id] = time.monotonic()
            self.message_jobs[message_id] = job_id

    def terminated(self, termination: Termination) -> None:
        with self.lock:
            self.terminations.append(termination)

    def held(self, hold: Hold) -> None:
        with self.lock:
            self.holds.append(hold)

    def capacity_changed(self, change: CapacityChange) -> None:
        with self.lock:
            self.capacity.append(change)

    def jobs(self) -> list[Job]:
        """Every job any node started, as its record says, judged against the node's death: a job
        still running, or "done", when or after its machine died was killed."""
        with self.lock:
            nodes, message_jobs = list(self.nodes), dict(self.message_jobs)
        out = []
        for node in nodes:
            for job in node.jobs():
                job.job_id = message_jobs.get(job.message_id, job.message_id)
                out.append(job)
        return out

    # The checks.
    def done_counts(self, jobs: list[Job] | None = None) -> dict[str, int]:
        with self.lock:
            counts = dict.fromkeys(self.sent, 0)
        for job in self.jobs() if jobs is None else jobs:
            if job.outcome == "done":
                counts[job.job_id] = counts.get(job.job_id, 0) + 1
        return counts

    def violations(self, groups: set[str] | None = None) -> dict[str, list[Any]]:
        """What must be empty: busy terminations, AWS-chosen victims, killed jobs, jobs done twice
        or not at all."""
        jobs = self.jobs()
        counts = self.done_counts(jobs)
        with self.lock:
            terminations = [t for t in self.terminations if groups is None or t.group in groups]
            holds = [h for h in self.holds if groups is None or h.group in groups]
        return {
            "terminated_with_a_job": [t for t in terminations if t.jobs_in_hand],
            # Chosen by AWS: terminated at once, or put on hold by the hook, in a capacity decrease.
            "aws_chose_the_victim": [t for t in [*terminations, *holds] if t.cause in AWS_CHOSE],
            "jobs_killed": [job.job_id for job in jobs if job.outcome == "killed"],
            "done_more_than_once": [
                f"{job_id}: "
                + "; ".join(
                    f"{j.node} {j.started:.1f}-{j.ended or 0:.1f} {j.outcome}" for j in jobs if j.job_id == job_id
                )
                for job_id, count in sorted(counts.items())
                if count > 1
            ],
            "never_done": sorted(job for job, count in counts.items() if count == 0),
        }

    def scale_ins(self, group: str) -> list[Termination]:
        with self.lock:
            return [t for t in self.terminations if t.group == group]

    def all_done(self, prefix: str = "") -> bool:
        """Every message sent (whose job id starts with ``prefix``) was done at least once."""
        return all(count >= 1 for job, count in self.done_counts().items() if job.startswith(prefix))

    def dump(self, path: Path) -> None:
        """The whole record as JSON Lines, for reading a failure after the fact."""
        jobs = self.jobs()
        with self.lock, path.open("w") as out:
            for job in jobs:
                out.write(json.dumps({"kind": "job", **job.__dict__}) + "\n")
            for termination in self.terminations:
                out.write(json.dumps({"kind": "termination", **termination.__dict__}) + "\n")
            for change in self.capacity:
                out.write(json.dumps({"kind": "capacity", **change.__dict__}) + "\n")
            for node in self.nodes:
                for event in node.fake.events:
                    out.write(json.dumps({"kind": "node-event", **event}) + "\n")


# ---------------------------------------------------------------------------- AWS and Kubernetes


class Referee:
    """The HTTP endpoint moto's taps report to (tests.scenarios.moto_tap): each report is handled
    before moto goes on, so a node is killed at the very moment its instance dies."""

    def __init__(self) -> None:
        self.on_terminate: list[Callable[[str, str | None, str, str], None]] = []
        self.on_capacity: list[Callable[[str, int, int], None]] = []
        self.on_hold: list[Callable[[str, str | None, str, str], None]] = []
        referee = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                event = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/terminated":
                    for listener in list(referee.on_terminate):
                        listener(event["instance_id"], event.get("group"), event["cause"], event.get("caller", ""))
                elif self.path == "/held":
                    for listener in list(referee.on_hold):
                        listener(event["instance_id"], event.get("group"), event["cause"], event.get("caller", ""))
                elif self.path == "/capacity":
                    for listener in list(referee.on_capacity):
                        listener(event["group"], int(event["before"]), int(event["after"]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="referee", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Referee:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MotoTapped:
    """``python -m tests.scenarios.moto_tap``: moto's server with the referee's taps, in its own
    process (AWS requests then never wait on the test process)."""

    def __init__(self, referee: Referee, log_path: Path) -> None:
        self.port = free_port()
        self.region = "us-east-1"
        self.referee = referee
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def start(self) -> MotoTapped:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.scenarios.moto_tap",
                    "--port",
                    str(self.port),
                    "--referee",
                    self.referee.url,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, **self.client_env},
            )
        deadline = time.monotonic() + 60
        while not http_ok(f"{self.endpoint_url}/moto-api/data.json", timeout=2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        return self

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.endpoint_url}{path}", timeout=10) as response:
            return json.loads(response.read())

    @property
    def extensions(self) -> str | None:
        """The lifecycle-hook simulation installed in moto, if the local stack has one."""
        return self._get("/_tap/info").get("extensions")

    def writes_by(self, caller: str) -> list[str]:
        """The Auto Scaling and EC2 write actions signed with the access key id ``caller``."""
        return [action for who, action, _ in self._get("/_tap/calls")["calls"] if who == caller]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class KubeEmulatorProcess:
    """The Kubernetes API emulator (tests/integration/operator) in its own process."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> KubeEmulatorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.scenarios.kube_server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO_ROOT,
            )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the emulator did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


# ---------------------------------------------------------------------------- a fake node


@dataclass
class NodeTiming:
    """How the fake workers behave (framescale.local.fake_node)."""

    slots: int = 2
    job_seconds: tuple[float, float] = (0.2, 1.2)
    lease_seconds: float = 6.0
    lease_poll_seconds: float = 0.2  # how often the keeper reads its Lease for a drain request
    receive_wait_seconds: int = 1  # long poll
    visibility_seconds: int = 20
    boot_seconds: tuple[float, float] = (0.0, 0.5)  # from launch to the worker starting
    clock_offset: timedelta = timedelta(0)  # the node's wall clock against the true time


class Node:
    """One instance's node: its Node object and the worker's own fake node on it
    (``framescale.local.fake_node.FakeNode``: the real Lease keeper and job-start fence, jobs
    that sleep), and when it died."""

    def __init__(
        self,
        *,
        fake: Any,
        node_name: str,
        instance_id: str,
        group: str,
        namespace: str,
    ) -> None:
        self.fake = fake
        self.node_name = node_name
        self.instance_id = instance_id
        self.group = group
        self.namespace = namespace
        self.lease_name = busy_lease.lease_name(node_name)
        self.died_at: float | None = None
        self.started = False
        self._lock = threading.Lock()  # boot and death of the machine do not interleave
        self._killer: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.died_at is None

    def jobs_in_hand(self) -> int:
        return int(self.fake.jobs_in_hand()) if self.alive else 0

    def kill(self) -> tuple[str, ...]:
        """The machine dies now: fence the slots (``JobGate.close`` counts exactly the jobs in hand
        at this instant; none can start after it), note the time, and stop the fake node's threads
        in the background (its ``kill`` waits for them, and moto is waiting on this call)."""
        with self._lock:
            fenced = self.fake.gate.close()
            in_hand = fenced if fenced is not None else self.fake.gate.jobs_in_hand()
            self.died_at = time.monotonic()
            started = self.started
        running = [job.message_id for job in self.jobs() if job.outcome == "killed" and job.ended is None]
        if started:  # a node that never booted has nothing to stop
            self._killer = threading.Thread(target=self.fake.kill, name=f"kill-{self.node_name}", daemon=True)
            self._killer.start()
        running += ["(started, not yet recorded)"] * max(0, in_hand - len(running))
        return tuple(running[: max(in_hand, len(running))]) if in_hand else ()

    def boot(self) -> None:
        """The machine finished booting: its worker starts (unless it died first)."""
        with self._lock:
            if self.died_at is not None:
                return
            self.started = True
            self.fake.start()

    def stop(self) -> None:
        if self.alive:
            self.kill()
        if self._killer is not None:
            self._killer.join(timeout=15)

    def jobs(self) -> list[Job]:
        """This node's jobs from its own record, judged against its death."""
        died = self.died_at
        jobs: dict[tuple[str, float], Job] = {}
        for event in list(self.fake.events):
            kind = event.get("event")
            if kind == "job_started":
                key = (event["message_id"], event["monotonic"])
                jobs[key] = Job(
                    job_id=event["message_id"],
                    message_id=event["message_id"],
                    node=self.node_name,
                    started=event["monotonic"],
                )
            elif kind == "job_ended":
                key = (event["message_id"], event["started_monotonic"])
                job = jobs.get(key)
                if job is None:
                    continue
                job.ended = event["monotonic"]
                outcome = event.get("outcome", "")
                job.outcome = {"done": "done", "killed": "killed", "handed_back": "handed_back"}.get(outcome, "failed")
        for job in jobs.values():
            if died is not None and (job.ended is None or (job.ended >= died and job.outcome == "done")):
                job.outcome = "killed"  # the machine was gone before this job was settled
                if job.ended is not None and job.ended >= died:
                    job.ended = died
        return sorted(jobs.values(), key=lambda job: job.started)

    def drain_answers(self) -> list[tuple[str, str, int]]:
        return [
            (e["token"], e["verdict"], int(e["jobs_in_hand"]))
            for e in list(self.fake.events)
            if e.get("event") == "drain_answered"
        ]

    def fenced(self) -> int:
        """Messages a long poll returned after the fence shut, handed back at once."""
        return sum(1 for e in list(self.fake.events) if e.get("event") == "fenced")


# ---------------------------------------------------------------------------- the fleet


class Fleet:
    """Fake nodes for the instances of some Auto Scaling groups: one started per launched
    instance, killed when moto terminates it."""

    def __init__(
        self,
        *,
        referee: Referee,
        kube: KubeClient,
        ledger: Ledger,
        timing: NodeTiming,
        kubeconfig: Path,
        seed: int = 7,
    ) -> None:
        self.kube = kube
        self.kubeconfig = kubeconfig
        self.ledger = ledger
        self.timing = timing
        self.random = random.Random(seed)
        self.groups: dict[str, tuple[str, str, str]] = {}  # group -> (namespace, pipeline, queue url)
        self.nodes: dict[str, Node] = {}  # instance id -> its node
        self.gone: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._to_forget: list[str] = []
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        referee.on_terminate.append(self._terminated)
        referee.on_capacity.append(self._capacity)
        referee.on_hold.append(self._held)

    def manage(self, group: str, *, namespace: str, pipeline: str, queue_url: str) -> None:
        with self._lock:
            self.groups[group] = (namespace, pipeline, queue_url)

    def start(self) -> Fleet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            nodes = list(self.nodes.values())
        for node in nodes:
            node.stop()

    def node(self, instance_id: str) -> Node | None:
        with self._lock:
            return self.nodes.get(instance_id)

    def live_nodes(self, group: str | None = None) -> list[Node]:
        with self._lock:
            return [node for node in self.nodes.values() if node.alive and (group is None or node.group == group)]

    # moto's request threads call these two.
    def _terminated(self, instance_id: str, group: str | None, cause: str, caller: str) -> None:
        with self._lock:
            if instance_id in self.gone:
                return  # a second termination of a dead instance (moto allows it) is no new death
            node = self.nodes.get(instance_id)
            self.gone.add(instance_id)
        killed = node.kill() if node is not None and node.alive else ()
        with self.ledger.lock:
            jobs = tuple(self.ledger.message_jobs.get(message, message) for message in killed)
        group = group or (node.group if node is not None else None)
        if node is not None or group in self.groups:
            self.ledger.terminated(
                Termination(
                    instance_id=instance_id,
                    group=group,
                    cause=cause,
                    at=time.monotonic(),
                    jobs_in_hand=jobs,
                    caller=caller,
                )
            )
        if node is not None:
            with self._lock:
                self._to_forget.append(node.node_name)

    def _held(self, instance_id: str, group: str | None, cause: str, caller: str) -> None:
        if group in self.groups:
            self.ledger.held(
                Hold(instance_id=instance_id, group=group, cause=cause, at=time.monotonic(), caller=caller)
            )

    def _capacity(self, group: str, before: int, after: int) -> None:
        if group in self.groups:
            self.ledger.capacity_changed(CapacityChange(group=group, before=before, after=after, at=time.monotonic()))

    def _run(self) -> None:
        autoscaling = client("autoscaling")
        while not self._stop.wait(0.2):
            with self._lock:
                groups = dict(self.groups)
                forget, self._to_forget = self._to_forget, []
            for node_name in forget:  # the node controller removes a gone machine's Node
                with contextlib.suppress(urllib.error.HTTPError, urllib.error.URLError, OSError):
                    self.kube.delete(f"/api/v1/nodes/{node_name}")
            if not groups:
                continue
            try:
                described = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=list(groups))
            except Exception:  # moto busy: look again at the next tick
                continue
            for found in described["AutoScalingGroups"]:
                namespace, pipeline, queue_url = groups[found["AutoScalingGroupName"]]
                for instance in found["Instances"]:
                    instance_id = instance["InstanceId"]
                    with self._lock:
                        known = instance_id in self.nodes or instance_id in self.gone
                    if known or instance["LifecycleState"] not in ("Pending", "InService"):
                        continue
                    self._boot(
                        instance_id,
                        group=found["AutoScalingGroupName"],
                        namespace=namespace,
                        pipeline=pipeline,
                        queue_url=queue_url,
                    )

    def _boot(self, instance_id: str, *, group: str, namespace: str, pipeline: str, queue_url: str) -> None:
        node_name = f"node-{instance_id}"
        with contextlib.suppress(urllib.error.HTTPError):
            self.kube.create(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node_name, "labels": {names.ACCELERATOR_NODE_LABEL: "true"}},
                    "spec": {"providerID": f"aws:///us-east-1a/{instance_id}"},
                },
            )
        from framescale.local.fake_node import FakeNode, FakeNodeConfig

        timing = self.timing
        fake = FakeNode(
            FakeNodeConfig(
                node_name=node_name,
                queue_url=queue_url,
                namespace=namespace,
                pipeline=pipeline,
                kubeconfig=str(self.kubeconfig),
                slots=timing.slots,
                job_seconds=timing.job_seconds,
                lease_duration_seconds=timing.lease_seconds,
                lease_poll_seconds=timing.lease_poll_seconds,
                wait_seconds=timing.receive_wait_seconds,
                visibility_seconds=timing.visibility_seconds,
                seed=self.random.randrange(1 << 30),
            ),
            sqs=client("sqs"),
        )
        if timing.clock_offset:
            offset = timing.clock_offset
            fake.keeper.wall = lambda: datetime.now(UTC) + offset  # what the node's clock says
        node = Node(fake=fake, node_name=node_name, instance_id=instance_id, group=group, namespace=namespace)
        with self._lock:
            if instance_id in self.gone:
                return
            self.nodes[instance_id] = node
        self.ledger.register(node)

        timer = threading.Timer(self.random.uniform(*timing.boot_seconds), node.boot)
        timer.daemon = True
        timer.start()


# ---------------------------------------------------------------------------- AWS resources


@dataclass
class GroupSpec:
    max_size: int = 8
    lifecycle_hook: bool = True
    hook_heartbeat_seconds: int = 30
    protect_new_instances: bool = True


def make_queue(name: str, *, visibility_timeout: int = 10) -> str:
    return str(
        client("sqs").create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(visibility_timeout)})[
            "QueueUrl"
        ]
    )


def make_group(name: str, spec: GroupSpec | None = None) -> str:
    """An Auto Scaling group as the CloudFormation template makes it: new instances protected from
    scale-in, and the termination lifecycle hook the operator answers."""
    spec = spec or GroupSpec()
    ec2, autoscaling = client("ec2"), client("autoscaling")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    ec2.create_launch_template(
        LaunchTemplateName=f"lt-{name}",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"},
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": f"lt-{name}"},
        MinSize=0,
        MaxSize=spec.max_size,
        DesiredCapacity=0,
        VPCZoneIdentifier=subnet,
        NewInstancesProtectedFromScaleIn=spec.protect_new_instances,
    )
    if spec.lifecycle_hook:
        autoscaling.put_lifecycle_hook(
            LifecycleHookName=names.DEFAULT_LIFECYCLE_HOOK_NAME,
            AutoScalingGroupName=name,
            LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
            HeartbeatTimeout=spec.hook_heartbeat_seconds,
            DefaultResult="CONTINUE",
        )
    return name


def send_jobs(queue_url: str, ledger: Ledger, count: int, prefix: str) -> list[str]:
    """Send ``count`` job messages (bodies carry a job id the referee follows)."""
    sqs = client("sqs")
    ids = [f"{prefix}-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    for start in range(0, count, 10):
        batch = ids[start : start + 10]
        response = sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(n), "MessageBody": json.dumps({"video": f"s3://scenario/{job_id}.mp4", "job_id": job_id})}
                for n, job_id in enumerate(batch)
            ],
        )
        assert not response.get("Failed"), response["Failed"]
        for entry in response["Successful"]:
            ledger.send(batch[int(entry["Id"])], entry["MessageId"])
    return ids


def group_view(group: str) -> dict[str, Any]:
    return dict(
        client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
    )


def operator_drains_before_terminating() -> bool:
    """Whether the operator under test has the drain handshake (its pass planned as steps);
    scenarios that need it wait for it rather than fail against the earlier operator."""
    import importlib.util

    return importlib.util.find_spec("framescale_operator.plan") is not None


def autoscaling_spec_keys() -> set[str]:
    """The spec.autoscaling fields the operator under test knows (camelCase), so a scenario can
    set a stabilization window only where one exists."""
    from framescale_operator import models

    return {info.alias or key for key, info in models.Autoscaling.model_fields.items()}


# ---------------------------------------------------------------------------- the operator


@dataclass
class OperatorRun:
    """``python -m framescale_operator`` against the emulator and moto."""

    kube_url: str
    aws_env: dict[str, str]
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = "operator"
    process: subprocess.Popen[bytes] | None = None
    health_url: str = ""
    metrics_url: str = ""

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 60.0) -> OperatorRun:
        health_port, metrics_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAMESCALE_", "AWS_", "KUBE"))}
        env.update(self.aws_env)
        env.update(
            {
                "KUBECONFIG": str(_kubeconfig(self.workdir / f"{self.name}.kubeconfig", self.kube_url)),
                "FRAMESCALE_OPERATOR_DEFAULT_POLL_INTERVAL_SECONDS": "1",
                "FRAMESCALE_OPERATOR_PROTECTION_RESYNC_SECONDS": "5",
                "FRAMESCALE_OPERATOR_TEMPORARY_ERROR_DELAY_SECONDS": "1",
                "FRAMESCALE_OPERATOR_HEALTH_HOST": "127.0.0.1",
                "FRAMESCALE_OPERATOR_HEALTH_PORT": str(health_port),
                "FRAMESCALE_OPERATOR_METRICS_HOST": "127.0.0.1",
                "FRAMESCALE_OPERATOR_METRICS_PORT": str(metrics_port),
                "FRAMESCALE_OPERATOR_LOG_FORMAT": "json",
                "FRAMESCALE_OPERATOR_LOG_LEVEL": "INFO",
                # Short leader-election times, so that a restarted or surviving replica takes over
                # in seconds (they are ignored by an operator without leader election).
                "FRAMESCALE_OPERATOR_LEADER_IDENTITY": self.name,
                "FRAMESCALE_OPERATOR_LEADER_LEASE_DURATION_SECONDS": "4",
                "FRAMESCALE_OPERATOR_LEADER_RENEW_DEADLINE_SECONDS": "3",
                "FRAMESCALE_OPERATOR_LEADER_RETRY_PERIOD_SECONDS": "1",
            }
        )
        env.update(self.extra_env)
        self.health_url = f"http://127.0.0.1:{health_port}/healthz"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "framescale_operator"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not http_ok(self.health_url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not become live:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def kill(self) -> None:
        """SIGKILL: what a node failure or an OOM kill does to the operator's pod."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------- the whole stack


@dataclass
class Stack:
    """moto (tapped), the kube emulator, the referee and the fleet; operators started on demand."""

    moto: MotoTapped
    emulator: KubeEmulatorProcess
    kube: KubeClient
    ledger: Ledger
    fleet: Fleet
    workdir: Path
    operators: list[OperatorRun] = field(default_factory=list)

    def operator(self, name: str = "operator", **extra_env: str) -> OperatorRun:
        """Start an operator; its AWS calls are signed with the access key id ``name``."""
        run = OperatorRun(
            kube_url=self.emulator.url,
            aws_env={**self.moto.client_env, "AWS_ACCESS_KEY_ID": name},
            workdir=self.workdir,
            extra_env=extra_env,
            name=name,
        )
        self.operators.append(run)
        return run.start()

    def pipeline(
        self,
        *,
        namespace: str,
        name: str,
        queue_url: str,
        group: str,
        replicas: int | None = None,
        **autoscaling: Any,
    ) -> dict[str, Any]:
        known = autoscaling_spec_keys()
        settings = {key: value for key, value in autoscaling.items() if key in known}
        spec: dict[str, Any] = {
            "queueUrl": queue_url,
            "nodeGroup": {"autoScalingGroupName": group},
            "daemonSetName": "framescale-worker",
            "autoscaling": settings,
        }
        if replicas is not None:
            spec["replicas"] = replicas
            if "mode" in spec_keys():
                spec["mode"] = "Manual"
        body = {
            "apiVersion": f"{names.GROUP}/{names.VERSION}",
            "kind": names.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        return dict(self.kube.create(self.kube.vp_path(namespace), body))


def spec_keys() -> set[str]:
    from framescale_operator import models

    return {info.alias or key for key, info in models.VideoPipelineSpec.model_fields.items()}


@contextlib.contextmanager
def local_stack(workdir: Path, timing: NodeTiming | None = None, seed: int = 7) -> Iterator[Stack]:
    """Start everything; on exit stop the operators, the fleet, the emulator and moto, and leave
    the referee's record in ``workdir/ledger.jsonl``."""
    referee = Referee().start()
    moto = MotoTapped(referee, workdir / "moto.log").start()
    saved = {key: os.environ.get(key) for key in moto.client_env}
    os.environ.update(moto.client_env)
    emulator = KubeEmulatorProcess(workdir / "kube.log").start()
    kube = KubeClient(emulator.url)
    ledger = Ledger()
    kubeconfig = _kubeconfig(workdir / "fake-nodes.kubeconfig", emulator.url)
    fleet = Fleet(
        referee=referee, kube=kube, ledger=ledger, timing=timing or NodeTiming(), kubeconfig=kubeconfig, seed=seed
    ).start()
    stack = Stack(moto=moto, emulator=emulator, kube=kube, ledger=ledger, fleet=fleet, workdir=workdir)
    try:
        yield stack
    finally:
        for run in stack.operators:
            run.stop()
        fleet.stop()
        ledger.dump(workdir / "ledger.jsonl")
        emulator.stop()
        moto.stop()
        referee.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------- figures


def spread(values: list[float]) -> dict[str, float | int]:
    """count, median, p95 and max of some seconds."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {
        "count": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
    }
