"""The ``llmsession`` command: run the server, and administer a store directly.

Every command but ``serve`` and ``fake-provider`` opens the store at ``--store-url`` (or
``LLMSESSION_STORE_URL``, or the per-user default of
:func:`llmsession.server.settings.default_store_url`) itself, the same store the
server uses wherever either is started; all backends are safe for several
processes at once, so the CLI works beside a running server.
Changes go through the store's operations, so the core decides every transition.

Output is an aligned table for people, or JSON with ``--json`` (the HTTP API's
shapes). Errors are one line on stderr; the exit status is 2 for bad input, 1
for any other failure, and 3 when ``serve`` or ``fake-provider`` cannot start
(docs/cli.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, Final, NoReturn, TypeVar, get_args

try:
    import click
except ModuleNotFoundError as _missing:
    # Run as `python -m llmsession.cli` without the server extra: the one line the
    # `llmsession` script says (llmsession.console), not a traceback.
    if __name__ == "__main__":
        from llmsession.console import exit_if_server_extra_missing

        exit_if_server_extra_missing(_missing, "python -m llmsession.cli")
    raise

from llmsession.clock import system_clock
from llmsession.command_errors import BadInput, Failure, OneLineCommand
from llmsession.cost import NO_PRICES, Cost, PriceTable, format_money
from llmsession.errors import InvalidInput, LLMSessionError, NotFoundError
from llmsession.expiry import MAX_TTL_SECONDS
from llmsession.fake_provider.runner import fake_provider_command
from llmsession.ids import SessionId, TenantId
from llmsession.keys import IssuedKey, check_key_id, issue_key
from llmsession.server.settings import default_store_url
from llmsession.states import ALL_STATES, state_named
from llmsession.store import open_store
from llmsession.store.base import SessionStore
from llmsession.store.models import (
    MAX_PAGE_SIZE,
    MIN_PURGE_AGE_SECONDS,
    ApiKeyInfo,
    GroupKey,
    Page,
    Round,
    SessionQuery,
    StoredSession,
    Tenant,
    TimeBucket,
    TimeBucketSize,
    Totals,
)
from llmsession.timestamps import Timestamp

__all__ = ["cli", "main"]

T = TypeVar("T")
P = TypeVar("P")

#: How --help names the default store; the path itself depends on the environment.
_DEFAULT_STORE: Final = "llmsession.db in $XDG_DATA_HOME/llmsession or ~/.local/share/llmsession"


# -- errors: one line, exit 2 for bad input, 1 otherwise -------------------------------


class _Group(OneLineCommand, click.Group):
    """A group whose usage errors and llmsession errors are one-line failures, as are
    its commands'.

    Click prints usage errors as usage, hint and message on three lines, and
    leaves other exceptions as tracebacks; a person wants the one line that
    says what was wrong.
    """

    command_class = OneLineCommand

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidInput as error:
            raise BadInput(str(error)) from error
        except LLMSessionError as error:
            raise Failure(str(error)) from error


# -- parameter types: parsed by the core, refused with its message -------------------


class _CoreType(click.ParamType[T]):
    """A parameter parsed by a core constructor; its InvalidInput becomes a usage error."""

    def __init__(self, name: str, kind: type[T], parse: Callable[[str], T]) -> None:
        self.name = name
        self._kind = kind
        self._parse = parse

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> T:
        if isinstance(value, self._kind):
            return value
        try:
            return self._parse(str(value))
        except InvalidInput as error:
            self.fail(str(error), param, ctx)


TENANT: Final = _CoreType("tenant", TenantId, TenantId)
SESSION: Final = _CoreType("session_id", SessionId, SessionId.parse)
TIMESTAMP: Final = _CoreType("timestamp", Timestamp, Timestamp.parse)
STATE: Final = click.Choice([state.name for state in ALL_STATES])
GROUP_KEY: Final = click.Choice(get_args(GroupKey))

_store_option = click.option(
    "--store-url",
    envvar="LLMSESSION_STORE_URL",
    default="",
    help=f"The store to open, as the server's [env LLMSESSION_STORE_URL; {_DEFAULT_STORE}].",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table."
)
_prices_option = click.option(
    "--config",
    "config_path",
    envvar="LLMSESSION_CONFIG",
    default=None,
    help="The gateway's TOML file, to show costs at its prices [env LLMSESSION_CONFIG; "
    "none: tokens only].",
)
_tenant_option = click.option(
    "--tenant", "tenant_id", type=TENANT, required=True, help="The tenant whose sessions to use."
)


def _prices(config_path: str | None) -> PriceTable:
    if not config_path:
        return NO_PRICES
    from llmsession.gateway.config import load_config

    # Prices only: the providers' keys are not needed to read them.
    return load_config(config_path, require_keys=False).prices


def _run(store_url: str, action: Callable[[SessionStore], Awaitable[T]]) -> T:
    # The default ("" from click) is resolved here, not by click, so that no home
    # directory is one clear error (exit 2) rather than a traceback while parsing.
    url = store_url or default_store_url()

    async def run() -> T:
        store = await open_store(url)
        try:
            return await action(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


async def _in_known_tenant(store: SessionStore, tenant_id: TenantId, action: Awaitable[T]) -> T:
    """``action`` on one of ``tenant_id``'s sessions; "no session" becomes "no tenant" when
    the tenant is unknown, as ``sessions list`` and ``stats`` say.

    The tenant is looked up only once the session is not found, so a session that is
    found costs no extra round trip to the store.
    """
    try:
        return await action
    except NotFoundError:
        await store.get_tenant(tenant_id)
        raise


# -- the commands -----------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmsession")
def cli() -> None:
    """Stateful LLM sessions: run the server and administer its store."""


@cli.command()
@click.option("--host", help="Address to listen on [env LLMSESSION_HOST; 127.0.0.1].")
@click.option("--port", type=int, help="Port to listen on [env LLMSESSION_PORT; 8080].")
@click.option("--store-url", help=f"The store [env LLMSESSION_STORE_URL; {_DEFAULT_STORE}].")
@click.option(
    "--default-ttl",
    # The core's bounds, so that a bad value names this flag, not a setting.
    type=click.IntRange(min=1, max=MAX_TTL_SECONDS),
    help="Idle TTL in seconds of sessions created without one [env LLMSESSION_DEFAULT_TTL; 3600].",
)
@click.option(
    "--sweep-interval",
    type=float,
    help="Seconds between sweeps for expired sessions [env LLMSESSION_SWEEP_INTERVAL; 5].",
)
@click.option(
    "--purge-created-after",
    type=click.IntRange(min=MIN_PURGE_AGE_SECONDS),
    help="Delete sessions never activated this many seconds after creation "
    "[env LLMSESSION_PURGE_CREATED_AFTER; 86400].",
)
@click.option(
    "--admin-key",
    help="Bearer key of the admin routes [env LLMSESSION_ADMIN_KEY; none: admin routes off]. "
    "Prefer the variable: a flag shows in the process list.",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="Log one line per request [env LLMSESSION_ACCESS_LOG; off].",
)
@click.option(
    "--config",
    "gateway_config",
    help="The TOML file of providers for the gateway [env LLMSESSION_CONFIG; none: ledger only] "
    "(docs/gateway.md).",
)
@click.option(
    "--shutdown-grace",
    type=int,
    help="Seconds requests in flight may go on after SIGTERM before they are cancelled "
    "[env LLMSESSION_SHUTDOWN_GRACE; 30].",
)
def serve(
    *,
    gateway_config: str | None,
    host: str | None,
    port: int | None,
    store_url: str | None,
    default_ttl: int | None,
    sweep_interval: float | None,
    purge_created_after: int | None,
    admin_key: str | None,
    access_log: bool | None,
    shutdown_grace: int | None,
) -> None:
    """Run the HTTP server; flags override the LLMSESSION_* environment."""
    from llmsession.server import ServerSettings
    from llmsession.server.runner import run

    env = ServerSettings.from_env()
    # Flags override the environment; settings without a flag (the key-check
    # cache, say) keep what the environment gave.
    try:
        settings = replace(
            env,
            store_url=_pick(store_url, env.store_url),
            host=_pick(host, env.host),
            port=_pick(port, env.port),
            admin_key=_pick(admin_key, env.admin_key),
            default_ttl_seconds=_pick(default_ttl, env.default_ttl_seconds),
            sweep_interval_seconds=_pick(sweep_interval, env.sweep_interval_seconds),
            purge_created_after_seconds=_pick(purge_created_after, env.purge_created_after_seconds),
            access_log=_pick(access_log, env.access_log),
            gateway_config=_pick(gateway_config, env.gateway_config),
            shutdown_grace_seconds=_pick(shutdown_grace, env.shutdown_grace_seconds),
        )
    except InvalidInput as error:
        # The environment's values were checked already (from_env names the
        # variable): this is a flag's, named as the user typed it.
        raise BadInput(_named_by_flag(str(error))) from error
    # As `python -m llmsession.server` does, with the same exit statuses.
    status = run(settings)
    if status:
        raise SystemExit(status)


def _pick(flag: P | None, default: P) -> P:
    return default if flag is None else flag


#: The flag of ``serve`` that sets each setting a check can refuse.
_SERVE_FLAGS: Final = {
    "store_url": "--store-url",
    "host": "--host",
    "port": "--port",
    "admin_key": "--admin-key",
    "sweep_interval_seconds": "--sweep-interval",
    "gateway_config": "--config",
    "shutdown_grace_seconds": "--shutdown-grace",
}


def _named_by_flag(message: str) -> str:
    """A settings check's message ("port must be ...") naming the flag instead."""
    name, _, rest = message.partition(" ")
    flag = _SERVE_FLAGS.get(name)
    return message if flag is None else f"{flag} {rest}"


# A fake provider (OpenAI's and Anthropic's wire formats) for tests and demos
# (docs/fake-provider.md).
cli.add_command(fake_provider_command)


@cli.command()
@click.option(
    "--config",
    "config_path",
    envvar="LLMSESSION_CONFIG",
    default=None,
    help="The TOML file of providers [env LLMSESSION_CONFIG].",
)
@_json_option
def providers(config_path: str | None, as_json: bool) -> None:
    """List the gateway's providers as configured (never their keys)."""
    from llmsession.gateway.config import load_config

    if not config_path:
        raise click.UsageError(
            "no providers file: give --config FILE or set LLMSESSION_CONFIG (docs/gateway.md)"
        )

    config = load_config(config_path, require_keys=False)
    found = list(config.providers.values())
    if as_json:
        _print_json(
            {
                "providers": [
                    {
                        "provider_id": p.provider_id,
                        "kind": p.kind,
                        "base_url": p.base_url,
                        "api_key_env": p.api_key_env,
                        "api_key_set": bool(p.api_key),
                        "timeout_seconds": p.timeout_seconds,
                        "models": None if p.models is None else list(p.models),
                        "prices": {
                            model: price.to_dict()
                            for model, price in config.prices.models_of(p.provider_id).items()
                        },
                    }
                    for p in found
                ],
                "history_limit_bytes": config.history_limit_bytes,
                "currency": config.prices.currency,
            }
        )
        return
    _print_table(
        "providers",
        ("PROVIDER", "KIND", "BASE URL", "KEY FROM", "KEY SET", "TIMEOUT", "MODELS", "PRICED"),
        [
            (
                p.provider_id,
                p.kind,
                p.base_url,
                p.api_key_env,
                "yes" if p.api_key else "NO",
                f"{p.timeout_seconds:g} s",
                "(any)" if p.models is None else ", ".join(p.models),
                _priced(config.prices, p.provider_id),
            )
            for p in found
        ],
    )


def _priced(prices: PriceTable, provider_id: str) -> str:
    """The models of a provider that have prices, with the currency; "-" for none."""
    models = prices.models_of(provider_id)
    return f"{', '.join(models)} ({prices.currency})" if models else "-"


# -- tenants ------------------------------------------------------------------------------


@cli.group(cls=_Group)
def tenants() -> None:
    """Create and list tenants; issue, list and revoke their API keys."""


@tenants.command("create")
@click.argument("tenant_id", type=TENANT)
@_store_option
@_json_option
def tenants_create(tenant_id: TenantId, store_url: str, as_json: bool) -> None:
    """Create TENANT_ID and print its first API key (shown only this once)."""

    async def run(store: SessionStore) -> tuple[Tenant, IssuedKey]:
        tenant = await store.create_tenant(tenant_id)
        return tenant, await issue_key(store, tenant_id)

    tenant, issued = _run(store_url, run)
    if as_json:
        from llmsession.server.render import render_tenant

        _print_json(
            {**render_tenant(tenant), "key_id": issued.info.key_id, "api_key": issued.api_key}
        )
        return
    click.echo(f"Created tenant {tenant.tenant_id} at {tenant.created_at}.")
    _echo_new_key(issued)


@tenants.command("list")
@_store_option
@_json_option
def tenants_list(store_url: str, as_json: bool) -> None:
    """List every tenant, with its number of usable API keys."""

    async def run(store: SessionStore) -> list[tuple[Tenant, int]]:
        found = await store.list_tenants()
        return [
            (tenant, sum(k.revoked_at is None for k in await store.list_api_keys(tenant.tenant_id)))
            for tenant in found
        ]

    rows = _run(store_url, run)
    if as_json:
        from llmsession.server.render import render_tenant

        _print_json({"items": [render_tenant(tenant) for tenant, _ in rows]})
        return
    _print_table(
        "tenants",
        ("TENANT", "CREATED", "ACTIVE KEYS"),
        [(t.tenant_id.value, t.created_at, active) for t, active in rows],
    )


@tenants.command("add-key")
@click.argument("tenant_id", type=TENANT)
@_store_option
@_json_option
def tenants_add_key(tenant_id: TenantId, store_url: str, as_json: bool) -> None:
    """Issue another API key for TENANT_ID (shown only this once)."""

    issued = _run(store_url, lambda store: issue_key(store, tenant_id))
    if as_json:
        from llmsession.server.render import render_issued_key

        _print_json(render_issued_key(issued))
        return
    _echo_new_key(issued)


@tenants.command("keys")
@click.argument("tenant_id", type=TENANT)
@_store_option
@_json_option
def tenants_keys(tenant_id: TenantId, store_url: str, as_json: bool) -> None:
    """List the API keys of TENANT_ID, revoked ones included (never the keys themselves)."""

    async def run(store: SessionStore) -> list[ApiKeyInfo]:
        await store.get_tenant(tenant_id)  # an unknown tenant is an error, not an empty list
        return await store.list_api_keys(tenant_id)

    keys = _run(store_url, run)
    if as_json:
        from llmsession.server.render import render_api_key

        _print_json({"items": [render_api_key(info) for info in keys]})
        return
    _print_table(
        "API keys",
        ("KEY ID", "CREATED", "REVOKED"),
        [(k.key_id, k.created_at, k.revoked_at) for k in keys],
    )


@tenants.command("revoke")
@click.argument("key_id")
@_store_option
@_json_option
def tenants_revoke(key_id: str, store_url: str, as_json: bool) -> None:
    """Revoke the API key KEY_ID (as listed by 'tenants keys'); revoking twice is harmless."""
    check_key_id(key_id)
    info = _run(store_url, lambda store: store.revoke_api_key(key_id))
    if as_json:
        from llmsession.server.render import render_api_key

        _print_json(render_api_key(info))
        return
    click.echo(f"Revoked API key {info.key_id} of tenant {info.tenant_id} at {info.revoked_at}.")


# -- sessions -----------------------------------------------------------------------------


@cli.group(cls=_Group)
def sessions() -> None:
    """List, show and close a tenant's sessions."""


@sessions.command("list")
@_tenant_option
@click.option("--state", type=STATE, help="Only sessions in this state.")
@click.option("--provider", "provider_id", help="Only sessions of this provider.")
@click.option("--model", help="Only sessions of this model.")
@click.option(
    "--created-after", type=TIMESTAMP, help="ISO 8601 with offset, e.g. 2026-01-31T12:00:00Z."
)
@click.option("--created-before", type=TIMESTAMP, help="ISO 8601 with offset.")
@click.option(
    "--limit", type=int, default=50, show_default=True, help=f"Page size, 1 to {MAX_PAGE_SIZE}."
)
@click.option("--cursor", help="Continue after a previous page (its next cursor).")
@_store_option
@_json_option
def sessions_list(
    *,
    tenant_id: TenantId,
    state: str | None,
    provider_id: str | None,
    model: str | None,
    created_after: Timestamp | None,
    created_before: Timestamp | None,
    limit: int,
    cursor: str | None,
    store_url: str,
    as_json: bool,
) -> None:
    """List a tenant's sessions, newest first, one page at a time."""
    # SessionQuery checks every filter (and the page size) with the store's rules.
    query = SessionQuery(
        state=None if state is None else state_named(state),
        provider_id=provider_id,
        model=model,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )

    async def run(store: SessionStore) -> Page[StoredSession]:
        await store.get_tenant(tenant_id)  # a misspelt tenant is an error, not "no sessions"
        return await store.list_sessions(tenant_id, query)

    page = _run(store_url, run)
    if as_json:
        from llmsession.server.render import render_session

        _print_json(
            {"items": [render_session(s) for s in page.items], "next_cursor": page.next_cursor}
        )
        return
    _print_table(
        "sessions",
        ("SESSION", "STATE", "PROVIDER", "MODEL", "INITIAL", "ROUNDS", "DELTA", "SAVED", "CREATED"),
        [
            (
                str(s.record.session_id),
                s.record.state.name,
                s.record.provider_id,
                s.record.model,
                s.record.initial_tokens,
                s.record.round_count,
                s.record.delta_tokens,
                s.record.tokens_saved,
                s.record.created_at,
            )
            for s in page.items
        ],
    )
    if page.next_cursor is not None:
        click.echo(f"More sessions: add --cursor {page.next_cursor}", err=True)


@sessions.command("show")
@_tenant_option
@click.argument("session_id", type=SESSION)
@click.option("--rounds", "with_rounds", is_flag=True, help="Also list every round.")
@_prices_option
@_store_option
@_json_option
def sessions_show(
    *,
    tenant_id: TenantId,
    session_id: SessionId,
    with_rounds: bool,
    config_path: str | None,
    store_url: str,
    as_json: bool,
) -> None:
    """Show one session of a tenant, and with --rounds its rounds (and their costs)."""
    prices = _prices(config_path)

    async def run(store: SessionStore) -> tuple[StoredSession, list[Round]]:
        stored = await store.get(tenant_id, session_id)
        found: list[Round] = []
        cursor: str | None = None
        # Bounded by the session's round count, read when the session was.
        while with_rounds and len(found) < stored.record.round_count:
            page = await store.list_rounds(tenant_id, session_id, cursor=cursor, limit=1000)
            found.extend(page.items)
            cursor = page.next_cursor
            if cursor is None or not page.items:
                break
        return stored, found

    stored, found = _run(store_url, lambda store: _in_known_tenant(store, tenant_id, run(store)))
    if prices:
        from llmsession.pricing import price_rounds

        found = price_rounds(found, prices, stored.record.provider_id, stored.record.model)
    from llmsession.server.render import render_round, render_session

    fields = render_session(stored)
    if as_json:
        if with_rounds:
            fields["rounds"] = [render_round(r) for r in found]
        _print_json(fields)
        return
    usage = fields.pop("usage")
    fields.update({f"usage.{name}": value for name, value in usage.items()})
    width = max(len(name) for name in fields)
    for name, value in fields.items():
        click.echo(f"{name:<{width}}  {'-' if value is None else value}")
    if with_rounds:
        click.echo()
        # Cost columns only when some round has a cost: without prices, tokens only.
        priced = any(r.cost is not None for r in found)
        _print_table(
            "rounds",
            (
                "SEQ",
                "DELTA",
                "INPUT",
                "CACHED",
                "CACHE_WRITES",
                "OUTPUT",
                "REASONING",
                *(_COST_HEADERS if priced else ()),
                "RECORDED",
                "KEY",
            ),
            [
                (
                    r.seq,
                    r.delta_tokens,
                    *_usage_cells(r),
                    *(_cost_cells(r.cost) if priced else ()),
                    r.recorded_at,
                    r.idempotency_key,
                )
                for r in found
            ],
        )


#: What was paid, what a stateless client would have paid, and the difference.
_COST_HEADERS: Final = ("COST", "STATELESS", "AVOIDED", "CURRENCY")


def _cost_cells(cost: Cost | None) -> tuple[object, object, object, object]:
    """Paid, stateless, avoided (saved) and currency; "-" without a cost."""
    if cost is None:
        return (None, None, None, None)
    return (cost.paid, cost.stateless, cost.saved, cost.currency)


async def _close(
    store: SessionStore, tenant_id: TenantId, session_id: SessionId, config_path: str | None
) -> StoredSession:
    if not config_path:
        return await store.close_in_turn(tenant_id, session_id)
    from llmsession.gateway.config import load_config
    from llmsession.gateway.forwarding import Gateway
    from llmsession.gateway.transport import AiohttpUpstream

    # A provider whose key is not set here still lets the session close (its entry
    # then ends with its TTL, and the gateway says so).
    config = load_config(config_path, require_keys=False)
    gateway = Gateway(config, store, AiohttpUpstream())
    try:
        return await gateway.close_session(tenant_id, session_id)
    finally:
        await gateway.aclose()


def _usage_cells(round_: Round) -> tuple[object, ...]:
    """A round's usage columns: counts, "missing" for a gateway round without, "-" else."""
    if round_.usage is not None:
        usage = round_.usage
        return (
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.cache_write_tokens,
            usage.output_tokens,
            usage.reasoning_tokens,
        )
    mark = "missing" if round_.usage_missing else "-"
    return (mark,) * 5


@sessions.command("close")
@_tenant_option
@click.argument("session_id", type=SESSION)
@_store_option
@click.option(
    "--config",
    "config_path",
    envvar="LLMSESSION_CONFIG",
    default=None,
    help="The gateway's TOML file: also delete what a provider holds for the session "
    "(a Gemini cache entry), as closing over HTTP does [env LLMSESSION_CONFIG; none: "
    "such an entry ends with its TTL].",
)
@_json_option
def sessions_close(
    tenant_id: TenantId,
    session_id: SessionId,
    store_url: str,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Close an active session of a tenant."""
    stored = _run(
        store_url,
        lambda store: _in_known_tenant(
            store, tenant_id, _close(store, tenant_id, session_id, config_path)
        ),
    )
    if as_json:
        from llmsession.server.render import render_session

        _print_json(render_session(stored))
        return
    record = stored.record
    click.echo(
        f"Closed session {record.session_id}: {_count(record.round_count, 'round')}, "
        f"{_count(record.delta_tokens, 'delta token')}, "
        f"{_count(record.tokens_saved, 'token saved', 'tokens saved')}."
    )


# -- sweep and stats ----------------------------------------------------------------------


@cli.command()
@click.option(
    "--purge-created-after",
    # Younger sessions may be about to be activated (see MIN_PURGE_AGE_SECONDS).
    type=click.IntRange(min=MIN_PURGE_AGE_SECONDS),
    envvar="LLMSESSION_PURGE_CREATED_AFTER",
    default=86400,
    show_default=True,
    help="Delete sessions never activated this many seconds after creation "
    "(env LLMSESSION_PURGE_CREATED_AFTER).",
)
@click.option(
    "--purge-tenant",
    type=TENANT,
    default=None,
    help="Delete only this tenant's sessions never activated [default: every tenant's]. "
    "Expiry covers every tenant.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Sessions per batch [default: the store's own: 10000 for Redis, else 1000].",
)
@_store_option
@_json_option
def sweep(
    purge_created_after: int,
    purge_tenant: TenantId | None,
    batch_size: int | None,
    store_url: str,
    as_json: bool,
) -> None:
    """Expire every session whose TTL ran out and purge abandoned ones, now."""
    from llmsession.server.sweeper import Sweeper

    async def run(store: SessionStore) -> tuple[int, int]:
        if purge_tenant is not None:
            await store.get_tenant(purge_tenant)  # a misspelt tenant is an error, not 0
        sweeper = Sweeper(
            store,
            interval_seconds=1.0,
            purge_created_after_seconds=purge_created_after,
            batch_size=batch_size,
            purge_tenant_id=purge_tenant,
        )
        expired = purged = 0
        while True:
            result = await sweeper.run_once()
            expired += result.expired
            purged += result.purged
            if not (result.expired or result.purged):
                return expired, purged

    expired, purged = _run(store_url, run)
    if as_json:
        _print_json({"expired": expired, "purged": purged})
        return
    click.echo(
        f"Expired {_count(expired, 'session')}; purged "
        f"{_count(purged, 'session never activated', 'sessions never activated')}."
    )


@cli.command()
@_tenant_option
@click.option(
    "--group-by",
    type=GROUP_KEY,
    multiple=True,
    help="Group by provider and/or model (repeatable).",
)
@click.option(
    "--timeseries",
    "bucket",
    type=click.Choice(get_args(TimeBucketSize)),
    default=None,
    help="Show the time series in hour or day buckets (UTC) instead of the totals.",
)
@click.option(
    "--start",
    type=TIMESTAMP,
    default=None,
    help="With --timeseries: from the bucket holding this time (ISO 8601 with an offset) "
    "[default: 24 hours (hour) or 30 days (day) before --end].",
)
@click.option(
    "--end",
    type=TIMESTAMP,
    default=None,
    help="With --timeseries: to the last bucket starting before this time [default: now].",
)
@_prices_option
@_store_option
@_json_option
def stats(
    *,
    tenant_id: TenantId,
    group_by: tuple[GroupKey, ...],
    bucket: TimeBucketSize | None,
    start: Timestamp | None,
    end: Timestamp | None,
    config_path: str | None,
    store_url: str,
    as_json: bool,
) -> None:
    """A tenant's sessions by state, rounds, delta tokens, tokens saved and costs; with
    --timeseries, its rounds, tokens saved and new sessions per hour or day."""
    if bucket is not None:
        _timeseries(
            tenant_id=tenant_id,
            group_by=group_by,
            bucket=bucket,
            start=start,
            end=end,
            store_url=store_url,
            as_json=as_json,
        )
        return
    if start is not None or end is not None:
        raise click.UsageError("--start and --end go with --timeseries")
    prices = _prices(config_path)

    async def run(store: SessionStore) -> list[Totals]:
        from llmsession.pricing import priced_totals

        await store.get_tenant(tenant_id)  # a misspelt tenant is an error, not zeros
        return await priced_totals(store, tenant_id, group_by, prices)

    groups = _run(store_url, run)
    if as_json:
        from llmsession.server.render import render_totals

        _print_json({"groups": [render_totals(t) for t in groups]})
        return
    priced = any(t.cost is not None for t in groups)
    _print_table(
        "sessions",
        (
            "PROVIDER",
            "MODEL",
            *(state.name.upper() for state in ALL_STATES),
            "ROUNDS",
            "DELTA",
            "SAVED",
            "INPUT",
            "CACHED",
            "CACHE_WRITES",
            "OUTPUT",
            *(_COST_HEADERS if priced else ()),
        ),
        [
            (
                "(all)" if t.provider_id is None else t.provider_id,
                "(all)" if t.model is None else t.model,
                *(t.sessions.get(state.name, 0) for state in ALL_STATES),
                t.rounds,
                t.delta_tokens,
                t.tokens_saved,
                t.usage.input_tokens,
                t.usage.cached_input_tokens,
                t.usage.cache_write_tokens,
                t.usage.output_tokens,
                *(_cost_cells(t.cost) if priced else ()),
            )
            for t in groups
        ],
    )


#: The range --timeseries shows without --start: a day of hours, a month of days.
_DEFAULT_SPAN_SECONDS: Final[dict[TimeBucketSize, int]] = {"hour": 86400, "day": 30 * 86400}


def _timeseries(
    *,
    tenant_id: TenantId,
    group_by: tuple[GroupKey, ...],
    bucket: TimeBucketSize,
    start: Timestamp | None,
    end: Timestamp | None,
    store_url: str,
    as_json: bool,
) -> None:
    last = system_clock() if end is None else end
    first = last.plus_seconds(-_DEFAULT_SPAN_SECONDS[bucket]) if start is None else start

    async def run(store: SessionStore) -> list[TimeBucket]:
        await store.get_tenant(tenant_id)  # a misspelt tenant is an error, not nothing
        return await store.timeseries(
            tenant_id, bucket=bucket, start=first, end=last, group_by=group_by
        )

    buckets = _run(store_url, run)
    if as_json:
        from llmsession.server.render import render_timeseries

        _print_json(render_timeseries(bucket, first, last, buckets))
        return
    _print_table(
        "rounds or sessions in this range",
        (
            "START",
            "PROVIDER",
            "MODEL",
            "ROUNDS",
            "DELTA",
            "SAVED",
            "INPUT",
            "CACHED",
            "CACHE_WRITES",
            "OUTPUT",
            "STARTED",
        ),
        [
            (
                b.start.isoformat(),
                "(all)" if b.provider_id is None else b.provider_id,
                "(all)" if b.model is None else b.model,
                b.rounds,
                b.delta_tokens,
                b.tokens_saved,
                b.usage.input_tokens,
                b.usage.cached_input_tokens,
                b.usage.cache_write_tokens,
                b.usage.output_tokens,
                b.sessions_started,
            )
            for b in buckets
        ],
    )


# -- output -------------------------------------------------------------------------------
# JSON goes through the server's renderers, so --json prints exactly what the HTTP
# API would. They are imported on use: the server package loads FastAPI, which
# a table needs not wait for.


def _echo_new_key(issued: IssuedKey) -> None:
    info = issued.info
    click.echo(f"API key {info.key_id} for tenant {info.tenant_id} (shown only now; keep it safe):")
    click.echo(issued.api_key)


def _count(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` and the noun in the form that fits it: 1 round, 0 rounds, 2 rounds."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def _print_table(what: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    if not rows:
        click.echo(f"No {what}.")
        return
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    # Numbers line up on the right, like a person reads them; text on the left.
    numeric = [all(type(row[i]) in (int, Decimal) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = (
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(parts).rstrip()

    click.echo(line(headers))
    for row in cells:
        click.echo(line(row))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, Timestamp):
        # Seconds are enough to read; --json and 'sessions show' keep the microseconds.
        return value.to_datetime().strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, Decimal):
        return format_money(value)
    return str(value)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``llmsession`` console script."""
    cli.main(args=None if argv is None else list(argv), prog_name="llmsession")
    raise SystemExit(0)  # cli.main exits itself in standalone mode; this is for the type


if __name__ == "__main__":
    main()
