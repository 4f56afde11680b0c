"""The AWS side of the kind path, run on the host against the port-forwarded moto server.

    python docker/kind/kind_aws.py setup               queue + DLQ, buckets, topics, Auto Scaling group
    python docker/kind/kind_aws.py run-job             one video end to end; checks results and notification
    python docker/kind/kind_aws.py wait-desired N      waits for the group's desired capacity to be N

kind.sh sets AWS_ENDPOINT_URL (the port-forward), AWS_REGION and test credentials. Names match
charts/framescale/ci/kind-values.yaml: the pipeline "framescale" of framescale.local.stack
(framescale-jobs, framescale-dlq, framescale-videos, framescale-results, framescale-success,
framescale-error) and the group "framescale-kind-accelerators".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from framescale import aws
from framescale.local import stack, videos

STACK_NAME = "framescale"
GROUP_NAME = "framescale-kind-accelerators"
LAUNCH_TEMPLATE = "framescale-kind-accelerators"
RESULTS_PREFIX = "results/"
GROUP_MAX_SIZE = 4


def setup() -> None:
    """Create everything the kind values file names; every step may run again."""
    local = stack.provision(STACK_NAME)
    ec2, autoscaling = aws.client("ec2"), aws.client("autoscaling")
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    if not images:
        raise SystemExit("moto offered no AMI to build the fake node group from")
    templates = ec2.describe_launch_templates(Filters=[{"Name": "launch-template-name", "Values": [LAUNCH_TEMPLATE]}])[
        "LaunchTemplates"
    ]
    if not templates:
        ec2.create_launch_template(
            LaunchTemplateName=LAUNCH_TEMPLATE,
            LaunchTemplateData={"ImageId": images[0]["ImageId"], "InstanceType": "g5.xlarge"},
        )
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP_NAME])["AutoScalingGroups"]
    if not groups:
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=GROUP_NAME,
            LaunchTemplate={"LaunchTemplateName": LAUNCH_TEMPLATE, "Version": "$Latest"},
            MinSize=0,
            MaxSize=GROUP_MAX_SIZE,
            DesiredCapacity=0,
            AvailabilityZones=[f"{aws.region()}a"],
            Tags=[{"Key": "framescale.io/node-group", "Value": GROUP_NAME, "PropagateAtLaunch": True}],
        )
    print(
        json.dumps(
            {
                "queue_url": local.queue_url,
                "dead_letter_queue_url": local.dead_letter_queue_url,
                "auto_scaling_group": GROUP_NAME,
            },
            indent=2,
        )
    )


def run_job(timeout: float) -> None:
    """Upload a video of real photographs, queue it, and wait for its results and notification."""
    local = stack.provision(STACK_NAME)
    s3, sqs = aws.client("s3"), aws.client("sqs")
    job_id = f"kind-e2e-{int(time.time())}"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "people.mp4"
        photos = videos.write_photo_video(path)
        key = f"kind/{job_id}.mp4"
        s3.upload_file(str(path), local.input_bucket, key)
    print(f"uploaded s3://{local.input_bucket}/{key} ({', '.join(photos)})")
    sqs.send_message(
        QueueUrl=local.queue_url,
        MessageBody=json.dumps({"video": f"s3://{local.input_bucket}/{key}", "job_id": job_id}),
    )
    print(f"queued job {job_id}; waiting for s3://{local.output_bucket}/{RESULTS_PREFIX}{job_id}/summary.json")

    summary_key = f"{RESULTS_PREFIX}{job_id}/summary.json"
    deadline = time.monotonic() + timeout
    summary: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            summary = json.loads(s3.get_object(Bucket=local.output_bucket, Key=summary_key)["Body"].read())
            break
        except s3.exceptions.NoSuchKey:
            visible, in_flight = stack.queue_depth(sqs, local.queue_url)
            print(f"  waiting: {visible} visible, {in_flight} in flight")
            time.sleep(5)
    if summary is None:
        dead = stack.drain(sqs, local.dead_letter_queue_url)
        raise SystemExit(
            f"no results after {timeout:.0f} s; dead-letter queue holds {len(dead)} message(s): "
            f"{[m.get('MessageAttributes') for m in dead]}"
        )

    body = s3.get_object(Bucket=local.output_bucket, Key=f"{RESULTS_PREFIX}{job_id}/detections.jsonl")["Body"]
    lines = [json.loads(line) for line in body.read().decode().splitlines() if line.strip()]
    frames = [line["frame"] for line in lines]
    if not lines or frames != sorted(frames):
        raise SystemExit(f"detections.jsonl has {len(lines)} line(s), frames in order: {frames == sorted(frames)}")
    people = sum(1 for line in lines for d in line["detections"] if d["label"] == "person")
    if people == 0:
        raise SystemExit("the person detector found nobody in photographs of people")
    print(
        f"summary: status={summary.get('status')} frames={summary.get('frames')} "
        f"labels={summary.get('label_counts')}; {len(lines)} frame lines, {people} person detections"
    )

    notes = stack.drain(sqs, local.success_inbox_url, wait=5)
    ours = [json.loads(m["Body"]) for m in notes if job_id in m["Body"]]
    if not ours or ours[0].get("invocationStatus") != "Completed":
        raise SystemExit(f"no Completed success notification for {job_id}: {ours}")
    print(f"notification: {ours[0]['invocationStatus']} -> {ours[0]['responseParameters']['outputLocation']}")


def wait_desired(desired: int, timeout: float) -> None:
    autoscaling = aws.client("autoscaling")
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP_NAME])["AutoScalingGroups"][0]
        seen = group["DesiredCapacity"]
        if seen == desired:
            print(f"Auto Scaling group {GROUP_NAME}: desired capacity {seen}, {len(group['Instances'])} instance(s)")
            return
        time.sleep(2)
    raise SystemExit(f"{GROUP_NAME}: desired capacity is {seen}, not {desired}, after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup")
    run = commands.add_parser("run-job")
    run.add_argument("--timeout", type=float, default=900.0)
    wait = commands.add_parser("wait-desired")
    wait.add_argument("desired", type=int)
    wait.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.command == "setup":
        setup()
    elif args.command == "run-job":
        run_job(args.timeout)
    else:
        wait_desired(args.desired, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
