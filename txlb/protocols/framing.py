"""
The framing half of the L7 header policy: validation.  Pure functions, no
I/O, no reactor.

A parser (llhttp, through httptools) hands over each header block as a list
of C{(name, value)} byte pairs, names in the case they arrived in.
L{validateRequestHeaders} and L{validateResponseHeaders} apply the RFC 9112
framing rules strictly, including the ones a parser may let through, and say
how the message body is delimited; L{planResponse} says how txlb frames a
response to its client.  L{txlb.protocols.headers} builds the header blocks
txlb sends on from what these return.

Transfer codings: txlb accepts a C{Transfer-Encoding} only when its whole
value is C{chunked} (any letter case).  C{gzip, chunked} is valid framing,
but txlb does not forward other codings safely (it re-frames bodies, and a
backend that disagrees about a coding list is how smuggling starts); Envoy
likewise refuses every coding but C{chunked}.  Any other value, a list, a
repeated header or one with stray whitespace is a 400 (a 502 from a
backend).  Framing values
(C{Content-Length}, C{Transfer-Encoding}, C{Host}) must carry no whitespace
at all, not even trailing whitespace llhttp leaves in a value: no real client
sends it, and it is a classic ingredient of smuggling attempts.

These run once per message: the characters of a whole block are checked in
a few C-level scans, then one loop over the lines looks each name up, as
received, in a table of the names seen before (L{_NAME_KINDS}), which says
whether it is a token and whether validation looks at it; nothing is
compiled or allocated per call beyond the result.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import NoReturn, Sequence

import attrs

__all__ = [
    "MAX_CONTENT_LENGTH_DIGITS",
    "MAX_HEADERS",
    "Body",
    "HeaderError",
    "Headers",
    "RequestFraming",
    "ResponseFraming",
    "ResponsePlan",
    "planResponse",
    "validateRequestHeaders",
    "validateResponseHeaders",
]

Headers = Sequence[tuple[bytes, bytes]]

#: The most header lines txlb accepts in one request or response (HAProxy's
#: default limit is 101 with the start line).
MAX_HEADERS = 100

#: The most digits a Content-Length may have: 18 digits always fit in 63 bits.
MAX_CONTENT_LENGTH_DIGITS = 18

_ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
#: RFC 9110 tchar.
_TCHAR = _ALNUM + b"!#$%&'*+-.^_`|~"
#: Everything but the CTLs: field-vchar, obs-text, SP and HTAB.
_FIELD_CHARS = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
#: A reg-name as txlb accepts it: no percent-encoding, no sub-delims.
_HOST_CHARS = _ALNUM + b"-._~"

_badNameChar = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]").search
_badValueChar = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
# A value, in values joined with LF, that starts with whitespace.
_foldedValue = re.compile(rb"\n[ \t]").search

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# What a Connection header may not name: dropping these would change how the
# message is routed or framed.
_UNNAMEABLE = frozenset({b"host", b"content-length", b"transfer-encoding"})
# The names txlb looks at while validating (see _NameKinds).
_INTERESTING = _FRAMING | {b"host", b"connection", b"upgrade", b"expect"}

_WS = b" \t"
_WS_START = frozenset({b" ", b"\t"})
_CHUNKED = b"chunked"
_CONTINUE = b"100-continue"
_H2C = b"h2c"
_NO_TOKENS: frozenset[bytes] = frozenset()
# The Connection values nearly every message carries, parsed once.
_COMMON_CONNECTION = {
    value: frozenset(t.strip() for t in value.split(b","))
    for value in (
        b"close",
        b"keep-alive",
        b"upgrade",
        b"keep-alive, upgrade",
        b"upgrade, keep-alive",
    )
}


class HeaderError(Exception):
    """
    A header block that txlb refuses.

    @ivar status: the status to answer with: 400, 417, 431, 505 for a
        request; 502 for a backend's response.
    @ivar reason: a short, fixed description for a plain-text body and the
        access log; it never quotes what was received.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class Body(enum.Enum):
    """
    How a message body is delimited.
    """

    # Members are singletons compared by identity: hash them by identity
    # too, in C (Enum.__hash__ is Python code, and members are looked up in
    # sets and dicts on the hot path).
    __hash__ = object.__hash__

    #: No body, by rule (HEAD, 1xx, 204, 304) or because nothing announces one.
    NONE = "none"
    #: Exactly C{Content-Length} bytes.
    LENGTH = "length"
    #: The chunked transfer coding.
    CHUNKED = "chunked"
    #: Everything until the connection closes.
    CLOSE = "close"


# The members as module constants, for the functions below that run once per
# message: CPython 3.11 does not specialize reading an attribute of a class,
# and a member read from its enum class costs some 70 ns, a global 5.
_BODY_NONE = Body.NONE
_BODY_LENGTH = Body.LENGTH
_BODY_CHUNKED = Body.CHUNKED
_BODY_CLOSE = Body.CLOSE


@attrs.frozen
class RequestFraming:
    """
    What a valid request header block says about its message.

    L{forwardRequestHeaders} takes one of these as the framing txlb will
    send; the caller may change it with C{attrs.evolve} (to drop C{upgrade}
    when it will not tunnel, or C{expectContinue} when it answers the
    expectation itself).

    @ivar contentLength: the body length, or C{None}.
    @ivar chunked: the body uses the chunked coding.
    @ivar host: the Host value as received (it may carry a port), or C{None}
        for an HTTP/1.0 request without one.
    @ivar keepAlive: the client wants the connection kept after this
        exchange (HTTP/1.1 without C{close}; HTTP/1.0 with C{keep-alive}).
    @ivar upgrade: the Upgrade value when C{Connection} names C{upgrade} on
        HTTP/1.1, else C{None}; also C{None} when it offers C{h2c}, which
        txlb never tunnels (see L{validateRequestHeaders}).
    @ivar expectContinue: an HTTP/1.1 C{Expect: 100-continue}.
    @ivar connectionTokens: the C{Connection} tokens, lowercase.
    """

    contentLength: int | None = None
    chunked: bool = False
    host: bytes | None = None
    keepAlive: bool = True
    upgrade: bytes | None = None
    expectContinue: bool = False
    connectionTokens: frozenset[bytes] = _NO_TOKENS

    @property
    def body(self) -> Body:
        """
        How the request body is delimited: a request is never read until
        close.
        """
        if self.chunked:
            return _BODY_CHUNKED
        if self.contentLength:
            return _BODY_LENGTH
        return _BODY_NONE


@attrs.frozen
class ResponseFraming:
    """
    What a valid backend response header block says about its message.

    @ivar status: the response status.
    @ivar body: how the body is delimited.
    @ivar contentLength: the body length for L{Body.LENGTH}; for a response
        to HEAD or a 304, the length the backend announced (passed on as
        is), else C{None}.
    @ivar keepAlive: the backend connection can carry another request after
        this response (never when the body ends at close).
    @ivar upgrade: the Upgrade value of a 101, else C{None}.
    @ivar connectionTokens: the C{Connection} tokens, lowercase.
    """

    status: int
    body: Body
    contentLength: int | None = None
    keepAlive: bool = True
    upgrade: bytes | None = None
    connectionTokens: frozenset[bytes] = _NO_TOKENS


@attrs.frozen
class ResponsePlan:
    """
    How txlb sends a response to its client.

    @ivar body: the framing txlb writes: a close-delimited or chunked
        backend body becomes chunked for an HTTP/1.1 client and
        close-delimited for an HTTP/1.0 client.
    @ivar close: txlb closes the client connection after this response.
    """

    body: Body
    close: bool


# Host values already found valid: a listener sees the same few on nearly
# every request.  Bounded like L{_NAME_KINDS}.
_VALID_HOSTS: set[bytes] = set()
_MAX_VALID_HOSTS = 1024


def _validHost(host: bytes) -> bool:
    """
    @return: C{host} is C{reg-name}, an IPv4 address or an IPv6 literal, then
        an optional C{:port} of 1 to 5 digits up to 65535.
    """
    if host in _VALID_HOSTS:
        return True
    valid = _checkHost(host)
    if valid and len(_VALID_HOSTS) < _MAX_VALID_HOSTS:
        _VALID_HOSTS.add(host)
    return valid


def _checkHost(host: bytes) -> bool:
    """
    L{_validHost}, without the memory.
    """
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            return False
        literal = host[1:end]
        if b"%" in literal:
            return False
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        rest = host[end + 1 :]
    else:
        name, colon, port = host.partition(b":")
        if not name or name.translate(None, _HOST_CHARS):
            return False
        rest = colon + port
    if not rest:
        return True
    port = rest[1:]
    return (
        rest[0] == 0x3A and 0 < len(port) <= 5 and port.isdigit() and int(port) <= 65535
    )


# Content-Length values found valid, as received, and what they say: a
# backend sends the same few lengths over and over.  Bounded like
# L{_VALID_HOSTS}.
_LENGTHS: dict[bytes, int] = {}
_MAX_LENGTHS = 1024


def _contentLength(value: bytes, status: int) -> int:
    """
    @return: what the only C{Content-Length} value C{value} says.
    @raise HeaderError: it is a list, or not 1 to
        L{MAX_CONTENT_LENGTH_DIGITS} digits.
    """
    if b"," in value:
        raise HeaderError(status, "several Content-Length values")
    if not (0 < len(value) <= MAX_CONTENT_LENGTH_DIGITS and value.isdigit()):
        raise HeaderError(status, "invalid Content-Length")
    length = int(value)
    if len(_LENGTHS) < _MAX_LENGTHS:
        _LENGTHS[value] = length
    return length


# The tokens of single Connection values found valid, by the value as
# received (it may name no framing header).  Bounded like L{_VALID_HOSTS}.
_CONNECTION_TOKENS: dict[bytes, frozenset[bytes]] = {}
_MAX_CONNECTION_TOKENS = 1024


def _connectionTokens(values: list[bytes], status: int) -> frozenset[bytes]:
    """
    @return: the lowercase tokens of the C{Connection} values C{values}.
    @raise HeaderError: an element is not a token, or one names a framing
        header (or Host).
    """
    tokens = _tokens(values, status)
    if not tokens.isdisjoint(_UNNAMEABLE):
        raise HeaderError(status, "Connection names a framing header")
    if len(values) == 1 and len(_CONNECTION_TOKENS) < _MAX_CONNECTION_TOKENS:
        _CONNECTION_TOKENS[values[0]] = tokens
    return tokens


def _tokens(values: list[bytes], status: int) -> frozenset[bytes]:
    """
    @return: the lowercase tokens of one or more comma-separated lists,
        empty elements skipped.
    @raise HeaderError: an element is not a token.
    """
    if len(values) == 1:
        common = _COMMON_CONNECTION.get(values[0].lower())
        if common is not None:
            return common
    found = set()
    for value in values:
        for element in value.split(b","):
            token = element.strip(_WS)
            if not token:
                continue
            if _badNameChar(token):
                raise HeaderError(status, "invalid Connection header")
            found.add(token.lower())
    return frozenset(found)


def _diagnose(headers: Headers, status: int) -> NoReturn:
    """
    Find the line that failed the block-wide check in L{_scan}, for a
    precise reason.

    @raise HeaderError: always.
    """
    for name, value in headers:
        if not name or _badNameChar(name):
            raise HeaderError(status, "invalid header name")
        if _badValueChar(value):
            if b"\r" in value or b"\n" in value:
                raise HeaderError(status, "obs-fold or bare CR in header")
            raise HeaderError(status, "invalid character in header value")
        if value[:1] in _WS_START:
            # llhttp strips leading whitespace: this is a continuation line.
            raise HeaderError(status, "obs-fold in header")
    raise HeaderError(status, "invalid header")


_Values = list[bytes] | None

# Up to this many header lines, L{_scan} checks each value on its own.
_FEW_HEADERS = 3

# The separators of up to MAX_HEADERS values joined with LF, by count.
_LFS = tuple(b"\n" * count for count in range(MAX_HEADERS))

#: The most header names L{_NAME_KINDS} remembers.
_MAX_KNOWN_NAMES = 1024


class _NameKinds(dict[bytes, "bytes | None"]):
    """
    What L{_scan} needs of a header name, by the name as received: its
    lowercase form when it is one of the names validation looks at, C{None}
    for any other token, C{b""} for a name that is not a token.

    The same few dozen names arrive on nearly every message: one lookup
    costs less than checking and lowering a name and looking it up in a
    set.  Names are classified on first sight (C{__missing__}); at most
    C{_MAX_KNOWN_NAMES} valid ones are remembered, and invalid ones never.
    """

    def __missing__(self, name: bytes) -> bytes | None:
        if not name or name.translate(None, _TCHAR):
            return b""
        lowered = name.lower()
        kind = lowered if lowered in _INTERESTING else None
        if len(self) < _MAX_KNOWN_NAMES:
            self[name] = kind
        return kind


_NAME_KINDS = _NameKinds()


def _scan(
    version: tuple[int, int], headers: Headers, status: int
) -> tuple[int | None, _Values, _Values, frozenset[bytes], _Values, _Values]:
    """
    Check every name and value and collect the headers that matter.

    @return: the length C{Content-Length} says, the C{Transfer-Encoding} and
        C{Host} values, the C{Connection} tokens, the C{Upgrade} and
        C{Expect} values (each C{None} when absent).
    @raise HeaderError: with C{status} for anything malformed.
    """
    if len(headers) <= _FEW_HEADERS:
        # A few values cost less checked one by one.
        for _, value in headers:
            if value.translate(None, _FIELD_CHARS) or value[:1] in _WS_START:
                _diagnose(headers, status)
    else:
        # More, joined with LF and scanned at once: what is left once every
        # field character is deleted must be the separators alone (an LF or
        # any other CTL inside a value makes it longer).  A value starting
        # with whitespace (llhttp strips it, so that is a continuation line)
        # starts the block or follows an LF.  (A regular expression with a
        # literal first byte finds that faster than C{in} does.)
        count = len(headers) - 1
        values = b"\n".join([value for _, value in headers])
        if (
            values.translate(None, _FIELD_CHARS)
            != (_LFS[count] if count < MAX_HEADERS else b"\n" * count)
            or values[:1] in _WS_START
            or _foldedValue(values)
        ):
            _diagnose(headers, status)
    found: dict[bytes, list[bytes]] | None = None
    kinds = _NAME_KINDS
    for name, value in headers:
        kind = kinds[name]
        if kind is not None:
            if not kind:
                _diagnose(headers, status)
            if found is None:
                found = {kind: [value]}
            elif kind in found:
                found[kind].append(value)
            else:
                found[kind] = [value]
    if found is None:
        return None, None, None, _NO_TOKENS, None, None
    lengths = found.get(b"content-length")
    codings = found.get(b"transfer-encoding")
    connection = found.get(b"connection")
    length = None
    if codings is not None:
        if lengths is not None:
            raise HeaderError(status, "Content-Length with Transfer-Encoding")
        if len(codings) > 1:
            raise HeaderError(status, "several Transfer-Encoding headers")
        if version[1] == 0:
            raise HeaderError(status, "Transfer-Encoding on HTTP/1.0")
        if codings[0].lower() != _CHUNKED:
            raise HeaderError(status, "unsupported Transfer-Encoding")
    if lengths is not None:
        if len(lengths) > 1:
            raise HeaderError(status, "several Content-Length values")
        # _contentLength, without the call for a value seen before.
        length = _LENGTHS.get(lengths[0])
        if length is None:
            length = _contentLength(lengths[0], status)
    if connection is None:
        tokens = _NO_TOKENS
    else:
        # A value seen before, without the call (see _connectionTokens).
        tokens = _CONNECTION_TOKENS.get(connection[0]) if len(connection) == 1 else None
        if tokens is None:
            tokens = _connectionTokens(connection, status)
    return (
        length,
        codings,
        found.get(b"host"),
        tokens,
        found.get(b"upgrade"),
        found.get(b"expect"),
    )


def _namesH2C(upgrade: bytes) -> bool:
    """
    @return: one of the protocols in the Upgrade list C{upgrade} is C{h2c}.
    """
    return any(
        element.strip(_WS).partition(b"/")[0].lower() == _H2C
        for element in upgrade.split(b",")
    )


def validateRequestHeaders(
    version: tuple[int, int], headers: Headers, maxHeaders: int = MAX_HEADERS
) -> RequestFraming:
    """
    Apply RFC 9112 strictly to a request header block.

    @param version: the request's C{(major, minor)} HTTP version.
    @param headers: the header lines as received.
    @param maxHeaders: the most header lines accepted.
    @return: how the request is framed, and the hints txlb needs from it.
        An upgrade offering C{h2c} is reported as no upgrade: tunnelling it
        would let the client talk HTTP/2 straight to the backend, past
        routing and this header policy.
    @raise HeaderError: 400 for a malformed block (see the module docstring
        for the framing rules; also a missing Host on HTTP/1.1, several Host
        headers, a Host that is not C{host[:port]}, a C{Connection} naming
        Host, Content-Length or Transfer-Encoding); 417 for an expectation
        other than C{100-continue}; 431 for too many header lines; 505 for a
        major version other than 1.
    """
    if version[0] != 1:
        raise HeaderError(505, "HTTP version not supported")
    if len(headers) > maxHeaders:
        raise HeaderError(431, "too many headers")
    length, codings, hosts, tokens, upgrades, expects = _scan(version, headers, 400)
    if hosts is None:
        if version[1] >= 1:
            raise HeaderError(400, "missing Host")
        host = None
    elif len(hosts) > 1:
        raise HeaderError(400, "several Host headers")
    else:
        host = hosts[0]
        # _validHost, without the call for a Host seen before.
        if host and host not in _VALID_HOSTS and not _validHost(host):
            raise HeaderError(400, "invalid Host")
    expectContinue = False
    if expects is not None:
        for value in expects:
            for element in value.split(b","):
                if element.strip(_WS).lower() != _CONTINUE:
                    raise HeaderError(417, "unsupported expectation")
        # RFC 9110 10.1.1: 100-continue in an HTTP/1.0 request is ignored.
        expectContinue = version[1] >= 1
    upgrade = None
    if upgrades is not None and b"upgrade" in tokens and version[1] >= 1:
        upgrade = upgrades[0] if len(upgrades) == 1 else b", ".join(upgrades)
        if _H2C in upgrade.lower() and _namesH2C(upgrade):
            # A server may ignore Upgrade (RFC 9110 7.8).  Tunnelling h2c
            # would let the client send further requests straight to the
            # backend, past routing and this header policy ("h2c smuggling").
            upgrade = None
    # HTTP/1.1 keeps the connection unless told to close; 1.0 only if asked.
    keepAlive = b"close" not in tokens and (version[1] >= 1 or b"keep-alive" in tokens)
    if length is None and codings is None and upgrade is None and not expectContinue:
        # Most requests: no body, nothing special.  The answer depends on
        # three values that repeat from request to request; it is frozen, so
        # one instance serves them all.
        key = (host, keepAlive, tokens)
        framing = _PLAIN_REQUESTS.get(key)
        if framing is None:
            framing = RequestFraming(None, False, host, keepAlive, None, False, tokens)
            if len(_PLAIN_REQUESTS) < _MAX_PLAIN_REQUESTS:
                _PLAIN_REQUESTS[key] = framing
        return framing
    return RequestFraming(
        contentLength=length,
        chunked=codings is not None,
        host=host,
        keepAlive=keepAlive,
        upgrade=upgrade,
        expectContinue=expectContinue,
        connectionTokens=tokens,
    )


_PLAIN_REQUESTS: dict[tuple[object, ...], RequestFraming] = {}
_MAX_PLAIN_REQUESTS = 1024


def validateResponseHeaders(
    version: tuple[int, int],
    status: int,
    headers: Headers,
    requestMethod: bytes,
    maxHeaders: int = MAX_HEADERS,
) -> ResponseFraming:
    """
    Apply the request's framing rules to a backend's response, and say how
    its body ends.

    @param version: the response's C{(major, minor)} HTTP version.
    @param status: the response status.
    @param headers: the header lines as received.
    @param requestMethod: the method of the request answered, e.g. C{b"HEAD"}.
    @param maxHeaders: the most header lines accepted.
    @return: the response's framing.  The body is absent by rule for HEAD,
        1xx, 204 and 304; otherwise chunked, then C{Content-Length}, then
        read until close.
    @raise HeaderError: 502 for anything malformed, including a 101 without
        C{Upgrade} and a 1xx or 204 announcing a body (a
        C{Content-Length: 0} there is tolerated and dropped).
    """
    if version[0] != 1:
        raise HeaderError(502, "HTTP version not supported")
    if not 100 <= status <= 599:
        raise HeaderError(502, "invalid status")
    if len(headers) > maxHeaders:
        raise HeaderError(502, "too many headers")
    length, codings, _hosts, tokens, upgrades, _expects = _scan(version, headers, 502)
    # As for a request (see validateRequestHeaders).
    keepAlive = b"close" not in tokens and (version[1] >= 1 or b"keep-alive" in tokens)
    upgrade = None
    if status < 200 or status == 204:
        if codings is not None or length:
            raise HeaderError(502, "body announced on a response without one")
        if status == 101:
            if upgrades is None:
                raise HeaderError(502, "101 without Upgrade")
            upgrade = upgrades[0] if len(upgrades) == 1 else b", ".join(upgrades)
        return ResponseFraming(status, _BODY_NONE, None, keepAlive, upgrade, tokens)
    if status == 304 or requestMethod == b"HEAD":
        body = _BODY_NONE
    elif codings is not None:
        body, length = _BODY_CHUNKED, None
    elif length is not None:
        body = _BODY_LENGTH
    else:
        body, keepAlive = _BODY_CLOSE, False
    # Like L{_PLAIN_REQUESTS}: a backend sends the same few framings over
    # and over (same status, same length), and one frozen instance serves.
    key = (status, body, length, keepAlive, tokens)
    framing = _RESPONSES.get(key)
    if framing is None:
        framing = ResponseFraming(status, body, length, keepAlive, None, tokens)
        if len(_RESPONSES) < _MAX_RESPONSES:
            _RESPONSES[key] = framing
    return framing


_RESPONSES: dict[tuple[object, ...], ResponseFraming] = {}
_MAX_RESPONSES = 1024


def planResponse(
    framing: ResponseFraming, clientKeepAlive: bool, clientVersion: tuple[int, int]
) -> ResponsePlan:
    """
    Decide how a response goes to the client.

    @param framing: the backend response's framing.
    @param clientKeepAlive: txlb would keep the client connection (the
        client asked for it and nothing else forbids it).
    @param clientVersion: the client request's HTTP version.
    @return: the body framing txlb writes, and whether it closes after.
        An interim (1xx) response never closes; a chunked or
        close-delimited body is chunked to an HTTP/1.1 client and
        close-delimited (so the connection closes) to an HTTP/1.0 client.
    """
    if framing.status < 200:
        return _PLANS[_BODY_NONE, False]
    body = framing.body
    if body is _BODY_CHUNKED or body is _BODY_CLOSE:
        if clientVersion < (1, 1):
            return _PLANS[_BODY_CLOSE, True]
        return _PLANS[_BODY_CHUNKED, not clientKeepAlive]
    return _PLANS[body, not clientKeepAlive]


# Every plan there is, made once: a plan is frozen, and one is needed per
# response.
_PLANS = {
    (body, close): ResponsePlan(body, close) for body in Body for close in (False, True)
}
