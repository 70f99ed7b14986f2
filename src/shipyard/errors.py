"""One exception hierarchy for all of Shipyard.

Each class carries the HTTP status it maps to; transports translate these in
exactly one place and never invent statuses of their own. The core never
imports a web framework.
"""

from __future__ import annotations

import json
from http import HTTPStatus


class ShipyardError(Exception):
    """Base of every error Shipyard raises on purpose."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ShipyardError):
    """The caller sent something malformed or inconsistent."""

    status = HTTPStatus.BAD_REQUEST


class NotFound(ShipyardError):
    """A model, version, alias or other named thing does not exist."""

    status = HTTPStatus.NOT_FOUND


class Conflict(ShipyardError):
    """The request clashes with the current state (duplicate, archived, immutable)."""

    status = HTTPStatus.CONFLICT


class UnsupportedModel(InvalidInput):
    """A file or folder is not a model of any flavor Shipyard knows."""


class MissingExtra(ShipyardError):
    """An optional framework is needed but not installed."""

    status = HTTPStatus.NOT_IMPLEMENTED

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'shipyard[{extra}]'"
        )
        self.package = package
        self.extra = extra


class IntegrityError(ShipyardError):
    """Stored bytes do not match their recorded sha256: refuse to use them."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class PayloadTooLarge(ShipyardError):
    """A request body or tensor is over the configured limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class HeadersTooLarge(ShipyardError):
    """A request's line and headers are over the bound the server keeps for them."""

    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


class RequestTimeout(ShipyardError):
    """The client paused too long while sending its request."""

    status = HTTPStatus.REQUEST_TIMEOUT


class EnvironmentUnavailable(ShipyardError):
    """A version's Python environment cannot be had here: uv is missing, or building it
    from the version's pins failed (the message quotes the build log's last lines)."""

    status = HTTPStatus.FAILED_DEPENDENCY


class ModelNotReady(ShipyardError):
    """The model is still loading (or failed to load); try again shortly."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class WorkerCrashed(ShipyardError):
    """The worker process running this request died; the server replaces it."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class DeadlineExceeded(ShipyardError):
    """The request's deadline passed before the model answered."""

    status = HTTPStatus.GATEWAY_TIMEOUT


class ModelFailed(ShipyardError):
    """The model itself raised: reported by type and message, never a traceback."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class ModelRefusedInput(InvalidInput):
    """The model raised ValueError or TypeError on the input: the caller's to fix (400).

    The model's own words go to the server log, not to the caller: they may quote its
    code, its data or the server's paths."""


class Overloaded(ShipyardError):
    """Too much queued already, or the deadline cannot be met: refused at once."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class StreamUnavailable(ShipyardError):
    """Redis could not be reached again within the stream consumer's reconnect time."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


def http_error(status: int, message: str) -> tuple[bytes, dict[str, str]]:
    """The one JSON error body every HTTP answer uses, and its extra headers.

    Overload and not-ready answers tell the client when to come back.
    """
    body = json.dumps({"error": message}).encode()
    headers = {"retry-after": "1"} if status in (429, 503) else {}
    return body, headers


class Unauthenticated(ShipyardError):
    """No credentials, or credentials that are wrong, revoked or expired."""

    status = HTTPStatus.UNAUTHORIZED


class Forbidden(ShipyardError):
    """The caller is known but its role does not allow this."""

    status = HTTPStatus.FORBIDDEN


class RateLimited(ShipyardError):
    """The caller's key is over its request rate."""

    status = HTTPStatus.TOO_MANY_REQUESTS
