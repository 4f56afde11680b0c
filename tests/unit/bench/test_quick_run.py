"""``python -m bench.run --quick``: the whole benchmark machinery, once, on tiny inputs.

It starts moto, the model server and worker processes, so it is an integration test. Only
the shape of the output is checked: the numbers of a quick run on a shared machine mean
nothing, and tests stay free of timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.integration
@pytest.mark.slow
def test_quick_bench_writes_every_section(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results" / "latest.json"
    command = [sys.executable, "-m", "bench.run", "--quick", "--models", str(models_dir), "--out", str(out)]
    result = subprocess.run(
        [*command, "--inputs", str(tmp_path / "inputs")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    assert "errors" not in report
    assert {"cores", "memory_mib", "cpu_model", "python", "packages"} <= set(report["machine"])
    for section in ("simulation", "decode", "throughput", "worker", "reaction", "headline"):
        assert report[section], section

    case = report["throughput"]["cases"][0]
    for side in ("framescale_worker", "reference_client", "original_client", "ceiling"):
        assert case[side]["sampled_fps"]["median"] > 0, side
    assert case["ratio_vs_reference"] > 0 and case["ratio_vs_original_client"] > 0
    assert case["efficiency"] > 0 and case["efficiency"] >= case["efficiency_vs_model_alone"]
    assert case["ceiling"]["sampled_fps"]["median"] <= case["ceiling"]["model_alone_sampled_fps"]["median"]

    cases = {(c["video"], c["sample_fps"]) for c in report["decode"]["cases"]}
    assert cases == {("360p h264", 0.2), ("360p h264", 1.0)}
    assert all(c["same_frames_kept"] for c in report["decode"]["cases"]), "the methods kept different frames"
    assert report["decode"]["keyframes"][0]["cpu_ms_per_kept_frame"]["median"] > 0

    worker = report["worker"]
    assert worker["memory"]["long_over_short_video_length"] == pytest.approx(10.0, rel=0.05)
    assert worker["memory"]["long_over_short_peak_rss"] > 0

    assert report["reaction"]["framescale"]["trials"]
    traces = report["simulation"]["traces"]
    assert set(traces) == {"burst-1000", "diurnal-day", "spiky"}
    for name, figures in traces.items():
        assert (out.parent / figures["plot"]).is_file(), name
        assert figures["policies"]["framescale"]["jobs_interrupted_by_scale_in"] == 0
