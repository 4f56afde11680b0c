"""``make bench``: every benchmark and the capacity simulator, into one JSON file.

    python -m bench.run --models models --out bench/results/latest.json [--quick]

``--quick`` runs each part once on tiny inputs (a smoke test of the machinery; its numbers
mean little). bench/README.md explains how to read the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import decode, inputs, machine, procfs, reaction, simulate, stack, throughput, traces, worker_bench
from bench import images as image_bench
from bench.plots import plot_simulation


@dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    throughput_videos: tuple[tuple[str, int, int, float], ...]  # (kind, width, height, seconds)
    throughput_models: tuple[str, ...]
    throughput_sample_rates: tuple[float, ...]
    throughput_rounds: int
    decode_videos: tuple[tuple[int, int, float], ...]  # (width, height, seconds), x264 defaults
    decode_sample_rates: tuple[float, ...]
    decode_rounds: int
    memory_videos: tuple[tuple[int, int, float], tuple[int, int, float]]  # short, 10x long
    # Every frame by default: the short video alone fills the batches and the in-flight window,
    # so a difference in peak memory can only come from the length of the video.
    memory_sample_fps: float
    worker_rounds: int
    reaction_trials: int
    race_scale_ins: int  # the real-stack racing scale-in scenario: scale-ins wanted, and a time limit
    race_seconds: float
    traces: tuple[Path, ...]


FPS = 30.0
FULL = Plan(
    throughput_videos=(("photos", 1280, 720, 12.0), ("synthetic", 1280, 720, 8.0)),
    throughput_models=("null", "person"),
    throughput_sample_rates=(1.0, 5.0),
    throughput_rounds=3,
    decode_videos=((1280, 720, 30.0), (1920, 1080, 30.0)),
    decode_sample_rates=(0.2, 1.0, 5.0),
    decode_rounds=3,
    memory_videos=((640, 360, 12.0), (640, 360, 120.0)),
    memory_sample_fps=FPS,
    worker_rounds=3,
    reaction_trials=5,
    race_scale_ins=200,
    race_seconds=600.0,
    traces=tuple(traces.shipped_paths()),
)
QUICK = Plan(
    throughput_videos=(("synthetic", 640, 360, 3.0),),
    throughput_models=("null",),
    throughput_sample_rates=(1.0,),
    throughput_rounds=1,
    decode_videos=((640, 360, 6.0),),
    decode_sample_rates=(0.2, 1.0),
    decode_rounds=1,
    memory_videos=((320, 240, 2.0), (320, 240, 20.0)),
    memory_sample_fps=FPS,
    worker_rounds=1,
    reaction_trials=1,
    race_scale_ins=5,
    race_seconds=60.0,
    traces=tuple(traces.shipped_paths()),
)


def _say(message: str) -> None:
    print(message, flush=True)


def _section(report: dict[str, Any], name: str, work: Callable[[], Any]) -> None:
    """Run one part; a failure is recorded (and fails the run at the end) without losing the rest."""
    _say(f"== {name}")
    started = time.perf_counter()
    load_before = procfs.load_average()
    try:
        report[name] = work()
    except Exception as error:
        report.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"
        _say(traceback.format_exc())
        return
    if isinstance(report[name], dict):
        report[name]["load_average_before"] = load_before
        report[name]["section_seconds"] = round(time.perf_counter() - started, 1)
    _say(f"   {name} done in {time.perf_counter() - started:.0f} s")


def _simulation(plan: Plan, plots_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in plan.traces:
        trace = traces.load(path)
        figures, results = simulate.compare(trace)
        figures["plot"] = plot_simulation(trace, results, plots_dir).name
        out[trace.name] = figures
        _say(simulate.format_table(trace.name, figures["policies"]))
    return {"traces": out}


def _videos_for_throughput(plan: Plan, directory: Path) -> list[inputs.Video]:
    made = []
    for kind, width, height, seconds in plan.throughput_videos:
        make = inputs.photo_video if kind == "photos" else inputs.synthetic_video
        made.append(make(width, height, FPS, seconds, directory))
    return made


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth quoting, each with its partner, lifted from the sections."""
    out: dict[str, Any] = {}
    for case in report.get("throughput", {}).get("cases", []):
        key = f"{case['model']}_model_{case['sample_fps']:g}fps"
        out[f"throughput_{key}"] = {
            "framescale_sampled_fps": case["framescale_worker"]["sampled_fps"]["median"],
            "reference_sampled_fps": case["reference_client"]["sampled_fps"]["median"],
            "ceiling_sampled_fps": case["ceiling"]["sampled_fps"]["median"],
            "ratio_vs_reference": case["ratio_vs_reference"],
            "ratio_vs_reference_if_server_json_were_free": case["ratio_vs_reference_if_server_json_were_free"],
            "original_client_sampled_fps": case["original_client"]["sampled_fps"]["median"],
            "ratio_vs_original_client": case["ratio_vs_original_client"],
            "ceiling_bound_by": case["ceiling"]["bound_by"],
            "efficiency": case["efficiency"],
            "efficiency_vs_model_alone": case["efficiency_vs_model_alone"],
        }
    for case in report.get("decode", {}).get("cases", []):
        out[f"decode_{case['video'].split()[0]}_{case['sample_fps']:g}fps_cpu_ms_per_kept_frame"] = {
            "framescale": case["framescale"]["cpu_ms_per_kept_frame"]["median"],
            "opencv_grab_retrieve": case["opencv_grab_retrieve"]["cpu_ms_per_kept_frame"]["median"],
            "speedup": case["speedup_cpu_vs_opencv"],
        }
    for case in report.get("decode", {}).get("keyframes", []):
        out[f"decode_{case['video'].split()[0]}_keyframes_cpu_share_of_opencv_sparse"] = case[
            "cpu_share_of_opencv_sparse"
        ]
    worker = report.get("worker", {})
    if worker:
        out["peak_rss_long_over_short_video"] = worker["memory"]["long_over_short_peak_rss"]
        out["worker_start_seconds_vs_tf_client"] = {
            "framescale_worker": worker["startup"]["worker_start_to_first_receive_seconds"]["median"],
            "tensorflow_serving_api_client": worker["startup"]["tensorflow_serving_api_client_start_seconds"]["median"],
        }
        out["idle_rss_mib_vs_tf_client"] = {
            "framescale_worker": worker["startup"]["worker_idle_rss_mib"]["median"],
            "tensorflow_serving_api_client": worker["startup"]["tensorflow_serving_api_client_rss_mib"]["median"],
        }
    worker_image = report.get("images", {}).get("images", {}).get("worker")
    if worker_image:
        out["worker_image"] = {
            "uncompressed_mb": round(worker_image["uncompressed_bytes"] / 1e6, 1),
            "compressed_mb": round(worker_image["compressed_bytes"] / 1e6, 1),
            "within_300_mb_budget": worker_image["within_budget"],
            "run_to_first_receive_seconds": worker_image["run_to_first_receive_seconds"]["median"],
        }
    race = report.get("scale_in_race", {})
    if race and "skipped" not in race:
        out["scale_in_race"] = {
            "scale_ins": race["scale_ins"],
            "violations": sum(race["violations"].values()),
            "scale_out_reaction_seconds": race["backlog_to_capacity_seconds"]["scale_out"],
            "scale_in_reaction_seconds": race["backlog_to_capacity_seconds"]["scale_in"],
        }
    react = report.get("reaction", {})
    if react:
        out["reaction_seconds"] = {
            "framescale_measured": react["framescale"]["seconds"]["median"],
            "reference_modelled": react["reference"]["seconds"]["median"],
            "reference_over_framescale": react["reference_over_framescale"],
        }
    for name, sim in report.get("simulation", {}).get("traces", {}).items():
        per_policy: dict[str, Any] = {}
        for policy, figures in sim["policies"].items():
            row = {
                "node_hours": figures["node_hours"],
                "backlog_age_p50_seconds": figures["backlog_age_seconds"]["p50"],
                "backlog_age_p90_seconds": figures["backlog_age_seconds"]["p90"],
                "jobs_interrupted": figures["jobs_interrupted_by_scale_in"],
                "unfinished": figures["unfinished"],
            }
            if name.startswith("burst"):
                drain = figures["drain_seconds"]
                row["drain_minutes"] = round(drain / 60, 1) if drain else None
                row["jobs_per_minute"] = figures["jobs_per_minute_while_draining"]
            per_policy[policy] = row
        out[f"simulation_{name}"] = per_policy
    return out


def run(models_dir: Path, out: Path, *, quick: bool, inputs_dir: Path) -> int:
    plan = QUICK if quick else FULL
    started = time.perf_counter()
    report: dict[str, Any] = {
        "schema_version": 1,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if quick else "full",
        "machine": machine.describe(),
    }
    report["machine"]["ffmpeg"] = machine.ffmpeg_version(inputs.ffmpeg_executable())
    out.parent.mkdir(parents=True, exist_ok=True)

    _section(report, "simulation", lambda: _simulation(plan, out.parent))

    _say(f"== inputs (cached in {inputs_dir})")
    throughput_videos = _videos_for_throughput(plan, inputs_dir)
    decode_videos = [
        inputs.h264_copy(inputs.photo_video(width, height, FPS, seconds, inputs_dir), inputs_dir, x264_defaults=True)
        for width, height, seconds in plan.decode_videos
    ]
    (sw, sh, ss), (lw, lh, ls) = plan.memory_videos
    short, long = inputs.photo_video(sw, sh, FPS, ss, inputs_dir), inputs.photo_video(lw, lh, FPS, ls, inputs_dir)

    with tempfile.TemporaryDirectory(prefix="framescale-bench-") as scratch:
        _say("== starting moto and the model server")
        with stack.running(models_dir, Path(scratch)) as bench:
            _say(f"   model server up in {bench.model_server_start_seconds} s")
            _section(
                report,
                "decode",
                lambda: decode.run(decode_videos, plan.decode_rounds, sample_rates=plan.decode_sample_rates),
            )
            _section(
                report,
                "throughput",
                lambda: throughput.run(
                    bench,
                    throughput_videos,
                    models=plan.throughput_models,
                    sample_rates=plan.throughput_sample_rates,
                    rounds=plan.throughput_rounds,
                    log=_say,
                ),
            )
            _section(
                report,
                "worker",
                lambda: worker_bench.run(
                    bench, short, long, sample_fps=plan.memory_sample_fps, rounds=plan.worker_rounds, log=_say
                ),
            )
            _section(report, "reaction", lambda: reaction.run(trials=plan.reaction_trials, log=_say))
            if not quick:  # builds the images (cached) and runs containers: not a smoke test's work
                _section(report, "images", lambda: image_bench.run(bench, log=_say))
    _section(
        report,
        "scale_in_race",
        lambda: reaction.run_over_the_real_stack(scale_ins=plan.race_scale_ins, time_limit=plan.race_seconds, log=_say),
    )

    report["headline"] = headline(report)
    report["machine"]["load_average_at_end"] = procfs.load_average()
    report["duration_seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _say(f"wrote {out} in {report['duration_seconds']:.0f} s")
    _say(json.dumps(report["headline"], indent=2))
    if report.get("errors"):
        _say(f"FAILED parts: {', '.join(report['errors'])}")
        return 1
    return 0


def run_images_only(models_dir: Path, out: Path) -> int:
    """The images section alone, merged into the report at ``out`` (its other sections kept):
    `make bench-images`, for when the images changed and the rest did not."""
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"schema_version": 1}
    report.get("errors", {}).pop("images", None)
    with (
        tempfile.TemporaryDirectory(prefix="framescale-bench-") as scratch,
        stack.running(models_dir, Path(scratch)) as bench,
    ):
        _section(report, "images", lambda: image_bench.run(bench, log=_say))
    if not report.get("errors"):
        report.pop("errors", None)
    report["headline"] = headline(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _say(f"wrote the images section into {out}")
    return 1 if "images" in report.get("errors", {}) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="Run framescale's benchmarks.")
    parser.add_argument("--models", type=Path, default=Path("models"), help="exported SavedModels (make models)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    parser.add_argument("--quick", action="store_true", help="tiny inputs, one round each: checks the machinery")
    parser.add_argument("--inputs", type=Path, default=inputs.INPUTS_DIR, help="cache of generated input videos")
    parser.add_argument("--images-only", action="store_true", help="only the images section, merged into --out")
    args = parser.parse_args(argv)
    if args.images_only:
        return run_images_only(args.models, args.out)
    return run(args.models, args.out, quick=args.quick, inputs_dir=args.inputs)


if __name__ == "__main__":
    sys.exit(main())
