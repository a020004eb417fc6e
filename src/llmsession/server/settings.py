"""ServerSettings: how the HTTP service is configured, from code or from the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from llmsession.errors import InvalidInput
from llmsession.expiry import check_ttl
from llmsession.store.models import MIN_PURGE_AGE_SECONDS

__all__ = ["ENV_VARIABLES", "ServerSettings", "default_data_dir", "default_store_url"]

T = TypeVar("T")

#: The environment variable that sets each field, as read by ServerSettings.from_env.
ENV_VARIABLES: dict[str, str] = {
    "store_url": "LLMSESSION_STORE_URL",
    "host": "LLMSESSION_HOST",
    "port": "LLMSESSION_PORT",
    "admin_key": "LLMSESSION_ADMIN_KEY",
    "default_ttl_seconds": "LLMSESSION_DEFAULT_TTL",
    "sweep_interval_seconds": "LLMSESSION_SWEEP_INTERVAL",
    "purge_created_after_seconds": "LLMSESSION_PURGE_CREATED_AFTER",
    "access_log": "LLMSESSION_ACCESS_LOG",
    "auth_cache_seconds": "LLMSESSION_AUTH_CACHE_SECONDS",
    "gateway_config": "LLMSESSION_CONFIG",
    "ui_secret": "LLMSESSION_UI_SECRET",
    "shutdown_grace_seconds": "LLMSESSION_SHUTDOWN_GRACE",
}

MIN_ADMIN_KEY_LENGTH = 16
MIN_UI_SECRET_LENGTH = 32
MAX_SHUTDOWN_GRACE_SECONDS = 86400


def default_data_dir() -> Path:
    """Where llmsession keeps its data unless told otherwise: ``llmsession`` in the
    per-user data directory of the XDG Base Directory spec, ``$XDG_DATA_HOME``, or
    ``~/.local/share`` when that is unset.

    Per user, not per working directory: the server and every CLI command find the
    same data wherever they are started. InvalidInput if there is no home directory.
    """
    base = os.environ.get("XDG_DATA_HOME", "")
    # The spec: a relative path in XDG_DATA_HOME is invalid and is ignored.
    if not os.path.isabs(base):
        try:
            base = str(Path.home() / ".local" / "share")
        except RuntimeError:
            raise InvalidInput(
                "no per-user data directory for the default store: set HOME or XDG_DATA_HOME, "
                "or give a store URL (LLMSESSION_STORE_URL)"
            ) from None
    return Path(base) / "llmsession"


def default_store_url() -> str:
    """The store used when no URL is given: ``llmsession.db`` in :func:`default_data_dir`."""
    return f"sqlite:///{quote(str(default_data_dir() / 'llmsession.db'))}"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the server needs to start; validated on construction.

    - ``store_url``: where sessions live (see :func:`llmsession.store.open_store`);
      by default the SQLite file of :func:`default_store_url`.
    - ``admin_key``: the bearer key of the admin routes; None disables them.
    - ``default_ttl_seconds``: idle TTL of a session created without ``ttl_seconds``.
    - ``sweep_interval_seconds``: how often the sweeper expires sessions that are due.
    - ``purge_created_after_seconds``: sessions still Created this long after creation
      are deleted by the sweeper (no transition leaves Created but activation); at
      least MIN_PURGE_AGE_SECONDS (60).
    - ``access_log``: log one line per request (uvicorn's access log).
    - ``auth_cache_seconds``: how long a successful key check is reused (0: never);
      a key revoked through another replica or the CLI works here that long at most.
    - ``gateway_config``: the TOML file of providers (see docs/gateway.md); None
      serves the session ledger only.
    - ``ui_secret``: signs the dashboard's session cookies (/ui). None derives one
      from ``admin_key`` (so every replica with the same admin key accepts the same
      cookies, and changing the admin key signs everyone out); with neither, each
      process makes a random one, and a restart signs everyone out.
    - ``shutdown_grace_seconds``: after SIGTERM or SIGINT, how long requests in
      flight may go on before they are cancelled (a gateway turn's round is still
      recorded: see docs/http-api.md#running).
    """

    store_url: str = field(default_factory=default_store_url)
    host: str = "127.0.0.1"
    port: int = 8080
    # Kept out of repr(): settings get logged, the key must not be.
    admin_key: str | None = field(default=None, repr=False)
    default_ttl_seconds: int = 3600
    sweep_interval_seconds: float = 5.0
    purge_created_after_seconds: int = 86400
    access_log: bool = False
    auth_cache_seconds: float = 1.0
    gateway_config: str | None = None
    ui_secret: str | None = field(default=None, repr=False)
    shutdown_grace_seconds: int = 30

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            check(getattr(self, name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from the LLMSESSION_* variables (see ENV_VARIABLES).

        Unset or empty variables keep the defaults. A bad value raises
        InvalidInput naming the variable and what it accepts.
        """
        env = os.environ if environ is None else environ
        # The other fields' defaults; the store's is computed only when no URL is given.
        d = cls(store_url="memory://")

        def read(name: str, parse: Callable[[str], T], default: T) -> T:
            variable = ENV_VARIABLES[name]
            raw = env.get(variable, "").strip()
            if not raw:
                return default
            # The admin key and the UI secret are secrets: never echo them in an error.
            secret = name in ("admin_key", "ui_secret")
            shown = "<hidden>" if secret else repr(raw)
            try:
                value = parse(raw)
                _CHECKS[name](value)
            except ValueError as error:
                detail = "" if secret else f" ({error})"
                raise InvalidInput(
                    f"{variable}={shown} is not valid: expected {_EXPECTED[name]}{detail}"
                ) from None
            return value

        return cls(
            store_url=read("store_url", str, "") or default_store_url(),
            host=read("host", str, d.host),
            port=read("port", int, d.port),
            admin_key=read("admin_key", _optional_text, d.admin_key),
            default_ttl_seconds=read("default_ttl_seconds", int, d.default_ttl_seconds),
            sweep_interval_seconds=read("sweep_interval_seconds", float, d.sweep_interval_seconds),
            purge_created_after_seconds=read(
                "purge_created_after_seconds", int, d.purge_created_after_seconds
            ),
            access_log=read("access_log", _parse_bool, d.access_log),
            auth_cache_seconds=read("auth_cache_seconds", float, d.auth_cache_seconds),
            gateway_config=read("gateway_config", _optional_text, d.gateway_config),
            ui_secret=read("ui_secret", _optional_text, d.ui_secret),
            shutdown_grace_seconds=read("shutdown_grace_seconds", int, d.shutdown_grace_seconds),
        )


def _check_store_url(value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInput("store_url must be a store URL such as sqlite:///path/to/file.db")


def _check_host(value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInput("host must be an address to listen on, such as 127.0.0.1")


def _check_port(value: object) -> None:
    if type(value) is not int or not 1 <= value <= 65535:
        raise InvalidInput(f"port must be an integer from 1 to 65535, got {value!r}")


def _check_admin_key(value: object) -> None:
    if value is None:
        return
    if (
        not isinstance(value, str)
        or len(value) < MIN_ADMIN_KEY_LENGTH
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        # Never echo the key itself: settings errors end up in logs.
        raise InvalidInput(
            f"admin_key must be at least {MIN_ADMIN_KEY_LENGTH} printable ASCII characters "
            "without spaces (use a long random string)"
        )


def _check_ui_secret(value: object) -> None:
    if value is None:
        return
    if (
        not isinstance(value, str)
        or len(value) < MIN_UI_SECRET_LENGTH
        or not value.isascii()
        or not value.isprintable()
    ):
        # Never echo the secret itself.
        raise InvalidInput(
            f"ui_secret must be at least {MIN_UI_SECRET_LENGTH} printable ASCII characters "
            "(use a long random string)"
        )


def _seconds_between(name: str, low: float, high: float) -> Callable[[object], None]:
    def check(value: object) -> None:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise InvalidInput(
                f"{name} must be a number of seconds from {low:g} to {high:g}, got {value!r}"
            )

    return check


def _check_grace(value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_SHUTDOWN_GRACE_SECONDS:
        raise InvalidInput(
            "shutdown_grace_seconds must be a whole number of seconds from 0 to "
            f"{MAX_SHUTDOWN_GRACE_SECONDS}, got {value!r}"
        )


def _check_purge(value: object) -> None:
    if type(value) is not int or value < MIN_PURGE_AGE_SECONDS:
        raise InvalidInput(
            "purge_created_after_seconds must be a whole number of seconds "
            f">= {MIN_PURGE_AGE_SECONDS}, got {value!r}"
        )


def _check_gateway_config(value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInput(f"gateway_config must be the path of a TOML file, got {value!r}")


def _check_bool(value: object) -> None:
    if type(value) is not bool:
        raise InvalidInput(f"access_log must be True or False, got {value!r}")


_CHECKS: dict[str, Callable[[object], object]] = {
    "store_url": _check_store_url,
    "host": _check_host,
    "port": _check_port,
    "admin_key": _check_admin_key,
    "default_ttl_seconds": check_ttl,
    "sweep_interval_seconds": _seconds_between("sweep_interval_seconds", 0.01, 86400),
    "purge_created_after_seconds": _check_purge,
    "access_log": _check_bool,
    "auth_cache_seconds": _seconds_between("auth_cache_seconds", 0, 300),
    "gateway_config": _check_gateway_config,
    "ui_secret": _check_ui_secret,
    "shutdown_grace_seconds": _check_grace,
}

_EXPECTED = {
    "store_url": "a store URL",
    "host": "an address to listen on",
    "port": "an integer from 1 to 65535",
    "admin_key": f"at least {MIN_ADMIN_KEY_LENGTH} printable ASCII characters without spaces",
    "default_ttl_seconds": "a whole number of seconds",
    "sweep_interval_seconds": "a number of seconds, e.g. 5 or 0.5",
    "purge_created_after_seconds": f"a whole number of seconds >= {MIN_PURGE_AGE_SECONDS}",
    "access_log": "1/0, true/false, yes/no or on/off",
    "auth_cache_seconds": "a number of seconds from 0 to 300",
    "gateway_config": "the path of a TOML file of providers",
    "ui_secret": f"at least {MIN_UI_SECRET_LENGTH} printable ASCII characters",
    "shutdown_grace_seconds": f"a whole number of seconds from 0 to {MAX_SHUTDOWN_GRACE_SECONDS}",
}


def _optional_text(text: str) -> str | None:
    return text


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a yes/no value")
