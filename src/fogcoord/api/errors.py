"""One place mapping errors to HTTP: the error hierarchy to 4xx/5xx JSON, never a bare 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fogcoord.contracts.errors import FogError

log = logging.getLogger("fogcoord.api")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FogError)
    async def fog_error(_request: Request, exc: FogError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
        return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            problems.append({"field": ".".join(loc) or "<body>", "reason": err.get("msg", "")})
        first = problems[0] if problems else {"field": "<body>", "reason": "invalid"}
        return JSONResponse(
            {
                "error": "validation_failed",
                "detail": f"{first['field']}: {first['reason']}",
                "field": first["field"],
                "reason": first["reason"],
                "errors": problems,
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            {"error": "internal_error", "detail": f"{type(exc).__name__}"}, status_code=500
        )
