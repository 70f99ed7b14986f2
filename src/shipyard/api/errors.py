"""The one place control-plane errors become HTTP responses: `{"error": "..."}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard.errors import ShipyardError, http_error

log = logging.getLogger("shipyard.api")


def _error(status: int, message: str) -> Response:
    body, headers = http_error(status, message)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _shipyard_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ShipyardError)
    if exc.status == 500:  # 503s and 504s are load, counted in /metrics, not news
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return _error(exc.status, exc.message)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return _error(422, "invalid request: " + "; ".join(problems))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    return _error(exc.status_code, message)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Internals stay in the server log; the client learns only that it failed.
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ShipyardError, _shipyard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
