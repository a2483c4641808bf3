"""Errors the serving package raises, each carrying the HTTP status and a stable machine-readable code.

Every failure a client can cause maps to one of these, so the HTTP layer answers with a clear 4xx JSON
body instead of a stack trace, and the native API and the Open Inference Protocol share one vocabulary.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` a short identifier clients can switch on."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ServingError):
    status, code = 400, "bad_request"


class InvalidInput(ServingError):
    status, code = 422, "invalid_input"


class Unauthorized(ServingError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServingError):
    status, code = 403, "forbidden"


class TaskNotFound(ServingError):
    status, code = 404, "task_not_found"


class TaskExists(ServingError):
    status, code = 409, "task_exists"


class TaskChangesRefused(ServingError):
    """Runtime task changes are not this process's to make (e.g. a Ray Serve replica)."""

    status, code = 409, "task_changes_refused"


class PayloadTooLarge(ServingError):
    status, code = 413, "payload_too_large"


class Overloaded(ServingError):
    """The queue is full: the client should retry after ``retry_after`` seconds (503 + Retry-After)."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = retry_after


class ShuttingDown(ServingError):
    status, code = 503, "shutting_down"

    def __init__(self, message: str = "the server is shutting down; retry against another replica") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class TaskLoadError(ServingError):
    """An export folder (or Hub id) could not be loaded; the message says what to fix."""

    status, code = 422, "task_load_failed"


class HubTimeout(TaskLoadError):
    """The Hub did not deliver a task's files within ``hub_timeout_s``: the load is abandoned (504)."""

    status, code = 504, "hub_timeout"


class InferenceError(ServingError):
    status, code = 500, "inference_failed"


class InvalidExport(TaskLoadError):
    """The export folder loads but contradicts itself (manifest vs graph vs backbone config): serving it
    would fail at predict time, so the load is refused and the registry stays as it was."""

    status, code = 422, "invalid_export"


class RequestTooLarge(PayloadTooLarge):
    """One request needs more queue rows than the queue may ever hold: it could never be admitted."""

    status, code = 413, "request_too_large"
