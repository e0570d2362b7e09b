"""Kaggle's JSON wire conventions, as the official client reads them (shared/docs/kaggle-api.md §1).

camelCase names, enums by name, fields at their default left out, datetimes as ISO strings with ``Z``,
durations as ``"<seconds>.<millis>s"``. Errors carry the real HTTP status and ``{"code", "message"}``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


class ApiFailure(Exception):
    """An error answer: HTTP ``status`` with ``{"code": status, "message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(what: str) -> ApiFailure:
    return ApiFailure(404, f"{what} not found")


def compact(value: Any) -> Any:
    """Leave out what the server leaves out: ``None``, empty strings and empty lists, at every level."""
    if isinstance(value, dict):
        items = ((k, compact(v)) for k, v in value.items())
        return {k: v for k, v in items if v is not None and v != "" and v != []}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def error_body(status: int, message: str, envelope: str = "kaggle") -> dict[str, Any]:
    if envelope == "google":
        return {
            "error": {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
        }
    return {"code": status, "message": message}


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}


def timestamp(epoch_s: float | None) -> str | None:
    """An epoch time as the client's DateTimeSerializer writes it: naive UTC, milliseconds, ``Z``."""
    if epoch_s is None:
        return None
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def duration(seconds: float) -> str:
    return f"{max(0.0, seconds):.3f}s"


def version_number(label: str | None) -> int | None:
    """``"v3"`` -> 3; ``None``/empty -> None. A label that is not ``vN`` is a 404, as on Kaggle."""
    if not label:
        return None
    if label[:1] == "v" and label[1:].isdigit():
        return int(label[1:])
    raise not_found(f"version {label!r}")
