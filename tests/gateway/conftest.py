"""The gateway tests use the server tests' real server processes and the fake provider's."""

from tests.fake_provider.conftest import start_fake  # noqa: F401
from tests.server.conftest import start_server  # noqa: F401
