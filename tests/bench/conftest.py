"""Shared fixtures of the bench tests."""

import pytest

from softmaxlab.bench import memory


@pytest.fixture(scope="module", autouse=True)
def _stop_memory_server():
    """The fork server for memory measurements holds ~400 MB: stop it after each module
    instead of at the end of the test session."""
    yield
    memory.close_memory_server()
