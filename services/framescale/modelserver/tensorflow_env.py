"""Process-level TensorFlow settings that must be in place before TensorFlow is imported."""

from __future__ import annotations

import os


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ INFO lines (CPU features, oneDNN notes) unless the user chose a level.

    Warnings and errors stay visible; this only sets a default.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
