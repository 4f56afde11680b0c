"""moto in server mode with taps for the scenarios' referee: ``python -m tests.scenarios.moto_tap
--port P --referee URL``.

The server is moto's own (its WSGI app under werkzeug, as ``moto.server`` runs it), in a process of
its own so that AWS requests do not wait on the test process. Three taps:

* every EC2 instance death (``Instance.terminate``, whatever asked for it) is reported to the
  referee *before* the instance is marked terminated, and the request waits for the referee's
  answer: the referee kills the fake node there and then, and notes the jobs it had in hand. The
  report names the outermost Auto Scaling call it happened in (``TerminateInstanceInAutoScalingGroup``,
  ``SetDesiredCapacity`` — AWS chose the victim —, ...), else the request's action
  (``CompleteLifecycleAction``, EC2's ``TerminateInstances``), else ``LifecycleTimeout`` (the
  simulation's own thread), and the caller (the access key id it was signed with);
* with the lifecycle-hook simulation, every instance put in ``Terminating:Wait`` is reported the
  same way (``held``): who chose it is known there, not when the hold ends;
* every change of a group's desired capacity is reported the same way (for reaction times);
* every Auto Scaling or EC2 write is listed with its caller: ``GET /_tap/calls``.

One change of behaviour: receives of one queue are served one at a time (``_one_receive_at_a_time``).

The lifecycle-hook simulation of ``framescale.local.moto_extensions`` is installed first when the
local stack has one (``GET /_tap/info`` says whether).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from framescale import lifecycle

WRITE_ACTIONS = frozenset(
    {
        "SetDesiredCapacity",
        "UpdateAutoScalingGroup",
        "TerminateInstanceInAutoScalingGroup",
        "SetInstanceProtection",
        "CompleteLifecycleAction",
        "RecordLifecycleActionHeartbeat",
        "ModifyInstanceAttribute",
        "CreateTags",
        "DeleteTags",
        "TerminateInstances",
    }
)
# The outermost Auto Scaling backend call a termination happens in names its cause.
CAUSES = {
    "terminate_instance": "TerminateInstanceInAutoScalingGroup",
    "set_desired_capacity": "SetDesiredCapacity",
    "update_auto_scaling_group": "UpdateAutoScalingGroup",
    "complete_lifecycle_action": "CompleteLifecycleAction",
}


BACKGROUND = "LifecycleTimeout"  # no request: the simulation's own thread (a hook's timeout)


class _Request(threading.local):
    """Per request thread: the backend calls under way (outermost first), the request's action
    and who made it."""

    def __init__(self) -> None:
        self.causes: list[str] = []
        self.action = ""
        self.caller = ""

    def cause(self) -> str:
        if self.causes:
            return self.causes[0]
        return self.action or BACKGROUND


class Taps:
    def __init__(self, report: Callable[[str, dict[str, Any]], None]) -> None:
        self.report = report
        self.request = _Request()
        self.calls: list[tuple[str, str, float]] = []
        self.calls_lock = threading.Lock()
        self.extensions: str | None = None

    def install(self) -> None:
        from moto.autoscaling import models as autoscaling_models
        from moto.ec2.models import instances as ec2_instances

        try:
            from framescale.local import moto_extensions  # type: ignore[attr-defined]

            install = getattr(moto_extensions, "install", None)
            if install is not None:
                install()
            self.extensions = moto_extensions.__name__
        except ImportError:
            self.extensions = None
        taps = self
        original_terminate = ec2_instances.Instance.terminate

        def terminate(instance: Any, *args: Any, **kwargs: Any) -> Any:
            if instance._state.name != "terminated":
                # A detached instance has lost its group tag by now; moto keeps the group on it.
                group = getattr(getattr(instance, "autoscaling_group", None), "name", None) or next(
                    (t.get("value") for t in instance.get_tags() if t.get("key") == "aws:autoscaling:groupName"), None
                )
                taps.report(
                    "terminated",
                    {
                        "instance_id": instance.id,
                        "group": group,
                        "cause": taps.request.cause(),
                        "caller": taps.request.caller,
                    },
                )
            return original_terminate(instance, *args, **kwargs)

        ec2_instances.Instance.terminate = terminate  # type: ignore[method-assign]
        if self.extensions is not None:  # a termination put on hold: who chose this instance
            from framescale.local import moto_extensions as simulation  # type: ignore[attr-defined]

            begin = getattr(simulation, "begin_termination", None)
            if begin is not None:

                def held(group: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
                    taps.report(
                        "held",
                        {
                            "instance_id": state.instance.id,
                            "group": group.name,
                            "cause": taps.request.cause(),
                            "caller": taps.request.caller,
                        },
                    )
                    return begin(group, state, *args, **kwargs)

                simulation.begin_termination = held
        self._one_receive_at_a_time()
        backend = autoscaling_models.AutoScalingBackend
        for method, cause in CAUSES.items():
            if method in backend.__dict__:
                setattr(backend, method, self._watched(backend.__dict__[method], cause))

    @staticmethod
    def _one_receive_at_a_time() -> None:
        """moto's ReceiveMessage checks that a message is visible and then marks it received with
        no lock between the two, so two long polls at once can both take one message (a 200
        scale-in run had one message done twice in 1400 jobs, with no node killed). The scenarios
        count every message done twice, so receives of one queue are made one at a time here."""
        from moto.sqs import models as sqs_models

        locks: dict[str, threading.Lock] = {}
        registry = threading.Lock()
        original = sqs_models.SQSBackend.receive_message

        @functools.wraps(original)
        def receive(backend: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
            with registry:
                lock = locks.setdefault(queue_name, threading.Lock())
            with lock:
                return original(backend, queue_name, *args, **kwargs)

        sqs_models.SQSBackend.receive_message = receive  # type: ignore[method-assign]

    def _watched(self, original: Any, cause: str) -> Any:
        """Note the cause while the call runs, and report the desired capacities it changed."""
        taps = self

        @functools.wraps(original)
        def wrapped(backend: Any, *args: Any, **kwargs: Any) -> Any:
            before = {name: group.desired_capacity for name, group in backend.autoscaling_groups.items()}
            taps.request.causes.append(cause)
            try:
                return original(backend, *args, **kwargs)
            finally:
                taps.request.causes.pop()
                if not taps.request.causes:
                    for name, group in backend.autoscaling_groups.items():
                        if name in before and group.desired_capacity != before[name]:
                            taps.report(
                                "capacity",
                                {"group": name, "before": before[name] or 0, "after": group.desired_capacity or 0},
                            )

        return wrapped

    def middleware(self, app: Any) -> Any:
        taps = self

        def serve(environ: dict[str, Any], start_response: Any) -> Any:
            path = environ.get("PATH_INFO", "")
            if path.startswith("/_tap/"):
                with taps.calls_lock:
                    body = {"calls": taps.calls} if path == "/_tap/calls" else {"extensions": taps.extensions}
                    data = json.dumps(body).encode()
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
                return [data]
            authorization = environ.get("HTTP_AUTHORIZATION", "")
            caller = authorization.partition("Credential=")[2].partition("/")[0] or "anonymous"
            action = environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2]
            if not action and environ.get("REQUEST_METHOD") == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                raw = environ["wsgi.input"].read(length) if length else b""
                environ["wsgi.input"] = io.BytesIO(raw)
                for part in raw.split(b"&"):
                    if part.startswith(b"Action="):
                        action = part[len(b"Action=") :].decode(errors="replace")
            taps.request.caller, taps.request.action = caller, action
            if action in WRITE_ACTIONS:
                with taps.calls_lock:
                    taps.calls.append((caller, action, time.monotonic()))
            return app(environ, start_response)

        return serve


def _reporter(referee: str) -> Callable[[str, dict[str, Any]], None]:
    def report(kind: str, event: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{referee}/{kind}", data=json.dumps(event).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except OSError as error:  # the referee is gone (test over): nothing left to tell
            logging.getLogger(__name__).warning("referee unreachable: %s", error)

    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.scenarios.moto_tap")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--referee", required=True, help="base URL the taps report to")
    args = parser.parse_args()
    lifecycle.die_with_parent()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    taps = Taps(_reporter(args.referee))
    taps.install()
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1", args.port, taps.middleware(app), threaded=True, request_handler=MotoRequestHandler
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
