"""Domain errors of the app layer. Each has an HTTP status and a message written for people.

One place (app.api.errors) maps these, and runtime errors, to JSON responses.
"""

from __future__ import annotations


class TandemError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(TandemError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(TandemError):
    status = 409
    code = "conflict"


class InvalidRequest(TandemError):
    status = 422
    code = "invalid_request"


class ServiceUnavailable(TandemError):
    status = 503
    code = "unavailable"
