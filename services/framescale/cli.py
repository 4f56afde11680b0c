"""``framescale``: small tools around the pipeline.

    framescale video synthetic OUT.mp4 [--frames N --fps F --width W --height H --seed S]
    framescale video photos OUT.mp4           a short video from photographs of people
    framescale submit QUEUE_URL VIDEO [--output s3://b/p/] [--job-id ID] [--sample-fps F]
    framescale check-message FILE|-           parse a job message as the worker would
    framescale helm-values STACK... [--describe-stacks FILE|-] [--out FILE]
                                              Helm values from pipeline stacks (deploy/cloudformation/)
    framescale demo                           the whole pipeline locally (make demo)

AWS clients honour AWS_ENDPOINT_URL, so ``submit`` works against the local moto server too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from framescale.messages import InvalidMessage, parse_message


def _video(args: argparse.Namespace) -> int:
    from framescale.local.videos import write_photo_video, write_synthetic_video

    if args.kind == "photos":
        names = write_photo_video(args.out, fps=args.fps, seconds_per_photo=args.seconds_per_photo)
        print(f"wrote {args.out}: photographs {', '.join(names)}")
        return 0
    video = write_synthetic_video(
        args.out, width=args.width, height=args.height, fps=args.fps, frame_count=args.frames, seed=args.seed
    )
    truth = args.out.with_suffix(".truth.json")
    video.save_truth(truth)
    print(f"wrote {args.out} ({video.frame_count} frames) and its ground truth {truth}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from framescale import aws
    from framescale.messages import parse_s3_url

    video = args.video
    if not video.startswith("s3://"):
        if not args.bucket:
            print("a local file needs --bucket to upload it to", file=sys.stderr)
            return 2
        path = Path(video)
        key = f"{args.prefix.rstrip('/')}/{path.name}" if args.prefix else path.name
        aws.client("s3").upload_file(str(path), args.bucket, key)
        video = f"s3://{args.bucket}/{key}"
    parse_s3_url(video, what="video")
    body: dict[str, object] = {"video": video}
    if args.output:
        body["output"] = args.output
    if args.job_id:
        body["job_id"] = args.job_id
    if args.sample_fps:
        body["sample_fps"] = args.sample_fps
    parse_message(json.dumps(body))  # refuse to send what the worker would dead-letter
    response = aws.client("sqs").send_message(QueueUrl=args.queue_url, MessageBody=json.dumps(body))
    print(json.dumps({"message_id": response["MessageId"], "body": body}))
    return 0


def _check(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        parsed = parse_message(text)
    except InvalidMessage as error:
        print(f"invalid: {error} (the worker would move it to the dead-letter queue)")
        return 1
    if parsed.ignored_reason:
        print(f"valid, ignored: {parsed.ignored_reason}")
        return 0
    for job in parsed.jobs:
        print(
            json.dumps(
                {
                    "video": job.video.url,
                    "output": job.output.url if job.output else "(FRAMESCALE_WORKER_OUTPUT)",
                    "job_id": job.job_id or "(derived from bucket, key and ETag)",
                    "sample_fps": job.sample_fps or "(FRAMESCALE_WORKER_SAMPLE_FPS)",
                }
            )
        )
    return 0


def _helm_values(args: argparse.Namespace) -> int:
    from framescale import helm_values

    try:
        if args.describe_stacks:
            text = sys.stdin.read() if args.describe_stacks == "-" else Path(args.describe_stacks).read_text()
            descriptions = helm_values.select(helm_values.parse_describe_stacks(text), args.stacks)
        elif not args.stacks:
            raise helm_values.StackOutputsError("name the stacks, or give --describe-stacks")
        else:
            descriptions = _described(args.stacks)
        stacks = [helm_values.pipeline_stack(d) for d in descriptions]
        values = helm_values.values_from_stacks(stacks)
    except (helm_values.StackOutputsError, OSError) as error:
        print(f"framescale helm-values: {error}", file=sys.stderr)
        return 2
    target = str(args.out) if args.out else "VALUES.yaml"
    comments = [
        f"Helm values for charts/framescale from the stack{'s' if len(stacks) > 1 else ''} "
        + ", ".join(s.name for s in stacks)
        + " (framescale helm-values).",
        f"Install: {helm_values.install_command(stacks, target)}",
    ]
    text = helm_values.to_yaml(values, comments)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}; install with:\n  {helm_values.install_command(stacks, target)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _described(stack_names: list[str]) -> list[dict[str, object]]:
    """DescribeStacks for each name (AWS_ENDPOINT_URL honoured), errors made into one line."""
    from botocore.exceptions import BotoCoreError, ClientError

    from framescale import aws, helm_values

    client = aws.client("cloudformation")
    try:
        return helm_values.describe_stacks(stack_names, client.describe_stacks)
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", str(error))
        raise helm_values.StackOutputsError(f"cannot describe the stacks: {message}") from None
    except BotoCoreError as error:
        raise helm_values.StackOutputsError(f"cannot reach CloudFormation: {error}") from None
    finally:
        client.close()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="framescale", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)

    video = commands.add_parser("video", help="write a sample video")
    video.add_argument("kind", choices=["synthetic", "photos"])
    video.add_argument("out", type=Path)
    video.add_argument("--frames", type=int, default=100)
    video.add_argument("--fps", type=float, default=10.0)
    video.add_argument("--width", type=int, default=320)
    video.add_argument("--height", type=int, default=240)
    video.add_argument("--seed", type=int, default=0)
    video.add_argument("--seconds-per-photo", type=float, default=2.0)
    video.set_defaults(run=_video)

    submit = commands.add_parser("submit", help="enqueue a job (uploading a local video first)")
    submit.add_argument("queue_url")
    submit.add_argument("video", help="s3://bucket/key or a local file (with --bucket)")
    submit.add_argument("--bucket", help="where to upload a local file")
    submit.add_argument("--prefix", default="incoming", help="key prefix for an uploaded file")
    submit.add_argument("--output", help="s3://bucket/prefix/ for results")
    submit.add_argument("--job-id")
    submit.add_argument("--sample-fps", type=float)
    submit.set_defaults(run=_submit)

    check = commands.add_parser("check-message", help="parse a job message as the worker would")
    check.add_argument("file", help="a file with the message body, or - for standard input")
    check.set_defaults(run=_check)

    values = commands.add_parser(
        "helm-values", help="Helm values from the outputs of pipeline stacks (deploy/cloudformation/)"
    )
    values.add_argument("stacks", nargs="*", help="stack names (with --describe-stacks: all of its stacks when none)")
    values.add_argument(
        "--describe-stacks",
        metavar="FILE",
        help="read the outputs from the JSON of `aws cloudformation describe-stacks` (- for standard input) "
        "instead of calling CloudFormation",
    )
    values.add_argument("--out", "-o", type=Path, help="write the values here (default: standard output)")
    values.set_defaults(run=_helm_values)

    demo = commands.add_parser("demo", help="run the whole pipeline locally")
    demo.set_defaults(run=lambda _: __import__("framescale.demo", fromlist=["main"]).main([]))
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except InvalidMessage as error:
        print(f"invalid: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
