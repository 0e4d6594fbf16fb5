import pytest

import butcher


@pytest.fixture(scope="session")
def catalogue():
    """Every catalogue method, built once per test session."""
    return {name: butcher.get(name) for name in butcher.names()}
