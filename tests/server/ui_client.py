"""Signing in to the dashboard from tests: an httpx client holding the session cookie."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    found = _CSRF.search(html)
    assert found is not None, f"no CSRF token in the page:\n{html[:2000]}"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, key: str) -> str:
    """Sign ``client`` in with ``key`` through the sign-in form; the CSRF token of its pages."""
    form = await client.get("/ui/sign-in")
    assert form.status_code == 200, form.text
    signed = await client.post(
        "/ui/sign-in", data={"csrf_token": csrf_of(form.text), "api_key": key}
    )
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == "/ui"
    overview = await client.get("/ui")
    assert overview.status_code == 200, overview.text
    return csrf_of(overview.text)


@asynccontextmanager
async def ui_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of its own (its own cookie jar) on the in-process ``app``."""
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
