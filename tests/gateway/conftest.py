"""The gateway tests use the server tests' real server processes and the fake provider's."""

from collections.abc import Iterator

import pytest

from tests.fake_provider.conftest import (
    API_KEY,
    FakeProcess,
    fake_command,
    launch,
    start_fake,  # noqa: F401
)
from tests.server.conftest import start_server  # noqa: F401


@pytest.fixture(scope="module")
def module_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProcess]:
    """One fake provider process per test module."""
    fake = launch(fake_command("--api-key", API_KEY), tmp_path_factory.mktemp("fake") / "fake.log")
    yield fake
    fake.stop()
