"""Static files from the package (the dashboard's, and the vendored uPlot and Swagger
UI), and the /docs page served with those local copies, so both work offline."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import FileResponse, HTMLResponse, Response

from llmsession.errors import NotFoundError

__all__ = ["STATIC_DIR", "STATIC_PREFIX", "install_offline_docs", "static_routes"]

STATIC_DIR = Path(__file__).resolve().with_name("static")
STATIC_PREFIX = "/ui/static"
_SWAGGER = f"{STATIC_PREFIX}/vendor/swagger-ui"

# The vendored files change only with the package: an hour of caching costs nothing.
_STATIC_HEADERS = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _index() -> dict[str, Path]:
    # Only the files the package holds, looked up by name: a request path is never
    # joined onto the directory, so nothing outside it can be reached.
    return {
        path.relative_to(STATIC_DIR).as_posix(): path
        for path in STATIC_DIR.rglob("*")
        if path.is_file()
    }


def static_routes() -> APIRouter:
    """GET /ui/static/{path}: the package's static files."""
    files = _index()
    router = APIRouter(include_in_schema=False, redirect_slashes=False)

    @router.get(STATIC_PREFIX + "/{path:path}", name="ui_static")
    async def ui_static(request: Request) -> Response:
        path: str = request.path_params["path"]
        found = files.get(path)
        if found is None:
            raise NotFoundError(f"no static file {path[:200]!r}")
        media = _MEDIA_TYPES.get(found.suffix) or mimetypes.guess_type(found.name)[0]
        return FileResponse(found, media_type=media, headers=_STATIC_HEADERS)

    return router


def install_offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and its OAuth2 redirect page, with Swagger UI's assets from
    this server instead of a CDN. The app must be made with ``docs_url=None``."""
    title = f"{app.title} - Swagger UI"
    redirect = "/docs/oauth2-redirect"

    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{_SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{_SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{_SWAGGER}/favicon-32x32.png",
            oauth2_redirect_url=redirect,
            # No validator badge: it would call validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route(redirect, oauth2_redirect, include_in_schema=False)
