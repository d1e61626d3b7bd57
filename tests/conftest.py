"""Fixtures only (thin wrappers over `tests/kit.py` and `tests/stack.py`), and the
hypothesis profile. Nothing here is imported: helpers live in the kit and the stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.kit import DevKeys
from tests.stack import Stack, start_stack

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("default")


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> DevKeys:
    return DevKeys.generate(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> DevKeys:
    return DevKeys.generate(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    """One reference SE (rw) and one gateway, shared by a test module."""
    yield from start_stack(tmp_path_factory.mktemp("stack"), keys)
