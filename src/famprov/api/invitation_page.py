"""The page behind the vault URL: ``GET /invite/{token}`` shows the
invitation, ``POST`` to the same address accepts it.

GET and HEAD change nothing: mail scanners and link previewers open links.
The POST is guarded against cross-site requests twice over (see
docs/api.md, "The invitation page"):

- a double-submit token: GET sets a random value in a ``SameSite=Strict``,
  ``HttpOnly`` cookie and the same value in the form; the POST must carry
  both, equal. Another site can make a browser post, but cannot read or set
  the cookie, and a Strict cookie does not travel on its post anyway.
- the request's origin: ``Origin`` (or, when a browser leaves it out,
  ``Referer``) must be this service, as ``FAMPROV_PUBLIC_URL`` names it or
  as the request itself was addressed.

Answers are HTML, errors included, and never cached.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from famprov.api.errors import status_for
from famprov.errors import FamprovError
from famprov.invitations.message import expiry_text
from famprov.licenses.acceptance import (
    InvitationView,
    accept_invitation,
    view_invitation,
)
from famprov.templating import environment

CSRF_FIELD = "csrf_token"
_MAX_FORM_BYTES = 1024
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    # The address holds the token: it must not leave for another site.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
}


def _secure(request: Request) -> bool:
    public = request.app.state.settings.public_url
    return bool(urlsplit(public).scheme == "https" or request.url.scheme == "https")


def _cookie_name(request: Request) -> str:
    # The __Host- prefix, where the browser allows it (HTTPS), stops a
    # sibling subdomain from planting its own value.
    return "__Host-famprov-csrf" if _secure(request) else "famprov-csrf"


def _render(
    request: Request, name: str, status: int = 200, **values: Any
) -> HTMLResponse:
    templates = environment(request.app.state.settings.template_folder)
    body = templates.get_template(f"pages/{name}.html").render(values)
    return HTMLResponse(body, status, headers=_HEADERS)


def _problem(request: Request, exc: FamprovError) -> Response:
    status = status_for(exc)
    gone = status == 410
    request.state.outcome = "invitation_gone" if gone else "invitation_unknown"
    return _render(request, "gone" if gone else "unknown", status)


def _shown(request: Request, view: InvitationView) -> Response:
    token = request.cookies.get(_cookie_name(request), "")
    if len(token) != 43:
        token = secrets.token_urlsafe(32)
    response = _render(
        request,
        "accepted" if view.accepted else "invitation",
        first_name=view.first_name,
        partner_name=view.partner_name,
        products=view.products,
        expires=expiry_text(view.expires_at),
        accepted_on=expiry_text(view.accepted_at) if view.accepted_at else None,
        csrf_token=token,
    )
    response.set_cookie(
        _cookie_name(request),
        token,
        path="/",
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


async def show(request: Request) -> Response:
    """GET and HEAD: the invitation, or why there is none; nothing changes."""
    state = request.app.state
    try:
        view = await asyncio.to_thread(
            view_invitation, state.engine, state.clock, request.path_params["token"]
        )
    except FamprovError as exc:
        return _problem(request, exc)
    request.state.outcome = "invitation_shown"
    return _shown(request, view)


async def accept(request: Request) -> Response:
    """POST: accept, then show the page again (post, redirect, get)."""
    state = request.app.state
    token = request.path_params["token"]
    if not await _same_site(request):
        request.state.outcome = "invitation_forbidden"
        return _render(request, "forbidden", 403)
    try:
        await asyncio.to_thread(accept_invitation, state.engine, state.clock, token)
    except FamprovError as exc:
        return _problem(request, exc)
    request.state.outcome = "invitation_accepted"
    return RedirectResponse(request.url.path, 303, headers=_HEADERS)


async def _same_site(request: Request) -> bool:
    cookie = request.cookies.get(_cookie_name(request), "")
    length = request.headers.get("content-length", "")
    # A browser's form post states its length; the form is a few bytes.
    if not cookie or not length.isdigit() or int(length) > _MAX_FORM_BYTES:
        return False
    async with request.form(max_files=0, max_fields=4) as form:
        sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(
        sent.encode(), cookie.encode()
    ):
        return False
    return _from_here(request)


def _origin(url: str) -> tuple[str, str] | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return parts.scheme.lower(), parts.netloc.lower()


def _from_here(request: Request) -> bool:
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return False
    ours = {
        _origin(request.app.state.settings.public_url),
        _origin(str(request.base_url)),
    }
    return _origin(claimed) in ours
