"""A fake node for racing scenarios: the worker's own Lease keeper and job-start gate, fake jobs.

A ``FakeNode`` holds its node Lease with framescale.worker.lease.LeaseKeeper and takes messages
only through framescale.worker.gate.JobGate, exactly as the worker's supervisor and slots do, so
the drain handshake under test is the real one. Its "jobs" are sleeps of a random length: each
slot thread long-polls the queue while the gate is open, starts a job with ``try_start`` (a
message received once the gate shut is handed back at once, visibility 0), "works", deletes the
message and finishes. Only the work is fake.

Use it in-process (threads)::

    node = FakeNode(FakeNodeConfig(node_name="ip-10-0-0-1", queue_url=url, namespace="video",
                                   kubeconfig="kubeconfig.yaml", record_path=Path("jobs.jsonl"))).start()
    ...
    node.stop()   # SIGTERM: no new job, jobs in hand cut short and handed back, Lease "stopping"
    node.kill()   # the instance vanished: nothing handed back or deleted, the Lease left to lapse

``wall_skew_seconds`` (``--wall-skew``) sets the node's wall clock off, as the Lease's
``renewTime`` shows it; the handshake must not care. Or run it as a process (SIGTERM = ``stop``,
SIGKILL = the instance vanished)::

    python -m framescale.local.fake_node --node ip-10-0-0-1 --queue-url URL --namespace video \\
        --kubeconfig kubeconfig.yaml --record jobs.jsonl --job-seconds 0.5:3 --slots 1

AWS comes from the environment (AWS_ENDPOINT_URL for moto); the Kubernetes API from the
kubeconfig. The record is JSON lines, one per event, each with ``node``, ``monotonic`` (the
machine's CLOCK_MONOTONIC, one clock for all processes of a machine) and ``wall`` (time.time()):

* ``{"event": "job_started", "message_id", "slot", "receive_count", ...}`` when a job starts;
* ``{"event": "job_ended", "message_id", "slot", "outcome", "started_monotonic", "started_wall",
  "ended_monotonic", ...}`` when it ends (``ended_monotonic``: taken before the slot leaves the
  gate, so the job was in hand over the whole of [started_monotonic, ended_monotonic]),
  ``outcome`` one of ``done`` (message deleted), ``handed_back`` (stopped mid-job: visibility 0),
  ``killed`` (``kill()`` mid-job: the message comes back when its visibility runs out). A
  ``job_started`` with no ``job_ended`` is a job whose process was SIGKILLed;
* ``{"event": "fenced", "message_id"}``: a message a long poll returned after the gate shut,
  handed back at once (no job started);
* ``{"event": "drain_answered", "token", "verdict", "jobs_in_hand"}``: each drain answer as the
  keeper decides it (before it is written to the Lease).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from framescale.busy_lease import DrainReply
from framescale.worker.gate import JobGate, SlotGate
from framescale.worker.lease import KubeLeaseApi, LeaseApi, LeaseIdentity, LeaseKeeper

log = logging.getLogger(__name__)

GATE_WAIT_SECONDS = 0.05  # how often a slot looks at a shut gate (the worker's slot: 0.2 s)


@dataclass(frozen=True)
class FakeNodeConfig:
    node_name: str
    queue_url: str
    namespace: str = "default"
    pipeline: str | None = None
    kubeconfig: str | None = None  # None: in-cluster config, else kubectl's kubeconfig
    record_path: Path | None = None  # JSON lines (module docstring); None records in memory only
    slots: int = 1
    job_seconds: tuple[float, float] = (0.5, 2.0)  # each job lasts uniform(low, high) seconds
    lease_duration_seconds: float = 15.0
    lease_poll_seconds: float = 0.25
    wait_seconds: int = 1  # SQS long poll
    visibility_seconds: int = 30  # per receive; a longer job extends its message once
    seed: int | None = None
    holder: str | None = None  # the Lease's holderIdentity; "fake-<node>-<pid>" when None
    wall_skew_seconds: float = 0.0  # this node's wall clock is that far ahead (negative: behind)


@dataclass
class _Recorder:
    node: str
    path: Path | None
    events: list[dict[str, Any]] = field(default_factory=list)
    _file: IO[str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"event": event, "node": self.node, "monotonic": time.monotonic(), "wall": time.time(), **fields}
        with self._lock:
            self.events.append(entry)
            if self._file is not None:
                self._file.write(json.dumps(entry) + "\n")
                self._file.flush()
        return entry

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class FakeNode:
    def __init__(self, config: FakeNodeConfig, *, leases: LeaseApi | None = None, sqs: Any = None) -> None:
        """``leases``/``sqs``: clients to use instead of ones made from the config and environment."""
        if not 0 <= config.job_seconds[0] <= config.job_seconds[1]:
            raise ValueError(f"job_seconds must be (low, high) with 0 <= low <= high, not {config.job_seconds}")
        if config.slots < 1:
            raise ValueError(f"slots must be at least 1, not {config.slots}")
        self.config = config
        if sqs is None:
            from framescale import aws

            sqs = aws.client("sqs")
        self.sqs = sqs
        self.gate = JobGate.for_threads(config.slots)
        self.recorder = _Recorder(config.node_name, config.record_path)
        self.keeper = LeaseKeeper(
            leases or KubeLeaseApi.from_kubeconfig(config.kubeconfig),
            self.gate,
            LeaseIdentity(
                node_name=config.node_name,
                namespace=config.namespace,
                holder=config.holder or f"fake-{config.node_name}-{os.getpid()}",
                pipeline=config.pipeline,
            ),
            duration_seconds=config.lease_duration_seconds,
            poll_seconds=config.lease_poll_seconds,
            on_answer=self._answered,
            wall=lambda: datetime.now(UTC) + timedelta(seconds=config.wall_skew_seconds),
        )
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._stopping = threading.Event()  # SIGTERM: take nothing, cut jobs short, hand back
        self._killed = threading.Event()  # vanished: touch nothing
        self._threads = [
            threading.Thread(target=self._slot, args=(n,), name=f"{config.node_name}-slot-{n}", daemon=True)
            for n in range(config.slots)
        ]

    # ------------------------------------------------------------------ life

    def start(self) -> FakeNode:
        self.keeper.start()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """What SIGTERM does: no new job; jobs in hand are cut short and their messages handed back."""
        self.keeper.begin_stopping()
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        self.keeper.stop()  # a last write: "stopping", no job in hand
        self.recorder.close()

    def kill(self) -> None:
        """The instance is gone: the slots end where they are, their messages neither deleted nor
        handed back (they come back when their visibility runs out); the Lease is left to lapse."""
        self._killed.set()
        self._stopping.set()
        self.gate.shut()
        for thread in self._threads:
            thread.join(GATE_WAIT_SECONDS * 4 + self.config.wait_seconds + 5)
        self.keeper.stop(final_tick=False)
        self.recorder.close()

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.recorder.events)

    def jobs_in_hand(self) -> int:
        return self.gate.jobs_in_hand()

    # ------------------------------------------------------------------ slots

    def _answered(self, reply: DrainReply, jobs_in_hand: int) -> None:
        self.recorder.write("drain_answered", token=reply.token, verdict=reply.verdict.value, jobs_in_hand=jobs_in_hand)

    def _job_seconds(self) -> float:
        with self._rng_lock:
            return self._rng.uniform(*self.config.job_seconds)

    def _slot(self, number: int) -> None:
        cell = self.gate.slot(number)
        while not self._stopping.is_set():
            if not cell.is_open():
                self._stopping.wait(GATE_WAIT_SECONDS)
                continue
            try:
                answer = self.sqs.receive_message(
                    QueueUrl=self.config.queue_url,
                    MaxNumberOfMessages=1,
                    WaitTimeSeconds=self.config.wait_seconds,
                    VisibilityTimeout=self.config.visibility_seconds,
                    AttributeNames=["ApproximateReceiveCount"],
                )
            except Exception as error:
                if self._stopping.is_set():
                    return
                log.warning("receive failed", extra={"node": self.config.node_name, "error": str(error)})
                self._stopping.wait(0.5)
                continue
            for message in answer.get("Messages", []):
                if self._killed.is_set():
                    return  # gone between the poll and now: the message comes back by itself
                self._handle(number, cell, message)

    def _handle(self, number: int, cell: SlotGate, message: dict[str, Any]) -> None:
        message_id, receipt = message["MessageId"], message["ReceiptHandle"]
        if self._stopping.is_set() or not cell.try_start():
            self._visibility(receipt, 0)  # the gate shut while the poll was under way
            self.recorder.write("fenced", message_id=message_id, slot=number)
            return
        self.keeper.poke()
        receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        started = self.recorder.write("job_started", message_id=message_id, slot=number, receive_count=receive_count)
        seconds = self._job_seconds()
        if seconds > self.config.visibility_seconds / 2:
            self._visibility(receipt, int(seconds) + self.config.visibility_seconds)
        cut_short = self._stopping.wait(seconds)
        if self._killed.is_set():
            outcome = "killed"  # the gate cell stays marked: a vanished node holds its job to the end
        elif cut_short:
            outcome = "handed_back" if self._visibility(receipt, 0) else "hand_back_failed"
        else:
            outcome = "done" if self._delete(receipt) else "delete_failed"
        ended = time.monotonic()  # before the gate hears of it: the job is in hand until then
        if outcome != "killed":
            cell.finish()
            self.keeper.poke()
        self.recorder.write(
            "job_ended",
            message_id=message_id,
            slot=number,
            outcome=outcome,
            receive_count=receive_count,
            started_monotonic=started["monotonic"],
            started_wall=started["wall"],
            ended_monotonic=ended,
        )

    def _visibility(self, receipt: str, seconds: int) -> bool:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.config.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
            return True
        except Exception as error:
            log.warning("could not change visibility", extra={"node": self.config.node_name, "error": str(error)})
            return False

    def _delete(self, receipt: str) -> bool:
        try:
            self.sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=receipt)
            return True
        except Exception as error:
            log.warning("could not delete the message", extra={"node": self.config.node_name, "error": str(error)})
            return False


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig for an API server that checks no credentials (the local emulator)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server}}],
        "users": [{"name": "fake-node", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "fake-node"}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(config))
    return path


# ---------------------------------------------------------------------- as a process


def _job_seconds(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        bounds = (float(low), float(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH seconds (e.g. 0.5:3), not {text!r}") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH, not {text!r}")
    return bounds


def parse_args(argv: Sequence[str] | None = None) -> FakeNodeConfig:
    parser = argparse.ArgumentParser(prog="python -m framescale.local.fake_node", description=__doc__.split("\n")[0])
    parser.add_argument("--node", required=True, help="node name (the Lease is framescale-busy-<node>)")
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--namespace", default="default", help="namespace of the node Lease")
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig of the API server (default: kubectl's)")
    parser.add_argument("--record", type=Path, default=None, help="JSON lines file the events are appended to")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--job-seconds", type=_job_seconds, default=(0.5, 2.0), help="LOW:HIGH, uniform")
    parser.add_argument("--lease-duration", type=float, default=15.0)
    parser.add_argument("--lease-poll", type=float, default=0.25)
    parser.add_argument("--wait-seconds", type=int, default=1, choices=range(21), metavar="0-20")
    parser.add_argument("--visibility-seconds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--wall-skew", type=float, default=0.0, help="seconds this node's wall clock is ahead")
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    return FakeNodeConfig(
        node_name=args.node,
        queue_url=args.queue_url,
        namespace=args.namespace,
        pipeline=args.pipeline,
        kubeconfig=args.kubeconfig,
        record_path=args.record,
        slots=args.slots,
        job_seconds=args.job_seconds,
        lease_duration_seconds=args.lease_duration,
        lease_poll_seconds=args.lease_poll,
        wait_seconds=args.wait_seconds,
        visibility_seconds=args.visibility_seconds,
        seed=args.seed,
        wall_skew_seconds=args.wall_skew,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    node = FakeNode(parse_args(argv)).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    while not stop.wait(0.5):
        pass
    node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
