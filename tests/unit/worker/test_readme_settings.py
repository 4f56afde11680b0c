"""The README's worker configuration table names every setting the worker reads, and only those."""

from __future__ import annotations

import re
from pathlib import Path

from framescale.worker.settings import WorkerSettings

README = Path(__file__).resolve().parents[3] / "README.md"


def _table_variables() -> set[str]:
    text = README.read_text()
    table = text.split("Worker (`FRAMESCALE_WORKER_`", 1)[1].split("\n\n", 2)[1]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`([A-Z0-9_]+)`", cell)}


def test_every_worker_setting_is_in_the_readme_table() -> None:
    fields = {name.upper() for name in WorkerSettings.model_fields}
    documented = _table_variables()
    assert fields - documented == set(), "settings missing from the README table"
    assert documented - fields == set(), "README names settings the worker does not read"
