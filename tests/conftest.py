import os
from pathlib import Path

import pytest

import butcher


@pytest.fixture(scope="session")
def catalogue():
    """Every catalogue method, built once per test session."""
    return {name: butcher.get(name) for name in butcher.names()}


# the standard corpora: CI sets ODERNN_DATA; a developer checkout finds ../shared/data beside it
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "ODERNN_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["ODERNN_DATA"] = str(_SHARED)
