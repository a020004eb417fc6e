"""ServerSettings: defaults, the environment, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsession.errors import InvalidInput
from llmsession.server import ServerSettings
from llmsession.server.settings import ENV_VARIABLES, default_data_dir, default_store_url
from llmsession.store.sqlite import path_of_url


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    settings = ServerSettings()
    assert settings.store_url == f"sqlite:///{tmp_path}/llmsession/llmsession.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.admin_key is None
    assert settings.default_ttl_seconds == 3600
    assert settings.sweep_interval_seconds == 5.0
    assert settings.purge_created_after_seconds == 86400
    assert settings.access_log is False
    assert settings.auth_cache_seconds == 1.0
    assert ServerSettings.from_env({}) == settings


def test_every_field_can_be_set_from_the_environment() -> None:
    env = {
        "LLMSESSION_STORE_URL": "postgresql://db/llm",
        "LLMSESSION_HOST": "0.0.0.0",
        "LLMSESSION_PORT": " 9000 ",
        "LLMSESSION_ADMIN_KEY": "a-long-admin-key-123",
        "LLMSESSION_DEFAULT_TTL": "120",
        "LLMSESSION_SWEEP_INTERVAL": "0.5",
        "LLMSESSION_PURGE_CREATED_AFTER": "600",
        "LLMSESSION_ACCESS_LOG": "yes",
        "LLMSESSION_AUTH_CACHE_SECONDS": "0",
        "LLMSESSION_CONFIG": "/etc/llmsession/gateway.toml",
        "LLMSESSION_UI_SECRET": "a-ui-secret-of-32-characters-0123",
        "LLMSESSION_SHUTDOWN_GRACE": "120",
    }
    assert set(env) == set(ENV_VARIABLES.values())
    assert ServerSettings.from_env(env) == ServerSettings(
        store_url="postgresql://db/llm",
        host="0.0.0.0",
        port=9000,
        admin_key="a-long-admin-key-123",
        default_ttl_seconds=120,
        sweep_interval_seconds=0.5,
        purge_created_after_seconds=600,
        access_log=True,
        auth_cache_seconds=0.0,
        gateway_config="/etc/llmsession/gateway.toml",
        ui_secret="a-ui-secret-of-32-characters-0123",
        shutdown_grace_seconds=120,
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LLMSESSION_PORT", "http", "integer from 1 to 65535"),
        ("LLMSESSION_PORT", "70000", "integer from 1 to 65535"),
        ("LLMSESSION_PORT", "0", "integer from 1 to 65535"),
        ("LLMSESSION_DEFAULT_TTL", "1.5", "whole number of seconds"),
        ("LLMSESSION_DEFAULT_TTL", "0", "whole number of seconds"),
        ("LLMSESSION_SWEEP_INTERVAL", "nan", "from 0.01 to 86400"),
        ("LLMSESSION_SWEEP_INTERVAL", "0", "from 0.01 to 86400"),
        ("LLMSESSION_SWEEP_INTERVAL", "inf", "from 0.01 to 86400"),
        ("LLMSESSION_PURGE_CREATED_AFTER", "-1", "whole number of seconds"),
        ("LLMSESSION_PURGE_CREATED_AFTER", "59", "whole number of seconds >= 60"),
        ("LLMSESSION_ACCESS_LOG", "maybe", "true/false"),
        ("LLMSESSION_AUTH_CACHE_SECONDS", "301", "from 0 to 300"),
        ("LLMSESSION_ADMIN_KEY", "short", "at least 16 printable ASCII"),
        ("LLMSESSION_ADMIN_KEY", "has a space in it here", "without spaces"),
        ("LLMSESSION_UI_SECRET", "too-short", "at least 32 printable ASCII"),
        ("LLMSESSION_SHUTDOWN_GRACE", "-1", "whole number of seconds from 0 to 86400"),
        ("LLMSESSION_SHUTDOWN_GRACE", "2.5", "whole number of seconds from 0 to 86400"),
    ],
)
def test_a_bad_variable_is_named_with_what_it_accepts(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(InvalidInput, match=variable) as raised:
        ServerSettings.from_env({variable: value})
    assert expected in str(raised.value)
    if variable in ("LLMSESSION_ADMIN_KEY", "LLMSESSION_UI_SECRET"):
        assert value not in str(raised.value)
    else:
        assert value.strip() in str(raised.value)


def test_empty_variables_keep_the_defaults() -> None:
    assert ServerSettings.from_env({"LLMSESSION_PORT": "", "LLMSESSION_ADMIN_KEY": "  "}) == (
        ServerSettings()
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"port": True},
        {"port": 8080.0},
        {"store_url": ""},
        {"host": ""},
        {"default_ttl_seconds": 10**12},
        {"sweep_interval_seconds": True},
        {"purge_created_after_seconds": 0},
        {"purge_created_after_seconds": 59},
        {"access_log": 1},
        {"auth_cache_seconds": -1},
        {"admin_key": "caf\u00e9-caf\u00e9-caf\u00e9-caf\u00e9"},
    ],
)
def test_bad_fields_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        ServerSettings(**fields)  # type: ignore[arg-type]


# -- the default store: per user, not per working directory --------------------------------


def test_the_default_store_is_in_xdg_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "data" / "llmsession"
    assert path_of_url(default_store_url()) == tmp_path / "data" / "llmsession" / "llmsession.db"
    # The same from any working directory: the path is absolute.
    monkeypatch.chdir(tmp_path)
    assert ServerSettings().store_url == default_store_url()
    assert ServerSettings.from_env({}).store_url == default_store_url()


@pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
def test_without_a_usable_xdg_data_home_the_store_is_under_home(
    xdg: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The XDG spec: unset or empty means ~/.local/share; a relative path is ignored.
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".local" / "share" / "llmsession"


def test_the_default_store_url_keeps_unusual_characters_of_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "a b%20#?c"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    assert path_of_url(default_store_url()) == data / "llmsession" / "llmsession.db"


def test_a_store_url_in_the_environment_wins_over_the_default() -> None:
    url = "postgresql://db/llm"
    assert ServerSettings.from_env({"LLMSESSION_STORE_URL": url}).store_url == url
