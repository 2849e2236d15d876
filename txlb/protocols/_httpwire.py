"""
The small functions of the L7 front that write HTTP messages (txlb's own
answers, heads, body chunks, access-log lines) and read request details
(origin form, cookies, hash keys).
"""

from __future__ import annotations

import time
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from txlb.protocols.framing import _validHost

if TYPE_CHECKING:
    from txlb.protocols._httpparts import ProxiedRequest

class _Reject(Exception):
    """
    Raised inside a parser callback to refuse the request.
    """

    def __init__(
        self, status: int, reason: str, headers: tuple[bytes, ...] = ()
    ) -> None:
        """
        @param headers: extra header lines for the answer (e.g.
            C{b"Retry-After: 2"}).
        """
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers


_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _errorResponse(
    status: int, reason: str, close: bool, headers: tuple[bytes, ...] = ()
) -> bytes:
    body = f"{status} {_REASONS.get(status, b'Error').decode()}: {reason}\n".encode()
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
    ]
    for line in headers:
        head.append(line + b"\r\n")
    if close:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


# Joins one (name, value) pair into a header line; mapped over a block, it
# serializes the block in C.
_headerLine = b": ".join


def _statusHead(status: int, reason: bytes, headers: Any) -> bytes:
    reason = reason or _REASONS.get(status, b"")
    if not headers:
        return b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason)
    return b"HTTP/1.1 %d %s\r\n%s\r\n\r\n" % (
        status, reason, b"\r\n".join(map(_headerLine, headers)),
    )


def _requestHead(method: bytes, target: bytes, headers: Any) -> bytes:
    if not headers:
        return b"".join((method, b" ", target, b" HTTP/1.1\r\n\r\n"))
    return b"".join((
        method, b" ", target, b" HTTP/1.1\r\n",
        b"\r\n".join(map(_headerLine, headers)), b"\r\n\r\n",
    ))


def _frameBody(request: ProxiedRequest, data: bytes) -> bytes:
    if request.framing is not None and request.framing.chunked:
        return b"%x\r\n%s\r\n" % (len(data), data)
    return data


def _originForm(target: bytes) -> tuple[bytes, bytes | None]:
    """
    Split an absolute-form target into its origin form and host.

    @raise _Reject: not an http(s) absolute URI.
    """
    lowered = target[:8].lower()
    if lowered.startswith(b"http://"):
        rest = target[7:]
    elif lowered.startswith(b"https://"):
        rest = target[8:]
    else:
        raise _Reject(400, "invalid request target")
    slash = rest.find(b"/")
    query = rest.find(b"?")
    cut = min(i for i in (slash, query, len(rest)) if i >= 0)
    host, path = rest[:cut], rest[cut:]
    if not host or not _validHost(host):
        raise _Reject(400, "invalid request target")
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, host


def _cookie(headers: Any, name: bytes) -> bytes | None:
    """
    The value of cookie C{name} in the request's Cookie headers.
    """
    for hname, value in headers:
        if hname.lower() != b"cookie":
            continue
        for part in value.split(b";"):
            key, sep, val = part.strip().partition(b"=")
            if sep and key == name:
                return val.strip(b'"')
    return None


def _hashKey(spec: tuple[str, bytes | None] | None, request: ProxiedRequest,
             peer: str) -> bytes | None:
    """
    The affinity key for hashing strategies, by the pool's C{hash_key}.
    """
    if spec is None:
        return None
    kind, name = spec
    if kind == "path":
        return request.target.split(b"?", 1)[0]
    if kind == "header":
        assert name is not None
        for hname, value in request.headers:
            if hname.lower() == name:
                return value
        return None
    if kind == "cookie":
        assert name is not None
        return _cookie(request.headers, name)
    return peer.encode("ascii", "replace")


def _accessLine(request: ProxiedRequest, client: str, now: float) -> str:
    """
    The access-log record of C{request} as L{_accessRecord} makes it, as
    the line of JSON an L{AccessLog} writes: the same fields in the same
    order with the same values, made at once, which costs a fifth of making
    the dictionary and serializing it.  (Its numbers are written with their
    decimals rather than as C{repr} of a rounded float: C{1.500} for
    C{1.5}, the same number.)
    """
    l7pool = request.l7pool
    backend = request.backend
    return _ACCESS_LINE % (
        time.time(),
        encode_basestring(client),
        encode_basestring(request.method.decode("latin-1")),
        encode_basestring(request.target.decode("latin-1")),
        request.status,
        request.bodyReceived,
        request.bytesOut,
        "null" if l7pool is None else encode_basestring(l7pool.pool.name),
        "null" if backend is None else encode_basestring(backend.name),
        request.attempts,
        now - request.started if request.started else 0.0,
    )


# The fields of _accessRecord, in its order, rounded as it rounds them.
_ACCESS_LINE = (
    '{"time":%.3f,"client":%s,"method":%s,"target":%s,"status":%d,"bytes_in":%d,'
    '"bytes_out":%d,"pool":%s,"backend":%s,"attempts":%d,"duration":%.6f}'
)


def _accessRecord(request: ProxiedRequest, client: str, now: float) -> dict[str, Any]:
    """
    The access-log record of C{request}, from C{client}, answered at C{now}
    (C{reactor.seconds()} time).
    """
    return {
        "time": round(time.time(), 3),
        "client": client,
        "method": request.method.decode("latin-1"),
        "target": request.target.decode("latin-1"),
        "status": request.status,
        "bytes_in": request.bodyReceived,
        "bytes_out": request.bytesOut,
        "pool": request.l7pool.pool.name if request.l7pool else None,
        "backend": request.backend.name if request.backend else None,
        "attempts": request.attempts,
        "duration": round(now - request.started, 6) if request.started else 0.0,
    }


def _describe(reason: Failure) -> str:
    value = reason.value
    text = str(value)
    return text if text else type(value).__name__


def _parserReason(e: Exception) -> str:
    text = str(e).strip()
    if text.startswith("HPE_") or not text:
        return "malformed request"
    return "malformed request: " + text.split(".")[0][:80]
