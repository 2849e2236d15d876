"""
Who may call what on the admin service.

Read-only endpoints answer without a token when the configuration leaves
them open (the default; the admin listens on loopback unless a token is
set).  Mutating calls always need C{Authorization: Bearer <token>} when a
token is configured, accept only C{application/json} bodies (an HTML form
cannot send one without a CORS preflight), and check C{Host} and C{Origin}
so that a page on another site, or a DNS name rebound to 127.0.0.1, cannot
drive them from a browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any

from twisted.web.iweb import IRequest

from txlb.config import AdminConfig

JSON = b"application/json"
# The largest request body an admin call reads: its JSON is a few fields.
MAX_BODY = 64 * 1024


class Refused(Exception):
    """
    A request the guard refuses, with its status and a message for the
    client.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def _hostOf(value: bytes) -> str:
    """
    The host part of a C{Host} header value or an origin's authority,
    lowercased, without brackets or port.
    """
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def allowedHost(host: str, config: AdminConfig) -> bool:
    """
    Whether C{host} names the admin service itself: its address, or
    C{localhost} and loopback addresses when it listens on loopback, or any
    address when it listens on all of them.  A DNS name rebound to
    127.0.0.1 by a hostile page is not among them.
    """
    host = host.rstrip(".")
    if host in config.allowedHosts:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" and ipaddress.ip_address(config.address).is_loopback
    listening = ipaddress.ip_address(config.address)
    if listening.is_unspecified:
        return True
    if listening.is_loopback:
        return ip.is_loopback
    return ip == listening


class Guard:
    """
    The checks of one admin service.

    @ivar config: its L{AdminConfig}.
    """

    def __init__(self, config: AdminConfig) -> None:
        self.config = config

    def checkHost(self, request: IRequest) -> None:
        """
        @raise Refused: 421 when C{Host} does not name this service.
        """
        host = request.getHeader(b"host")
        if host is None or not allowedHost(_hostOf(host), self.config):
            raise Refused(421, "Host does not name this admin service")

    def tokenGiven(self, request: IRequest) -> bool:
        """
        Whether the request carries the configured token (compared in
        constant time).  C{True} when no token is configured.
        """
        token = self.config.token
        if token is None:
            return True
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))

    def checkRead(self, request: IRequest) -> None:
        """
        A read-only request.

        @raise Refused: 421 for a foreign Host; 401 when reads need the
            token and it is missing or wrong.
        """
        self.checkHost(request)
        if not self.config.openReads and not self.tokenGiven(request):
            raise Refused(401, "this endpoint needs Authorization: Bearer <token>")

    def checkWrite(self, request: IRequest) -> None:
        """
        A mutating request.

        @raise Refused: 421 for a foreign Host; 403 for a foreign Origin;
            401 without the right token; 415 for a body that is not JSON.
        """
        self.checkHost(request)
        origin = request.getHeader(b"origin")
        if origin is not None:
            # Same origin only: the page must come from this very service
            # (scheme, host and port), not from another port of localhost.
            host = (request.getHeader(b"host") or b"").strip().lower()
            if origin.strip().lower() != b"http://" + host:
                raise Refused(403, "cross-origin requests are refused")
        if not self.tokenGiven(request):
            raise Refused(401, "this call needs Authorization: Bearer <token>")
        if request.method.upper() in (b"POST", b"PUT", b"PATCH"):
            kind = request.getHeader(b"content-type") or b""
            if kind.split(b";", 1)[0].strip().lower() != JSON:
                raise Refused(415, "send the body as application/json")


def readJSON(request: IRequest) -> Any:
    """
    The request's JSON body.

    @raise Refused: 400 when it is not valid JSON (or not UTF-8).
    """
    body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(body) > MAX_BODY:
        raise Refused(413, f"the body is over {MAX_BODY} bytes")
    if not body.strip():
        raise Refused(400, "the body must be a JSON object")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Refused(400, f"the body is not valid JSON: {e}")
    except RecursionError:
        raise Refused(400, "the body is not valid JSON: nested too deeply")


def writeJSON(request: IRequest, value: Any, status: int = 200) -> bytes:
    """
    Set C{request}'s status and headers for a JSON answer; return the body.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, indent=1, sort_keys=False).encode("utf-8") + b"\n"


def writeError(request: IRequest, status: int, message: str) -> bytes:
    """
    A JSON error answer: C{{"error": message}} (with C{WWW-Authenticate}
    on a 401, as RFC 9110 asks).
    """
    if status == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="txlb admin"')
    return writeJSON(request, {"error": message}, status)
