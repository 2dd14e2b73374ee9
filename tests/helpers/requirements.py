"""What to do when a test's requirement (a Docker engine, a cluster, a tool) is missing here."""

import pytest

from tests.conftest import IN_CI


def missing(message: str):
    """Skip loudly on a developer's machine; fail under CI=true, where every test must run."""
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip("\n" + "!" * 78 + f"\n{message}\n" + "!" * 78)
