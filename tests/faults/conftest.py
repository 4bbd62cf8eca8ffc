"""The fault and soak suite (issue: nothing lost, nothing torn, never stuck).

Every test below ``tests/faults/`` is marked ``faults``. The suite has two sizes:

- the fast, seeded slice that CI runs (the default): ``pytest tests/faults``;
- the long run, on demand: ``SDS_FAULTS=long pytest tests/faults`` (≥ 200 resume trials,
  a 10-minute soak, more kills and faults). ``SDS_FAULTS_SEED=N`` changes the seed.

Sizes come from `_faults.py` (`scaled(fast, long)`, `SEED`). Each test prints its figure line (``-s`` shows them); ``benchmarks/bench_faults.py`` collects
them into the summary line of the issue.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.faults)
