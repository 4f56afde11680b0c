"""The operator under test, for real: ``python -m framescale_operator`` in a child process,
talking HTTP to the Kubernetes API emulator (kmock) and to the moto server.

One operator process serves the whole module (cluster-wide); each test works in its own
namespace with its own queue and Auto Scaling group, so the tests do not see each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from framescale import busy_lease, names
from framescale.local.moto_server import MotoServer
from framescale.local.processes import free_port, http_ok
from tests import support
from tests.integration.operator.kube_emulator import EmulatorThread

T = TypeVar("T")
POLL = 1  # seconds: the pipelines' spec.autoscaling.pollIntervalSeconds, unless a test sets its own
# The operator's own defaults, far from POLL and from anything a test waits for: a pipeline that
# changes in time did so because of its spec, a Lease event or an expiry, not a fallback.
DEFAULT_POLL = 60
PROTECTION_RESYNC = 120
WAIT = 30.0  # generous upper bound for anything that must happen at all, on a busy 2-core machine
LEASE_SECONDS = 6  # a live worker's Lease; renewed every second, so 5 s of lag still keeps it
ACQUIRED_AGO = timedelta(hours=1)  # acquireTime long before renewTime: expiry must count from renewTime

VP_PATH = f"/apis/{names.GROUP}/{names.VERSION}"


def wait_for(check: Callable[[], T], what: str, timeout: float = WAIT, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


class KubeClient:
    """A few JSON calls against the emulator, the way kubectl would make them."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def maybe_get(self, path: str) -> Any:
        try:
            return self.get(path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # VideoPipelines
    def vp_path(self, namespace: str, name: str = "", subresource: str = "") -> str:
        path = f"{VP_PATH}/namespaces/{namespace}/{names.PLURAL}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path

    def vp(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(self.vp_path(namespace, name))

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.vp(namespace, name).get("status") or {}

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v1/namespaces/{namespace}/events").get("items", [])

    # Nodes and Leases
    def node(self, name: str) -> dict[str, Any]:
        return self.get(f"/api/v1/nodes/{name}")

    def lease_path(self, namespace: str, name: str = "") -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        return f"{path}/{name}" if name else path


@dataclass
class AwsWorld:
    """boto3 clients against the moto server, and the resources a test made."""

    sqs: Any
    autoscaling: Any
    ec2: Any
    subnet: str = ""

    def queue(self, name: str) -> str:
        return str(self.sqs.create_queue(QueueName=name)["QueueUrl"])

    def group(self, name: str, *, desired: int = 0, max_size: int = 6) -> str:
        template = f"lt-{name}"
        self.ec2.create_launch_template(
            LaunchTemplateName=template,
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"},
        )
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": template},
            MinSize=0,
            MaxSize=max_size,
            DesiredCapacity=desired,
            VPCZoneIdentifier=self.subnet,
        )
        return name

    def describe(self, name: str) -> dict[str, Any]:
        return self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]

    def desired(self, name: str) -> int:
        return int(self.describe(name)["DesiredCapacity"])

    def in_service(self, name: str) -> list[str]:
        return sorted(i["InstanceId"] for i in self.describe(name)["Instances"] if i["LifecycleState"] == "InService")

    def scale_in_protected(self, group: str, instance_id: str) -> bool:
        for instance in self.describe(group)["Instances"]:
            if instance["InstanceId"] == instance_id:
                return bool(instance["ProtectedFromScaleIn"])
        return False

    def termination_protected(self, instance_id: str) -> bool:
        response = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="disableApiTermination")
        return bool(response["DisableApiTermination"]["Value"])

    def fully_protected(self, group: str, instance_id: str) -> bool:
        return self.scale_in_protected(group, instance_id) and self.termination_protected(instance_id)

    def unprotected(self, group: str, instance_id: str) -> bool:
        return not self.scale_in_protected(group, instance_id) and not self.termination_protected(instance_id)

    def protect(self, group: str, instance_id: str) -> None:
        """What a person does by hand: both flags on, no framescale tags."""
        self.autoscaling.set_instance_protection(
            AutoScalingGroupName=group, InstanceIds=[instance_id], ProtectedFromScaleIn=True
        )
        self.ec2.modify_instance_attribute(InstanceId=instance_id, DisableApiTermination={"Value": True})

    def tags(self, instance_id: str) -> dict[str, str]:
        """The instance's framescale tags."""
        found = self.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance_id]}])["Tags"]
        return {tag["Key"]: tag["Value"] for tag in found if tag["Key"].startswith("framescale.io/")}

    def instance_state(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return str(reservations[0]["Instances"][0]["State"]["Name"])

    def send(self, queue_url: str, count: int) -> None:
        for index in range(count):
            self.sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"video": f"s3://b/v{index}.mp4"}))

    def drain(self, queue_url: str) -> None:
        """Receive and delete every message (what workers do when they finish)."""
        while True:
            batch = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = batch.get("Messages", [])
            if not messages:
                return
            for message in messages:
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


@dataclass
class Pipeline:
    """One test's world: a namespace, a queue, a group and the VideoPipeline over them."""

    kube: KubeClient
    world: AwsWorld
    namespace: str
    name: str
    queue_url: str
    group: str

    def spec(self, **autoscaling: Any) -> dict[str, Any]:
        settings = {
            "minReplicas": 0,
            "maxReplicas": 5,
            "targetBacklogPerReplica": 2,
            "scaleOutCooldownSeconds": 0,
            "scaleInCooldownSeconds": 2,
            "scaleInStabilizationSeconds": 0,
            "pollIntervalSeconds": POLL,
        }
        settings.update(autoscaling)
        return {
            "queueUrl": self.queue_url,
            "nodeGroup": {"autoScalingGroupName": self.group},
            "daemonSetName": "framescale-worker",
            "autoscaling": settings,
        }

    def create(
        self, spec: dict[str, Any] | None = None, *, name: str | None = None, **autoscaling: Any
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{names.GROUP}/{names.VERSION}",
            "kind": names.KIND,
            "metadata": {"name": name or self.name, "namespace": self.namespace},
            "spec": spec if spec is not None else self.spec(**autoscaling),
        }
        return self.kube.create(self.kube.vp_path(self.namespace), body)

    def pinned(self, replicas: int, **autoscaling: Any) -> dict[str, Any]:
        return {**self.spec(**autoscaling), "mode": "Manual", "replicas": replicas}

    def status(self) -> dict[str, Any]:
        return self.kube.status(self.namespace, self.name)

    def condition(self, type: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c.get("type") == type), {})

    def node_for(self, instance_id: str) -> str:
        """Register a Node for an instance, as the kubelet would when it joins."""
        name = f"node-{instance_id}"
        if self.kube.maybe_get(f"/api/v1/nodes/{name}") is None:
            self.kube.create(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": name, "labels": {names.ACCELERATOR_NODE_LABEL: "true"}},
                    "spec": {"providerID": f"aws:///us-east-1a/{instance_id}"},
                },
            )
        return name

    def hold_lease(
        self,
        node: str,
        *,
        active_jobs: int = 1,
        duration: int = 300,
        renewed: datetime | None = None,
        state: busy_lease.WorkerState | None = None,
        reply: busy_lease.DrainReply | None = None,
    ) -> None:
        """Write the node's Lease as a worker does (create, then merge-patch of the worker's own
        keys), acquired an hour before its renewal. ``state`` None: a version-1 writer."""
        renewed = renewed or datetime.now(UTC)
        if state is None:
            body = busy_lease.lease_body(
                node_name=node,
                namespace=self.namespace,
                holder=f"worker-{node}",
                active_jobs=active_jobs,
                duration_seconds=duration,
                now=renewed,
                pipeline=self.name,
                acquired=renewed - ACQUIRED_AGO,
            )
        else:
            body = busy_lease.worker_patch(
                node_name=node,
                namespace=self.namespace,
                holder=f"worker-{node}",
                duration_seconds=duration,
                now=renewed,
                active_jobs=active_jobs,
                state=state,
                pipeline=self.name,
                acquired=renewed - ACQUIRED_AGO,
                drain_reply=reply,
            )
        path = self.kube.lease_path(self.namespace, busy_lease.lease_name(node))
        if self.kube.maybe_get(path) is None:
            self.kube.create(self.kube.lease_path(self.namespace), body)
        else:
            self.kube.merge_patch(
                path, {"metadata": {"annotations": body["metadata"]["annotations"]}, "spec": body["spec"]}
            )

    def lease(self, node: str) -> busy_lease.LeaseRecord | None:
        body = self.kube.maybe_get(self.kube.lease_path(self.namespace, busy_lease.lease_name(node)))
        return busy_lease.parse_lease(body) if body else None

    def answer_drain(self, node: str, *, active_jobs: int = 0, duration: int = 300) -> busy_lease.DrainVerdict | None:
        """What a version-2 worker does with a standing drain request (``respond_to_drain``)."""
        record = self.lease(node)
        if record is None or record.drain_request is None:
            return None
        verdict = busy_lease.respond_to_drain(record.drain_mode, active_jobs)
        if verdict is None:
            return None
        drained = verdict == busy_lease.DrainVerdict.DRAINED
        self.hold_lease(
            node,
            active_jobs=active_jobs,
            duration=duration,
            state=busy_lease.WorkerState.DRAINED if drained else busy_lease.WorkerState.BUSY,
            reply=busy_lease.DrainReply(record.drain_request, verdict),
        )
        return verdict

    def delete_lease(self, node: str) -> None:
        self.kube.delete(self.kube.lease_path(self.namespace, busy_lease.lease_name(node)))

    @contextlib.contextmanager
    def busy(
        self, node: str, *, duration: int = LEASE_SECONDS, every: float = 1.0, clock_offset: float = 0.0
    ) -> Iterator[None]:
        """A live worker: renew the node's busy Lease every second; on exit stop renewing, as a
        crashed worker would, so that the Lease lapses by itself (no further write).
        ``clock_offset``: the worker's clock that many seconds off the operator's."""
        stop = threading.Event()

        def worker_now() -> datetime:
            return datetime.now(UTC) + timedelta(seconds=clock_offset)

        self.hold_lease(node, duration=duration, renewed=worker_now())

        def renew() -> None:
            while not stop.wait(every):
                self.hold_lease(node, duration=duration, renewed=worker_now())

        thread = threading.Thread(target=renew, name=f"lease-{node}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def kube(kube_api: EmulatorThread) -> KubeClient:
    return KubeClient(kube_api.url)


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    health_url: str
    metrics_url: str

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()


def _kubeconfig(path: Path, server: str, token: str = "not-checked") -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": token}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
                "current-context": "emulator",
            }
        )
    )
    return path


@contextlib.contextmanager
def running_operator(
    kube_url: str,
    aws_env: dict[str, str],
    workdir: Path,
    *,
    token: str = "not-checked",
    extra_env: dict[str, str] | None = None,
) -> Iterator[OperatorProcess]:
    """``python -m framescale_operator`` against ``kube_url`` (as ``token``) and the AWS endpoint in
    ``aws_env``, with slow defaults (the pipelines set their own poll interval); stopped with SIGTERM."""
    workdir.mkdir(parents=True, exist_ok=True)
    health_port, metrics_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FRAMESCALE_", "AWS_", "KUBE"))}
    env.update(aws_env)
    env.update(
        {
            "KUBECONFIG": str(_kubeconfig(workdir / "kubeconfig", kube_url, token)),
            "FRAMESCALE_OPERATOR_DEFAULT_POLL_INTERVAL_SECONDS": str(DEFAULT_POLL),
            "FRAMESCALE_OPERATOR_PROTECTION_RESYNC_SECONDS": str(PROTECTION_RESYNC),
            "FRAMESCALE_OPERATOR_TEMPORARY_ERROR_DELAY_SECONDS": "1",
            "FRAMESCALE_OPERATOR_HEALTH_HOST": "127.0.0.1",
            "FRAMESCALE_OPERATOR_HEALTH_PORT": str(health_port),
            "FRAMESCALE_OPERATOR_METRICS_HOST": "127.0.0.1",
            "FRAMESCALE_OPERATOR_METRICS_PORT": str(metrics_port),
            "FRAMESCALE_OPERATOR_LOG_FORMAT": "json",
            "FRAMESCALE_OPERATOR_LOG_LEVEL": "INFO",
            # A short leader Lease: one replica takes the Lease within a second of starting.
            "FRAMESCALE_OPERATOR_LEADER_LEASE_DURATION_SECONDS": "4",
            "FRAMESCALE_OPERATOR_LEADER_RENEW_DEADLINE_SECONDS": "3",
            "FRAMESCALE_OPERATOR_LEADER_RETRY_PERIOD_SECONDS": "0.5",
        }
    )
    env.update(extra_env or {})
    log_path = workdir / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "framescale_operator"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    running = OperatorProcess(
        process=process,
        log_path=log_path,
        health_url=f"http://127.0.0.1:{health_port}/healthz",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
    )
    try:
        deadline = time.monotonic() + 60
        while not http_ok(running.health_url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the operator did not become live:\n{running.log_tail()}")
            time.sleep(0.2)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def operator_process(
    kube_api: EmulatorThread, moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The module's one operator (cluster-wide), against the emulator and moto."""
    with running_operator(kube_api.url, moto_server.client_env, tmp_path_factory.mktemp("operator")) as running:
        yield running


@pytest.fixture
def world(aws_env: dict[str, str]) -> AwsWorld:
    ec2 = support.client("ec2")  # made once per endpoint: a new client costs a model load
    return AwsWorld(
        sqs=support.client("sqs"),
        autoscaling=support.client("autoscaling"),
        ec2=ec2,
        subnet=ec2.describe_subnets()["Subnets"][0]["SubnetId"],
    )


@pytest.fixture
def pipeline(
    request: pytest.FixtureRequest,
    operator_process: OperatorProcess,
    kube_api: EmulatorThread,
    kube: KubeClient,
    world: AwsWorld,
) -> Iterator[Pipeline]:
    """A fresh namespace, queue and Auto Scaling group; the operator's log is shown if the test fails,
    and a request the emulator could only answer with a 5xx fails the test's teardown."""
    errors_before = len(kube_api.server_errors())
    suffix = uuid.uuid4().hex[:8]
    made = Pipeline(
        kube=kube,
        world=world,
        namespace=f"t-{suffix}",
        name="detector",
        queue_url=world.queue(f"jobs-{suffix}"),
        group=world.group(f"gpu-{suffix}"),
    )
    yield made
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- operator log (tail) ---\n{operator_process.log_tail(120)}")
    new_errors = kube_api.server_errors()[errors_before:]
    assert not new_errors, f"the Kubernetes API emulator failed on requests: {new_errors!r}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
