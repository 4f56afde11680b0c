"""What the moto server does differently from EC2 Auto Scaling, made to behave as AWS documents.

``python -m framescale.local.moto_extensions`` is ``python -m moto.server`` (same arguments) with
this module's changes installed in the server process, the way the Kubernetes API emulator
extends kmock. The local stack (``moto_server.MotoServer``) always starts it.

What moto 5.2 does by itself, checked here:

* ``NewInstancesProtectedFromScaleIn`` is copied to each instance it launches (kept).
* ``SetDesiredCapacity`` down removes instances at once, skipping ``ProtectedFromScaleIn`` ones
  (when all are protected, capacity stays above desired, as on AWS), but it may pick a Standby
  instance and it calls EC2 ``TerminateInstances``, which refuses an instance with
  ``DisableApiTermination`` *after* the group has already let it go. On AWS, termination
  protection never stops Auto Scaling, and only InService instances are scaled in.
* ``TerminateInstanceInAutoScalingGroup`` ignores scale-in protection (as AWS does), detaches, then
  fails on ``DisableApiTermination`` the same way; it does not check the group's MinSize.
* EC2 ``TerminateInstances`` refuses ``DisableApiTermination`` instances (as AWS does); an
  instance of a group terminated that way stays listed InService in the group forever.
* Lifecycle hooks are stored and described, but never run: no ``Terminating:Wait``, and no
  ``CompleteLifecycleAction`` or ``RecordLifecycleActionHeartbeat`` at all.
* ``SetInstanceHealth`` records the status and nothing else; nothing models a Spot interruption.

What this module simulates instead:

* **Termination through the hook.** When the group has an ``autoscaling:EC2_INSTANCE_TERMINATING``
  hook, every termination Auto Scaling performs (scale-in by ``SetDesiredCapacity``,
  ``TerminateInstanceInAutoScalingGroup`` by anyone, health replacement, a Spot interruption, a
  rebalance or instance refresh) puts the instance in ``Terminating:Wait`` with a lifecycle action
  token. It stays there, running, listed in the group but not counted as capacity, until
  ``CompleteLifecycleAction`` (``CONTINUE`` or ``ABANDON``: for a termination hook both let the
  termination proceed) or until the hook's ``HeartbeatTimeout`` passes without a
  ``RecordLifecycleActionHeartbeat`` (each resets it), when the hook's ``DefaultResult`` applies
  (again: the instance terminates). The global timeout is 100 heartbeat timeouts or 48 hours,
  whichever is less. One hook per group is run (the first by name); AWS runs several in parallel.
  Without a hook, the instance terminates at once. No notification is sent to the hook's target:
  a consumer finds waiting instances with ``DescribeAutoScalingGroups`` /
  ``DescribeAutoScalingInstances`` (``LifecycleState``).
* **Scale-in** picks only InService instances that are not protected from scale-in, in moto's
  order (AWS's default termination policy balances zones and prefers the oldest launch template;
  not modelled), and never fails on ``DisableApiTermination`` (Auto Scaling ignores it).
* **TerminateInstanceInAutoScalingGroup** answers ``ValidationError`` for an unknown instance, one
  already terminating, and a decrement below MinSize ("...violate group's min size constraint"),
  as AWS does; without ``ShouldDecrementDesiredCapacity`` a replacement is launched at once.
* **Health replacement**: ``SetInstanceHealth(Unhealthy)`` on an InService instance terminates it
  (through the hook) and launches a replacement, ignoring both protection flags, as AWS does.
* **Spot interruption** and other AWS-initiated replacements: ``POST
  /moto-api/framescale/interrupt`` with ``{"InstanceId": "i-...", "Cause": "SpotInterruption" |
  "Rebalance" | "InstanceRefresh" | "HealthReplacement", "NoticeSeconds": 120}``: like a health
  replacement; for ``SpotInterruption`` EC2 reclaims the instance ``NoticeSeconds`` after the
  notice whatever the hook says (the two-minute warning).
* **An instance terminated with EC2 TerminateInstances** (allowed only without
  ``DisableApiTermination``) is dropped from its group and replaced, without a hook, as AWS's
  health check does for an instance that is gone.

Times are the server's monotonic clock; the hook's timeout is taken as given (AWS requires 30 to
7200 seconds; tests here use a few seconds). A background thread applies timeouts every 0.2 s.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

TERMINATING_TRANSITION = "autoscaling:EC2_INSTANCE_TERMINATING"
WAIT = "Terminating:Wait"
PROCEED = "Terminating:Proceed"
GLOBAL_TIMEOUT_CAP = 172_800.0
INTERRUPT_PATH = "/moto-api/framescale/interrupt"
CAUSES = ("SpotInterruption", "Rebalance", "InstanceRefresh", "HealthReplacement")
TICK_SECONDS = 0.2

log = logging.getLogger(__name__)
_lock = threading.RLock()
_installed = False


@dataclass
class LifecycleAction:
    """A pending termination lifecycle action of one instance."""

    hook_name: str
    token: str
    cause: str
    heartbeat_timeout: float
    default_result: str
    started: float
    deadline: float  # the heartbeat timeout, moved on by each heartbeat
    global_deadline: float
    reclaim_at: float | None = None  # a Spot interruption: EC2 takes the instance then, hook or not
    heartbeats: int = field(default=0)

    def expires_at(self) -> float:
        times = [self.deadline, self.global_deadline]
        if self.reclaim_at is not None:
            times.append(self.reclaim_at)
        return min(times)


def _action(state: Any) -> LifecycleAction | None:
    return getattr(state, "framescale_action", None)


def _backend_of(group: Any) -> Any:
    return group.autoscaling_backend


def _termination_hook(group: Any) -> Any:
    hooks = [
        hook
        for hook in _backend_of(group).lifecycle_hooks.values()
        if hook.auto_scaling_group_name == group.name and hook.lifecycle_transition == TERMINATING_TRANSITION
    ]
    return min(hooks, key=lambda hook: hook.name) if hooks else None


def begin_termination(group: Any, state: Any, cause: str, *, reclaim_after: float | None = None) -> None:
    """Take an instance out of service: into Terminating:Wait under the group's hook, else gone."""
    hook = _termination_hook(group)
    if hook is None:
        finish_termination(group, state)
        return
    now = time.monotonic()
    timeout = float(hook.heartbeat_timeout)
    state.lifecycle_state = WAIT
    state.framescale_action = LifecycleAction(
        hook_name=hook.name,
        token=str(uuid.uuid4()),
        cause=cause,
        heartbeat_timeout=timeout,
        default_result=str(hook.default_result),
        started=now,
        deadline=now + timeout,
        global_deadline=now + min(100 * timeout, GLOBAL_TIMEOUT_CAP),
        reclaim_at=None if reclaim_after is None else now + reclaim_after,
    )


def finish_termination(group: Any, state: Any) -> None:
    """The instance leaves the group and terminates; Auto Scaling ignores DisableApiTermination."""
    state.lifecycle_state = PROCEED
    if state in group.instance_states:
        group.instance_states.remove(state)
    state.instance.terminate()


def _find_state(backend: Any, instance_id: str) -> tuple[Any, Any] | None:
    for group in backend.autoscaling_groups.values():
        for state in group.instance_states:
            if state.instance.id == instance_id:
                return group, state
    return None


def _top_up(group: Any) -> None:
    """Launch replacements up to the desired capacity (Terminating instances do not count)."""
    missing = (group.desired_capacity or 0) - len(group.active_instances())
    if missing > 0:
        group.replace_autoscaling_group_instances(missing, group.get_propagated_tags())


def _set_desired_capacity(original: Any) -> Any:
    def set_desired_capacity(self: Any, new_capacity: int | None) -> None:
        if self.mixed_instances_policy:  # not simulated: moto's own behaviour
            original(self, new_capacity)
            return
        with _lock:
            self.desired_capacity = self.min_size if new_capacity is None else new_capacity
            active = self.active_instances()
            surplus = len(active) - (self.desired_capacity or 0)
            if surplus < 0:
                _top_up(self)
            elif surplus > 0:
                victims = [state for state in active if not state.protected_from_scale_in][:surplus]
                for state in victims:
                    begin_termination(self, state, "ScaleIn")
        if self.name in self.autoscaling_backend.autoscaling_groups:
            self.autoscaling_backend.update_attached_elbs(self.name)
            self.autoscaling_backend.update_attached_target_groups(self.name)

    return set_desired_capacity


def _terminate_instance(validation_error: type[Exception], activity: type[Any]) -> Any:
    def terminate_instance(self: Any, instance_id: str, should_decrement: bool) -> Any:
        with _lock:
            found = _find_state(self, instance_id)
            if found is None:
                raise validation_error(
                    f"Instance Id not found - No managed instance found for instance ID: {instance_id}"
                )
            group, state = found
            if state.lifecycle_state not in ("InService", "Standby", "Pending", "Pending:Wait"):
                raise validation_error(
                    f"The instance {instance_id} is in {state.lifecycle_state}: it is already being terminated"
                )
            original = group.desired_capacity
            if should_decrement and state.lifecycle_state != "Standby":
                if original <= group.min_size:
                    raise validation_error(
                        f"Currently, desiredSize equals minSize ({group.min_size}). Terminating instance without "
                        "replacement will violate group's min size constraint. Either set "
                        "shouldDecrementDesiredCapacity flag to false or lower group's min size."
                    )
                group.desired_capacity = original - 1
            begin_termination(group, state, "TerminateInstanceInAutoScalingGroup")
            if not should_decrement:
                _top_up(group)
            return activity(state.instance, original)

    return terminate_instance


def _replace(group: Any, state: Any, cause: str, reclaim_after: float | None = None) -> None:
    begin_termination(group, state, cause, reclaim_after=reclaim_after)
    _top_up(group)


def _set_instance_health(original: Any) -> Any:
    def set_instance_health(self: Any, instance_id: str, health_status: str) -> None:
        with _lock:
            original(self, instance_id, health_status)
            found = _find_state(self, instance_id)
            if health_status == "Unhealthy" and found is not None and found[1].lifecycle_state == "InService":
                _replace(found[0], found[1], "HealthReplacement")

    return set_instance_health


def _pending(
    backend: Any, validation_error: type[Exception], params: dict[str, Any]
) -> tuple[Any, Any, LifecycleAction]:
    group_name = params.get("AutoScalingGroupName")
    hook_name = params.get("LifecycleHookName")
    instance_id = params.get("InstanceId")
    token = params.get("LifecycleActionToken")
    if not group_name or not hook_name:
        raise validation_error("AutoScalingGroupName and LifecycleHookName are required")
    if not instance_id and not token:
        raise validation_error("Either InstanceId or LifecycleActionToken must be given")
    group = backend.autoscaling_groups.get(group_name)
    if group is None:
        raise validation_error(f"AutoScalingGroup name not found - {group_name}")
    for state in group.instance_states:
        action = _action(state)
        if state.lifecycle_state != WAIT or action is None or action.hook_name != hook_name:
            continue
        if (instance_id and state.instance.id == instance_id) or (token and action.token == token):
            return group, state, action
    what = f"instance ID {instance_id}" if instance_id else f"token {token}"
    raise validation_error(f"No active Lifecycle Action found with {what}")


def complete_lifecycle_action(self: Any) -> Any:
    from moto.autoscaling.exceptions import ValidationError
    from moto.core.responses import EmptyResult

    params = self._get_params()
    result = params.get("LifecycleActionResult")
    if result not in ("CONTINUE", "ABANDON"):
        raise ValidationError(f"LifecycleActionResult must be CONTINUE or ABANDON, not {result!r}")
    with _lock:
        group, state, _ = _pending(self.autoscaling_backend, ValidationError, params)
        finish_termination(group, state)  # for a termination hook, both results let it proceed
    return EmptyResult()


def record_lifecycle_action_heartbeat(self: Any) -> Any:
    from moto.autoscaling.exceptions import ValidationError
    from moto.core.responses import EmptyResult

    with _lock:
        _, _, action = _pending(self.autoscaling_backend, ValidationError, self._get_params())
        action.deadline = time.monotonic() + action.heartbeat_timeout
        action.heartbeats += 1
    return EmptyResult()


def interrupt(request: Any, full_url: str, headers: Any) -> tuple[int, dict[str, str], str]:
    """The simulated AWS-initiated termination and replacement entry point (see the docstring)."""
    from moto.autoscaling.models import autoscaling_backends

    def answer(status: int, body: dict[str, Any]) -> tuple[int, dict[str, str], str]:
        return status, {"Content-Type": "application/json"}, json.dumps(body)

    if request.method != "POST":
        return answer(405, {"error": "POST a JSON body"})
    try:
        body = json.loads(request.get_data() or b"{}")
    except ValueError:
        return answer(400, {"error": "the body is not JSON"})
    instance_id = body.get("InstanceId") if isinstance(body, dict) else None
    cause = body.get("Cause", "SpotInterruption") if isinstance(body, dict) else None
    notice = body.get("NoticeSeconds", 120) if isinstance(body, dict) else None
    if not isinstance(instance_id, str) or cause not in CAUSES:
        return answer(400, {"error": f"give InstanceId and a Cause among {list(CAUSES)}"})
    if isinstance(notice, bool) or not isinstance(notice, (int, float)) or notice < 0:
        return answer(400, {"error": "NoticeSeconds must be a number >= 0"})
    with _lock:
        for regions in list(autoscaling_backends.values()):
            for backend in list(regions.values()):
                found = _find_state(backend, instance_id)
                if found is None:
                    continue
                group, state = found
                if state.lifecycle_state != "InService":
                    return answer(409, {"error": f"{instance_id} is {state.lifecycle_state}, not InService"})
                reclaim = float(notice) if cause == "SpotInterruption" else None
                _replace(group, state, cause, reclaim_after=reclaim)
                return answer(200, {"InstanceId": instance_id, "Cause": cause, "LifecycleState": state.lifecycle_state})
    return answer(404, {"error": f"{instance_id} is in no Auto Scaling group"})


def tick(now: float | None = None) -> None:
    """Apply lifecycle timeouts and replace instances EC2 terminated behind the group's back."""
    from moto.autoscaling.models import autoscaling_backends

    now = time.monotonic() if now is None else now
    with _lock:
        for regions in list(autoscaling_backends.values()):
            for backend in list(regions.values()):
                for group in list(backend.autoscaling_groups.values()):
                    gone = False
                    for state in list(group.instance_states):
                        action = _action(state)
                        if state.lifecycle_state == WAIT and action is not None and now >= action.expires_at():
                            finish_termination(group, state)  # DefaultResult: either way it terminates
                        elif state.lifecycle_state == "InService" and state.instance.state == "terminated":
                            group.instance_states.remove(state)
                            gone = True
                    if gone:
                        _top_up(group)


def _ticker() -> None:
    while True:
        time.sleep(TICK_SECONDS)
        try:
            tick()
        except Exception:  # a bad tick must not stop the next one; the server log shows it
            log.exception("lifecycle tick failed")


def install() -> None:
    """Patch moto's Auto Scaling in this process (idempotent)."""
    global _installed
    if _installed:
        return
    from moto.autoscaling import models, responses
    from moto.autoscaling.exceptions import ValidationError
    from moto.moto_api._internal import urls

    models.FakeAutoScalingGroup.set_desired_capacity = _set_desired_capacity(  # type: ignore[method-assign]
        models.FakeAutoScalingGroup.set_desired_capacity
    )
    models.AutoScalingBackend.terminate_instance = _terminate_instance(  # type: ignore[method-assign]
        ValidationError, models.TerminateInstanceActivity
    )
    models.AutoScalingBackend.set_instance_health = _set_instance_health(  # type: ignore[method-assign]
        models.AutoScalingBackend.set_instance_health
    )
    responses.AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action  # type: ignore[attr-defined]
    responses.AutoScalingResponse.record_lifecycle_action_heartbeat = record_lifecycle_action_heartbeat  # type: ignore[attr-defined]
    urls.url_paths["{0}" + INTERRUPT_PATH] = interrupt
    _installed = True


def main(argv: list[str] | None = None) -> None:
    install()
    threading.Thread(target=_ticker, name="lifecycle-ticker", daemon=True).start()
    from moto.server import main as moto_main

    moto_main(argv)


if __name__ == "__main__":
    main()
