"""Failures as the API server sends them: a metav1.Status body with its HTTP code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from .resources import JSON

_STATUS_REASONS: Final = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class HTTPStatus(Exception):
    """Raised inside handlers; becomes a Status response."""

    def __init__(
        self,
        code: int,
        message: str,
        details: JSON | None = None,
        *,
        metadata: JSON | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.metadata = metadata
        self.headers = headers


def status_body(code: int, message: str, details: JSON | None = None, metadata: JSON | None = None) -> JSON:
    """A metav1.Status failure object as the API server sends it."""
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": metadata or {},
        "status": "Failure",
        "message": message,
        "reason": _STATUS_REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def json_response(body: JSON | bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return web.Response(body=data, status=status, content_type="application/json", headers=headers)


def truthy(v: str | None) -> bool:
    return (v or "").lower() in ("true", "1")
