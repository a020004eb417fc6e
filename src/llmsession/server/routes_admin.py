"""Admin routes under /v1/admin: tenants and their API keys. The admin key only."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from llmsession.ids import TenantId
from llmsession.keys import issue_key
from llmsession.server.auth import admin_dependency
from llmsession.server.context import AppContext
from llmsession.server.params import KeyIdPath, StrictQueryRoute, TenantIdPath
from llmsession.server.render import render_api_key, render_issued_key, render_tenant
from llmsession.server.responses import error_responses
from llmsession.server.schemas import (
    ApiKeyOut,
    ApiKeysOut,
    CreateTenantIn,
    IssuedKeyOut,
    NewTenantOut,
    TenantsOut,
)

__all__ = ["admin_routes"]


def admin_routes(context: AppContext) -> APIRouter:
    """The /v1/admin routes of one app."""
    router = APIRouter(
        prefix="/v1/admin",
        tags=["admin"],
        dependencies=[Depends(admin_dependency(context))],
        responses=error_responses(400, 401, 403, 413, 503),
        route_class=StrictQueryRoute,
        redirect_slashes=False,  # as the app's: see create_app
    )

    @router.post(
        "/tenants",
        status_code=201,
        response_model=NewTenantOut,
        responses=error_responses(409, 422),
        summary="Register a tenant and issue its first API key (shown once)",
    )
    async def create_tenant(body: CreateTenantIn) -> JSONResponse:
        tenant = await context.store.create_tenant(TenantId(body.tenant_id))
        issued = await issue_key(context.store, tenant.tenant_id)
        payload = render_tenant(tenant)
        payload["key_id"] = issued.info.key_id
        payload["api_key"] = issued.api_key
        return JSONResponse(payload, 201)

    @router.get("/tenants", response_model=TenantsOut, summary="List every tenant")
    async def list_tenants() -> JSONResponse:
        tenants = await context.store.list_tenants()
        return JSONResponse({"items": [render_tenant(t) for t in tenants]})

    @router.post(
        "/tenants/{tenant_id}/keys",
        status_code=201,
        response_model=IssuedKeyOut,
        responses=error_responses(404, 422),
        summary="Issue another API key for a tenant (shown once)",
    )
    async def issue_tenant_key(tenant_id: TenantIdPath) -> JSONResponse:
        issued = await issue_key(context.store, TenantId(tenant_id))
        return JSONResponse(render_issued_key(issued), 201)

    @router.get(
        "/tenants/{tenant_id}/keys",
        response_model=ApiKeysOut,
        responses=error_responses(404, 422),
        summary="List a tenant's API keys (never the keys themselves)",
    )
    async def list_tenant_keys(tenant_id: TenantIdPath) -> JSONResponse:
        tenant = await context.store.get_tenant(TenantId(tenant_id))
        keys = await context.store.list_api_keys(tenant.tenant_id)
        return JSONResponse({"items": [render_api_key(k) for k in keys]})

    @router.post(
        "/keys/{key_id}/revoke",
        response_model=ApiKeyOut,
        responses=error_responses(404, 422),
        summary="Revoke an API key (idempotent)",
    )
    async def revoke_key(key_id: KeyIdPath) -> JSONResponse:
        info = await context.store.revoke_api_key(key_id)
        context.keys.forget_key(key_id)
        return JSONResponse(render_api_key(info))

    return router
