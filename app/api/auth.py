"""Signing in from a browser on another device, when Tandem serves the local network.

API clients send the key with every request (Authorization: Bearer KEY). A browser page cannot
add a header to everything it loads (event streams, downloads), so the page asks for the key
once and trades it here for a cookie the browser then sends by itself: HttpOnly (no script can
read it) and SameSite=Strict (no other site's page can make the browser send it).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from tandem.app.security import KEY_COOKIE, SIGN_IN, cookie_value, key_matches
from tandem.app.errors import TandemError

router = APIRouter(tags=["auth"])

COOKIE_DAYS = 30


class Unauthorized(TandemError):
    status = 401
    code = "unauthorized"


class SignIn(BaseModel):
    key: str = Field(..., min_length=1, max_length=200)


@router.post(SIGN_IN, status_code=204)
async def sign_in(body: SignIn, request: Request) -> Response:
    """204 with the key's cookie when the key is right; 401 otherwise."""
    if not key_matches(body.key.strip(), request.app.state.key_hash):
        await asyncio.sleep(0.5)  # keys are random: this only keeps a script from trying fast
        raise Unauthorized("That is not this Tandem's API key. It is on the Settings page of the computer that "
                           "runs Tandem (New key makes one).")
    response = Response(status_code=204)
    response.set_cookie(KEY_COOKIE, cookie_value(body.key.strip()), max_age=COOKIE_DAYS * 86400, httponly=True,
                        samesite="strict", path="/")
    return response


@router.delete(SIGN_IN, status_code=204)
def sign_out() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(KEY_COOKIE, path="/", httponly=True, samesite="strict")
    return response
