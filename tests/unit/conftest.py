"""Unit tests run with no network: TCP and UDP sockets fail (pytest-socket); unix
sockets stay allowed, since every asyncio event loop needs a socketpair for its self-pipe."""

from __future__ import annotations

import pytest
import pytest_socket


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the item's fixtures are set up, so they run without sockets too; the plugin
    lifts the restriction again at teardown."""
    pytest_socket.disable_socket(allow_unix_socket=True)
