"""``make mutate``: mutation testing of the worker core and the operator's decisions with mutmut.

mutmut 3 finds code to mutate under ``./``, ``src/`` or ``source/`` and imports it by the path
below that folder; framescale's packages live in ``services/`` and ``operator/``. So this script
lays out ``build/mutate/`` with ``src/framescale`` and ``src/framescale_operator`` linked to
them (and ``tests/``), writes mutmut's configuration there, runs mutmut, and prints the score of
each module: killed / (mutants - the ones listed as equivalent in ``tests/mutation-equivalent.txt``).
Only the fast unit tests run against each mutant.

    python tests/mutation.py            run (mutmut skips mutants whose verdict it still has)
    python tests/mutation.py --report   print the scores of the last run
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutate"
EQUIVALENT = ROOT / "tests" / "mutation-equivalent.txt"
TARGET = 0.90

# The modules under test, as mutmut sees them (below src/).
MODULES = [
    "src/framescale/messages.py",
    "src/framescale/worker/sampling.py",
    "src/framescale/worker/commit.py",
    "src/framescale/worker/loop.py",
    "src/framescale_operator/policy.py",
    "src/framescale_operator/protection.py",
    "src/framescale_operator/plan.py",
]
# The fast unit tests that can kill their mutants (no processes, no network, no files of the repo).
TESTS = [
    "tests/unit/test_messages.py",
    "tests/unit/test_message_reasons.py",
    "tests/unit/worker/test_sampling.py",
    "tests/unit/worker/test_sampling_edges.py",
    "tests/unit/worker/test_commit.py",
    "tests/unit/worker/test_commit_details.py",
    "tests/unit/worker/test_commit_edges.py",
    "tests/unit/worker/test_loop_details.py",
    "tests/unit/worker/test_loop.py",
    "tests/unit/worker/test_loop_run.py",
    "tests/unit/worker/test_loop_settle.py",
    "tests/unit/worker/test_job.py",
    "tests/unit/worker/test_gate.py",
    "tests/unit/operator/test_policy.py",
    "tests/unit/operator/test_policy_decisions.py",
    "tests/unit/operator/test_protection.py",
    "tests/unit/operator/test_protection_records.py",
    "tests/unit/operator/test_plan.py",
    "tests/unit/operator/test_plan_details.py",
]
CONFIG = """
[tool.mutmut]
source_paths = ["src/framescale", "src/framescale_operator"]
only_mutate = {modules}
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
use_git_change_detection = false

[tool.pytest.ini_options]
addopts = "--strict-markers"
asyncio_default_fixture_loop_scope = "function"
markers = ["integration", "e2e", "chaos", "chart", "operator", "slow", "soak"]
"""


# Where each package below src/ really lives.
PACKAGES = {
    "src/framescale/": ROOT / "services" / "framescale",
    "src/framescale_operator/": ROOT / "operator" / "framescale_operator",
}


def present(path: str) -> bool:
    """A module or test file of the lists that this checkout has (one added here before its branch landed)."""
    for prefix, folder in PACKAGES.items():
        if path.startswith(prefix):
            return (folder / path[len(prefix) :]).exists()
    return (ROOT / path).exists()


def lay_out(modules: list[str]) -> None:
    (WORK / "src").mkdir(parents=True, exist_ok=True)
    for link, target in (
        (WORK / "src" / "framescale", ROOT / "services" / "framescale"),
        (WORK / "src" / "framescale_operator", ROOT / "operator" / "framescale_operator"),
        (WORK / "tests", ROOT / "tests"),
    ):
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link)
            link.symlink_to(target, target_is_directory=True)
    (WORK / "pyproject.toml").write_text(
        CONFIG.format(modules=json.dumps(modules), tests=json.dumps([test for test in TESTS if present(test)]))
    )


def equivalent() -> dict[str, str]:
    """Mutant name → why it cannot be told apart from the original."""
    found = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, why = line.partition(" ")
                found[name] = why.strip()
    return found


def results() -> dict[str, str]:
    """Mutant name → status, as ``mutmut results --all true`` prints them."""
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=WORK,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in shown.splitlines():
        match = re.match(r"\s*(\S+__mutmut_\d+): (.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def module_of(mutant: str) -> str:
    # framescale.worker.commit.xǁResultStoreǁcommit__mutmut_3 -> framescale/worker/commit.py
    dotted = mutant.split(".x", 1)[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]
    return "src/" + dotted.replace(".", "/") + ".py"


def report(modules: list[str]) -> bool:
    statuses = results()
    known = equivalent()
    by_module: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors: dict[str, list[str]] = collections.defaultdict(list)
    for mutant, status in statuses.items():
        module = module_of(mutant)
        if mutant in known:
            by_module[module]["equivalent"] += 1
            continue
        # A mutant that makes the tests hang past mutmut's limit is caught too (as PIT counts it):
        # those tests would never pass.
        verdict = "killed" if status == "timeout" else status
        by_module[module][verdict] += 1
        if verdict != "killed":
            survivors[module].append(f"{mutant}: {verdict}")
    ok = True
    print(f"{'module':45} {'killed':>7} {'total':>6} {'score':>6}  (equivalent mutants listed in {EQUIVALENT.name})")
    for module in modules:
        counts = by_module.get(module, collections.Counter())
        total = sum(counts.values()) - counts["equivalent"]
        killed = counts["killed"]
        score = killed / total if total else 1.0
        ok &= score >= TARGET
        print(f"{module[4:]:45} {killed:7} {total:6} {score:6.1%}  equivalent: {counts['equivalent']}")
        for line in survivors.get(module, []):
            print(f"    {line}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="print the last run's scores only")
    parser.add_argument("--max-children", default=str(os.cpu_count() or 2))
    parser.add_argument("--only", default="", help="mutate only the modules whose path contains this")
    args = parser.parse_args()
    modules = [module for module in MODULES if args.only in module and present(module)]
    lay_out(modules)
    if not args.report:
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", args.max_children], cwd=WORK, check=False
        )
    ok = report(modules)
    print(f"target: at least {TARGET:.0%} of the mutants of each module killed: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
