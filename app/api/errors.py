"""The one place where errors become HTTP responses: {"error": {"code", "message", "type", "param"}}.

The shape matches OpenAI's, so standard clients show Tandem's message as it is.
"""

from __future__ import annotations

import logging
import sqlite3

import sqlite_utils.db
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tandem.app.errors import TandemError
from tandem.app.remote.worker import RemoteFailure
from tandem.runtime.errors import (ChatTemplateError, ContextOverflow, EngineClosed, Interrupted, InvalidSampling,
                                  ModelFileError, ModelUnavailable, PoolFailure, QueueFull, RuntimeFailure)
from tandem.runtime.planner import PlanError

log = logging.getLogger("tandem")

RUNTIME_STATUS = {
    RemoteFailure: 502,
    PoolFailure: 502,
    ContextOverflow: 400,
    PlanError: 400,
    ChatTemplateError: 400,
    InvalidSampling: 400,
    ModelFileError: 409,
    EngineClosed: 503,
    QueueFull: 429,
    ModelUnavailable: 503,
    Interrupted: 499,  # the client went away: nobody reads this answer
}


def error_body(code: str, message: str, status: int) -> dict:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"error": {"code": code, "message": message, "type": kind, "param": None}}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, status), status_code=status, headers=headers)


def runtime_status(err: RuntimeFailure) -> int:
    for cls in type(err).__mro__:
        if cls in RUNTIME_STATUS:
            return RUNTIME_STATUS[cls]
    return 500


def describe_validation(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        if e.get("type") == "json_invalid":
            return "The request body is not valid JSON. Send a JSON object with Content-Type: application/json."
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    more = f"; and {len(parts) - 5} more" if len(parts) > 5 else ""  # a huge request gets a short answer
    return "Invalid request: " + "; ".join(parts[:5]) + more


def install(app: FastAPI) -> None:
    @app.exception_handler(TandemError)
    async def _tandem(request: Request, err: TandemError):
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(RuntimeFailure)
    async def _runtime(request: Request, err: RuntimeFailure):
        status = runtime_status(err)
        if status >= 500 and status != 503:
            log.error("engine failure on %s: %s", request.url.path, err)
        headers = {"Retry-After": str(err.retry_after_s)} if isinstance(err, QueueFull) else None
        return error_response(status, err.code, str(err), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        return error_response(422, "invalid_request", describe_validation(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        message = err.detail if isinstance(err.detail, str) else "Request failed"
        if err.status_code == 404 and message == "Not Found":
            message = f"No such endpoint: {request.method} {request.url.path}."
        if err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return error_response(err.status_code, "http_error", message)

    @app.exception_handler(sqlite3.OperationalError)
    async def _database(request: Request, err: sqlite3.OperationalError):
        if "full" in str(err):  # SQLITE_FULL: the write was rolled back, earlier data is intact
            log.error("the disk is full: %s on %s", err, request.url.path)
            return error_response(507, "disk_full", "The disk that holds Tandem's data folder is full, so this "
                                  "was not saved (nothing saved earlier is lost). Free some space, then try again.")
        log.exception("database error on %s", request.url.path)
        return error_response(500, "internal_error", "Tandem hit a database error; the details are in its log.")

    @app.exception_handler(sqlite_utils.db.NotFoundError)
    async def _gone(request: Request, err: Exception):
        # A row deleted by another request between this request's check and its write.
        return error_response(404, "not_found", "What this request changes was deleted meanwhile; reload and try again.")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal_error", "Tandem hit an unexpected error; the details are in its log.")
