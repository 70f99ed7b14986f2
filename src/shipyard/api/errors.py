"""Errors raised under FastAPI become HTTP answers here, through the one mapping in
transports/http.py that the inference fast path uses too: `{"error": "..."}`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


_MAX_PROBLEMS = 5


def describe_problems(errors: Sequence[Mapping[str, Any]]) -> str:
    """`where: what` for each pydantic error. Never its `input` (the caller's own value
    echoed back, a secret perhaps) nor `ctx` or `url`; a part of `where` that is the
    caller's own dictionary key is cut short."""
    problems = []
    for error in errors[:_MAX_PROBLEMS]:
        where = ".".join(str(part)[:40] for part in error.get("loc", ())) or "body"
        problems.append(f"{where}: {str(error.get('msg', 'invalid'))[:200]}")
    if len(errors) > _MAX_PROBLEMS:
        problems.append(f"and {len(errors) - _MAX_PROBLEMS} more")
    return "; ".join(problems)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _error(422, "invalid request: " + describe_problems(exc.errors()))


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
