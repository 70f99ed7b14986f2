"""Errors raised under FastAPI become HTTP answers here, through the one mapping in
transports/http.py that the inference fast path uses too: `{"error": "..."}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard.errors import ShipyardError
from shipyard.transports.http import error_answer, failure


def _error(status: int, message: str) -> Response:
    answer = error_answer(status, message)
    return Response(answer.body, status, answer.headers, media_type=answer.media_type)


async def _failed(request: Request, exc: Exception) -> Response:
    """A ShipyardError with its status, anything else a 500 whose details stay in the log."""
    return _error(*failure(exc, request.method, request.url.path))


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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ShipyardError, _failed)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _failed)
