"""Export the detector SavedModels in TF Serving's layout.

    python -m framescale.modelserver.export --out models [--force] [--only person synthetic]

writes, for each model, ``OUT/<name>/1/`` (a SavedModel with the ``serving_default``
signature of :mod:`framescale.modelserver.detectors`) and ``OUT/<name>/labels.json``
(class id to label; TF Serving ignores non-numeric entries beside the versions).

Idempotent: a model whose folder is complete is skipped unless ``--force``. Each model is
built in a hidden temporary folder under OUT and renamed into place, so an interrupted
export never leaves half a model where a server would load it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from framescale.modelserver.tensorflow_env import quiet_tensorflow

if TYPE_CHECKING:
    from framescale.modelserver.detectors import Detector

VERSION = 1
MODEL_NAMES = ("person", "synthetic", "null")
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class ExportResult:
    name: str
    path: Path
    seconds: float
    skipped: bool


def is_complete(model_dir: Path) -> bool:
    return (model_dir / str(VERSION) / "saved_model.pb").is_file() and (model_dir / LABELS_FILE).is_file()


def _build(name: str) -> tuple[Detector, dict[int, str]]:
    """The tf.Module to save and its labels (TensorFlow is imported here, not at start-up)."""
    from framescale.modelserver import detectors

    detect: Callable[..., detectors.Detections]
    if name == "person":
        detect = detectors.make_person_detect(detectors.person_graph_bytes())
        labels = detectors.PERSON_LABELS
    elif name == "synthetic":
        detect, labels = detectors.synthetic_detect, detectors.synthetic_labels()
    elif name == "null":
        detect, labels = detectors.null_detect, {}
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return detectors.Detector(detect, name=name), labels


def _save(module: Detector, labels: dict[int, str], into: Path) -> None:
    import tensorflow as tf

    from framescale.modelserver.detectors import SIGNATURE_KEY

    signatures = {SIGNATURE_KEY: module.serve.get_concrete_function()}
    tf.saved_model.save(module, str(into / str(VERSION)), signatures=signatures)
    labels_json = {str(class_id): label for class_id, label in sorted(labels.items())}
    (into / LABELS_FILE).write_text(json.dumps(labels_json, indent=2) + "\n")


def _swap_in(staged: Path, target: Path) -> None:
    """Put ``staged`` at ``target``; a directory cannot be replaced in one rename, so the old
    one is moved aside first and deleted after. A crash in between leaves no model, which the
    next run exports again, rather than a mixed one."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{time.time_ns()}")
        target.rename(old)
    staged.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(name: str, out: Path, *, force: bool = False) -> ExportResult:
    target = out / name
    if not force and is_complete(target):
        return ExportResult(name, target, 0.0, skipped=True)
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    # Leftovers of an interrupted run: hidden, so no server ever loaded them.
    for stale in out.glob(f".{name}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out))
    staged.chmod(0o755)  # mkdtemp's 0700 would hide the model from a server running as another user
    try:
        module, labels = _build(name)
        _save(module, labels, staged)
        _swap_in(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return ExportResult(name, target, time.monotonic() - started, skipped=False)


def export_all(out: Path, names: Sequence[str] = MODEL_NAMES, *, force: bool = False) -> list[ExportResult]:
    return [export_model(name, out, force=force) for name in names]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m framescale.modelserver.export",
        description="Export the detector SavedModels (person SSDLite, synthetic, null) in TF Serving's layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="base folder: OUT/<model>/<version>/")
    parser.add_argument("--force", action="store_true", help="rebuild models that are already complete")
    parser.add_argument(
        "--only", nargs="+", choices=MODEL_NAMES, metavar="NAME", help=f"export only these ({', '.join(MODEL_NAMES)})"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(MODEL_NAMES)
    todo = [name for name in names if args.force or not is_complete(args.out / name)]
    for name in names:
        if name not in todo:
            print(f"{name}: up to date in {args.out / name} (--force rebuilds it)")
    if not todo:
        return 0  # without importing TensorFlow: a no-op run is instant
    quiet_tensorflow()
    from framescale.modelserver.detectors import PersonModelMissing

    for name in todo:
        try:
            result = export_model(name, args.out, force=args.force)
        except PersonModelMissing as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 1
        print(f"{name}: exported to {result.path / str(VERSION)} in {result.seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
