"""Sizes of the fault suite: the fast seeded slice (CI) or the long run (SDS_FAULTS=long)."""

from __future__ import annotations

import os

LONG = os.environ.get("SDS_FAULTS", "").lower() == "long"
SEED = int(os.environ.get("SDS_FAULTS_SEED", "20261204"))


def scaled(fast: int | float, long: int | float) -> int | float:
    """``fast`` in CI, ``long`` when ``SDS_FAULTS=long``."""
    return long if LONG else fast
