import gc
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import butcher


@pytest.fixture(scope="module")
def float64():
    """Tests that compare to round-off run in float64 (``pytestmark = pytest.mark.usefixtures("float64")``),
    and leave the default dtype as it was."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def catalogue():
    """Every catalogue method, built once per test session."""
    return {name: butcher.get(name) for name in butcher.names()}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """Building the catalogue takes about 8 s (its Gauss, Radau and Lobatto members are derived
    exactly): under pytest-xdist (``--dist loadgroup``, pyproject.toml) the tests that use it run on
    one worker, which builds it once, rather than on every worker.

    The tests marked ``slow`` (5–55 s each, half the suite's time) run first: the workers take
    tests from one queue in this order, and a long test taken last would leave the other worker
    idle for its length (longest first is the classic remedy)."""
    for item in items:
        if "catalogue" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("catalogue"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order


def pytest_collection_finish(session):
    """What exists once the tests are collected (PyTorch, SymPy, every module and test item: about
    a million objects) lives to the end: frozen out of the garbage collector's reach, so that its
    full collections during the tests do not walk them all each time (on test_torch_conformance.py
    and test_sequence.py: 2.6 s of full collections instead of 6.7)."""
    gc.collect()
    gc.freeze()


# the standard corpora: CI sets ODERNN_DATA; a developer checkout finds ../shared/data beside it
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "ODERNN_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["ODERNN_DATA"] = str(_SHARED)


# under pytest-xdist each worker takes one core: two workers with torch's default two threads each
# would oversubscribe a 2-core machine
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _threads_kept():
    """A test that changes PyTorch's thread count (``odernn --threads``, a thread test) leaves the
    worker as it found it: the rest of the worker's tests run with the count they were written for."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it on its worker: under
    pytest-xdist the order differs from run to run, and a test drawing from an unseeded generator
    could pass or fail by where it landed."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
