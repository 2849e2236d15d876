"""
Tests for L{txlb.protocols.headers}: every rejection rule with its status,
the framing each valid block yields, and every forwarding rule, as tables.

A table test runs all its cases and reports every case that failed at once,
each by its label.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable

import attrs
from twisted.trial.unittest import SynchronousTestCase

from txlb.protocols.headers import (
    MAX_HEADERS,
    Body,
    ClientInfo,
    ForwardingPolicy,
    HeaderError,
    RequestFraming,
    ResponseFraming,
    ResponsePlan,
    forwardRequestHeaders,
    forwardResponseHeaders,
    interimResponseHeaders,
    planResponse,
    validateRequestHeaders,
    validateResponseHeaders,
)

V10 = (1, 0)
V11 = (1, 1)
HOST = (b"Host", b"example.com")

Pairs = list[tuple[bytes, bytes]]


def _outcome(call: Callable[[], Any]) -> Any:
    """
    @return: what C{call} returns, or the status of the L{HeaderError} it
        raises.
    """
    try:
        return call()
    except HeaderError as e:
        return e.status


def _mismatches(
    cases: Iterable[tuple[Any, ...]], compute: Callable[..., Any]
) -> list[tuple[str, Any, Any]]:
    """
    @param cases: C{(label, expected, *arguments)} rows.
    @param compute: called with a row's arguments.
    @return: C{(label, expected, got)} for every row whose result differs.
    """
    found = []
    for label, expected, *arguments in cases:
        got = _outcome(lambda arguments=arguments: compute(*arguments))
        if got != expected:
            found.append((label, expected, got))
    return found


# ------------------------------------------------------------- requests

CL = b"Content-Length"
TE = b"Transfer-Encoding"

# (label, status, version, headers)
REQUEST_REJECTED: list[tuple[str, int, tuple[int, int], Pairs]] = [
    ("CL with TE", 400, V11, [HOST, (CL, b"5"), (TE, b"chunked")]),
    ("TE with CL", 400, V11, [HOST, (TE, b"chunked"), (CL, b"5")]),
    ("two equal CL", 400, V11, [HOST, (CL, b"5"), (CL, b"5")]),
    ("two different CL", 400, V11, [HOST, (CL, b"5"), (CL, b"6")]),
    ("CL list of equal values", 400, V11, [HOST, (CL, b"5, 5")]),
    ("CL list without space", 400, V11, [HOST, (CL, b"5,5")]),
    ("CL not digits", 400, V11, [HOST, (CL, b"abc")]),
    ("CL negative", 400, V11, [HOST, (CL, b"-1")]),
    ("CL leading plus", 400, V11, [HOST, (CL, b"+5")]),
    ("CL hexadecimal", 400, V11, [HOST, (CL, b"0x10")]),
    ("CL whitespace inside", 400, V11, [HOST, (CL, b"1 0")]),
    ("CL trailing space", 400, V11, [HOST, (CL, b"5 ")]),
    ("CL trailing tab", 400, V11, [HOST, (CL, b"5\t")]),
    ("CL empty", 400, V11, [HOST, (CL, b"")]),
    ("CL 19 digits", 400, V11, [HOST, (CL, b"1" * 19)]),
    ("CL lowercase name, two", 400, V11, [HOST, (b"content-length", b"1"), (CL, b"1")]),
    ("TE gzip, chunked", 400, V11, [HOST, (TE, b"gzip, chunked")]),
    ("TE chunked, chunked", 400, V11, [HOST, (TE, b"chunked, chunked")]),
    ("TE chunked, gzip", 400, V11, [HOST, (TE, b"chunked, gzip")]),
    ("TE xchunked", 400, V11, [HOST, (TE, b"xchunked")]),
    ("TE chunkedx", 400, V11, [HOST, (TE, b"chunkedx")]),
    ("TE chunked;foo", 400, V11, [HOST, (TE, b"chunked;foo")]),
    ("TE trailing space", 400, V11, [HOST, (TE, b"chunked ")]),
    ("TE trailing junk", 400, V11, [HOST, (TE, b"chunked x")]),
    ("TE vertical tab", 400, V11, [HOST, (TE, b"chunked\x0b")]),
    ("TE identity", 400, V11, [HOST, (TE, b"identity")]),
    ("TE empty", 400, V11, [HOST, (TE, b"")]),
    ("two TE headers", 400, V11, [HOST, (TE, b"chunked"), (TE, b"chunked")]),
    ("TE on HTTP/1.0", 400, V10, [HOST, (TE, b"chunked")]),
    ("name with space", 400, V11, [HOST, (b"X Y", b"1")]),
    ("name with colon", 400, V11, [HOST, (b"X:Y", b"1")]),
    ("name with trailing space", 400, V11, [HOST, (b"Content-Length ", b"1")]),
    ("name with NUL", 400, V11, [HOST, (b"X\x00", b"1")]),
    ("name with LF", 400, V11, [HOST, (b"X\nY", b"1")]),
    ("name with DEL", 400, V11, [HOST, (b"X\x7f", b"1")]),
    ("name with obs-text", 400, V11, [HOST, (b"X\xe9", b"1")]),
    ("name with parenthesis", 400, V11, [HOST, (b"X(", b"1")]),
    ("empty name", 400, V11, [HOST, (b"", b"1")]),
    ("value with NUL", 400, V11, [HOST, (b"X", b"a\x00b")]),
    ("value with bare CR", 400, V11, [HOST, (b"X", b"a\rb")]),
    ("value with LF", 400, V11, [HOST, (b"X", b"a\nb")]),
    ("value with CRLF", 400, V11, [HOST, (b"X", b"a\r\nY: b")]),
    ("value with SOH", 400, V11, [HOST, (b"X", b"a\x01b")]),
    ("value with ESC", 400, V11, [HOST, (b"X", b"a\x1bb")]),
    ("value with DEL", 400, V11, [HOST, (b"X", b"a\x7fb")]),
    ("long value with NUL", 400, V11, [HOST, (b"X", b"a" * 300 + b"\x00")]),
    ("obs-fold with space", 400, V11, [HOST, (b"X", b" continued")]),
    ("obs-fold with tab", 400, V11, [HOST, (b"X", b"\tcontinued")]),
    ("missing Host", 400, V11, [(b"Accept", b"*/*")]),
    ("no headers at all on 1.1", 400, V11, []),
    ("two Host", 400, V11, [HOST, HOST]),
    ("two Host on 1.0", 400, V10, [HOST, (b"host", b"other.example")]),
    ("Host with space", 400, V11, [(b"Host", b"exa mple.com")]),
    ("Host trailing space", 400, V11, [(b"Host", b"example.com ")]),
    ("Host empty port", 400, V11, [(b"Host", b"example.com:")]),
    ("Host port too big", 400, V11, [(b"Host", b"example.com:65536")]),
    ("Host port six digits", 400, V11, [(b"Host", b"example.com:000080")]),
    ("Host port not digits", 400, V11, [(b"Host", b"example.com:8x")]),
    ("Host two ports", 400, V11, [(b"Host", b"example.com:80:81")]),
    ("Host port only", 400, V11, [(b"Host", b":80")]),
    ("Host userinfo", 400, V11, [(b"Host", b"user@example.com")]),
    ("Host with path", 400, V11, [(b"Host", b"example.com/x")]),
    ("Host with comma", 400, V11, [(b"Host", b"a.example,b.example")]),
    ("Host percent", 400, V11, [(b"Host", b"ex%61mple.com")]),
    ("Host bare IPv6", 400, V11, [(b"Host", b"::1")]),
    ("Host unclosed IPv6", 400, V11, [(b"Host", b"[::1")]),
    ("Host bad IPv6", 400, V11, [(b"Host", b"[zz::1]")]),
    ("Host IPv6 junk after", 400, V11, [(b"Host", b"[::1]x")]),
    ("Host IPv6 zone", 400, V11, [(b"Host", b"[fe80::1%25eth0]")]),
    ("Connection names Host", 400, V11, [HOST, (b"Connection", b"host")]),
    (
        "Connection names Content-Length",
        400,
        V11,
        [HOST, (CL, b"1"), (b"Connection", b"close, Content-Length")],
    ),
    (
        "Connection names Transfer-Encoding",
        400,
        V11,
        [HOST, (TE, b"chunked"), (b"Connection", b"Transfer-Encoding")],
    ),
    (
        "second Connection names Host",
        400,
        V11,
        [HOST, (b"Connection", b"keep-alive"), (b"connection", b"Host")],
    ),
    ("Connection element not a token", 400, V11, [HOST, (b"Connection", b"a b")]),
    ("Expect other", 417, V11, [HOST, (b"Expect", b"something")]),
    ("Expect list with other", 417, V11, [HOST, (b"Expect", b"100-continue, x")]),
    (
        "Expect 100-continue with params",
        417,
        V11,
        [HOST, (b"Expect", b"100-continue;a=b")],
    ),
    ("Expect other on 1.0", 417, V10, [HOST, (b"Expect", b"something")]),
    ("HTTP/2.0", 505, (2, 0), [HOST]),
    ("HTTP/0.9", 505, (0, 9), [HOST]),
    ("too many headers", 431, V11, [HOST] + [(b"X", b"1")] * MAX_HEADERS),
]

# (label, framing, version, headers)
REQUEST_ACCEPTED: list[tuple[str, RequestFraming, tuple[int, int], Pairs]] = [
    ("plain GET", RequestFraming(host=b"example.com"), V11, [HOST]),
    (
        "Content-Length",
        RequestFraming(contentLength=5, host=b"example.com"),
        V11,
        [HOST, (CL, b"5")],
    ),
    (
        "Content-Length zero",
        RequestFraming(contentLength=0, host=b"example.com"),
        V11,
        [HOST, (b"content-length", b"0")],
    ),
    (
        "Content-Length leading zeros",
        RequestFraming(contentLength=7, host=b"example.com"),
        V11,
        [HOST, (CL, b"007")],
    ),
    (
        "Content-Length 18 digits",
        RequestFraming(contentLength=10**18 - 1, host=b"example.com"),
        V11,
        [HOST, (CL, b"9" * 18)],
    ),
    (
        "chunked, any case",
        RequestFraming(chunked=True, host=b"example.com"),
        V11,
        [HOST, (b"transfer-encoding", b"Chunked")],
    ),
    (
        "CHUNKED",
        RequestFraming(chunked=True, host=b"example.com"),
        V11,
        [HOST, (TE, b"CHUNKED")],
    ),
    ("HTTP/1.0 without Host", RequestFraming(keepAlive=False), V10, []),
    (
        "HTTP/1.0 keep-alive",
        RequestFraming(
            host=b"example.com", connectionTokens=frozenset({b"keep-alive"})
        ),
        V10,
        [HOST, (b"Connection", b"Keep-Alive")],
    ),
    (
        "HTTP/1.1 close",
        RequestFraming(
            host=b"example.com", keepAlive=False, connectionTokens=frozenset({b"close"})
        ),
        V11,
        [HOST, (b"Connection", b"close")],
    ),
    (
        "close wins over keep-alive",
        RequestFraming(
            host=b"example.com",
            keepAlive=False,
            connectionTokens=frozenset({b"close", b"keep-alive"}),
        ),
        V10,
        [HOST, (b"Connection", b"keep-alive"), (b"Connection", b"Close")],
    ),
    (
        "Connection list with empty elements",
        RequestFraming(
            host=b"example.com", connectionTokens=frozenset({b"x-a", b"x-b"})
        ),
        V11,
        [HOST, (b"Connection", b", X-A ,,\tx-b,")],
    ),
    (
        "websocket upgrade",
        RequestFraming(
            host=b"example.com",
            upgrade=b"websocket",
            connectionTokens=frozenset({b"upgrade"}),
        ),
        V11,
        [HOST, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
    ),
    (
        "Upgrade not named in Connection",
        RequestFraming(host=b"example.com"),
        V11,
        [HOST, (b"Upgrade", b"websocket")],
    ),
    (
        "Upgrade on HTTP/1.0",
        RequestFraming(
            host=b"example.com",
            keepAlive=False,
            connectionTokens=frozenset({b"upgrade"}),
        ),
        V10,
        [HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"websocket")],
    ),
    (
        "two Upgrade headers",
        RequestFraming(
            host=b"example.com",
            upgrade=b"a, b/2",
            connectionTokens=frozenset({b"upgrade"}),
        ),
        V11,
        [HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"a"), (b"Upgrade", b"b/2")],
    ),
    (
        "h2c upgrade ignored",
        RequestFraming(
            host=b"example.com",
            connectionTokens=frozenset({b"upgrade", b"http2-settings"}),
        ),
        V11,
        [
            HOST,
            (b"Connection", b"Upgrade, HTTP2-Settings"),
            (b"Upgrade", b"H2C"),
            (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    ),
    (
        "h2c among other protocols ignored",
        RequestFraming(host=b"example.com", connectionTokens=frozenset({b"upgrade"})),
        V11,
        [HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"websocket, h2c/1")],
    ),
    (
        "a protocol merely containing h2c is kept",
        RequestFraming(
            host=b"example.com",
            upgrade=b"xh2c",
            connectionTokens=frozenset({b"upgrade"}),
        ),
        V11,
        [HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"xh2c")],
    ),
    (
        "Expect 100-continue",
        RequestFraming(contentLength=3, host=b"example.com", expectContinue=True),
        V11,
        [HOST, (CL, b"3"), (b"Expect", b"100-Continue")],
    ),
    (
        "Expect 100-continue ignored on HTTP/1.0",
        RequestFraming(contentLength=3, host=b"example.com", keepAlive=False),
        V10,
        [HOST, (CL, b"3"), (b"Expect", b"100-continue")],
    ),
    ("empty Host", RequestFraming(host=b""), V11, [(b"Host", b"")]),
    (
        "Host with port",
        RequestFraming(host=b"Example.COM:8080"),
        V11,
        [(b"host", b"Example.COM:8080")],
    ),
    ("Host max port", RequestFraming(host=b"a:65535"), V11, [(b"Host", b"a:65535")]),
    ("Host IPv4", RequestFraming(host=b"127.0.0.1"), V11, [(b"Host", b"127.0.0.1")]),
    ("Host IPv6", RequestFraming(host=b"[::1]:80"), V11, [(b"Host", b"[::1]:80")]),
    (
        "Host trailing dot",
        RequestFraming(host=b"example.com."),
        V11,
        [(b"Host", b"example.com.")],
    ),
    (
        "HTTP/1.2 is read as 1.1",
        RequestFraming(host=b"example.com"),
        (1, 2),
        [HOST],
    ),
    (
        "obs-text, tab, trailing space in a value",
        RequestFraming(host=b"example.com"),
        V11,
        [HOST, (b"X-Name", b"caf\xe9\tcr\xe8me "), (b"X-Empty", b"")],
    ),
    (
        "long values",
        RequestFraming(host=b"example.com"),
        V11,
        [HOST, (b"Cookie", b"a=b; " * 200)],
    ),
    (
        "every tchar in a name",
        RequestFraming(host=b"example.com"),
        V11,
        [HOST, (b"!#$%&'*+-.^_`|~09azAZ", b"1")],
    ),
    (
        "as many headers as allowed",
        RequestFraming(host=b"example.com"),
        V11,
        [HOST] + [(b"X", b"1")] * (MAX_HEADERS - 1),
    ),
]


class ValidateRequestHeadersTests(SynchronousTestCase):
    """
    Tests for L{validateRequestHeaders}.
    """

    def test_rejected(self) -> None:
        """
        Every malformed request header block raises L{HeaderError} with its
        status.
        """
        self.assertEqual([], _mismatches(REQUEST_REJECTED, validateRequestHeaders))

    def test_accepted(self) -> None:
        """
        Every valid request header block yields the framing it describes.
        """
        self.assertEqual([], _mismatches(REQUEST_ACCEPTED, validateRequestHeaders))

    def test_reasons(self) -> None:
        """
        The reason names the rule broken, without quoting the input.
        """
        cases = [
            (
                [HOST, (CL, b"5"), (TE, b"chunked")],
                "Content-Length with Transfer-Encoding",
            ),
            ([HOST, (CL, b"5"), (CL, b"5")], "several Content-Length values"),
            ([HOST, (TE, b"gzip, chunked")], "unsupported Transfer-Encoding"),
            ([HOST, (b"X", b"a\rb")], "obs-fold or bare CR in header"),
            ([HOST, (b"X", b" b")], "obs-fold in header"),
            ([HOST, (b"X", b"a\x00b")], "invalid character in header value"),
            ([HOST, (b"X Y", b"1")], "invalid header name"),
            ([HOST, HOST], "several Host headers"),
            ([(b"Accept", b"*/*")], "missing Host"),
        ]
        reasons = []
        for headers, _ in cases:
            try:
                validateRequestHeaders(V11, headers)
            except HeaderError as e:
                reasons.append(e.reason)
            else:
                reasons.append("accepted")
        self.assertEqual([reason for _, reason in cases], reasons)

    def test_maxHeaders(self) -> None:
        """
        C{maxHeaders} is the largest accepted number of header lines.
        """
        headers = [HOST, (b"X", b"1"), (b"X", b"2")]
        validateRequestHeaders(V11, headers, maxHeaders=3)
        e = self.assertRaises(
            HeaderError, validateRequestHeaders, V11, headers, maxHeaders=2
        )
        self.assertEqual(431, e.status)

    def test_bodyKind(self) -> None:
        """
        L{RequestFraming.body} is chunked, by length, or none (also for a
        zero length); a request is never read until close.
        """
        self.assertEqual(
            [Body.CHUNKED, Body.LENGTH, Body.NONE, Body.NONE],
            [
                RequestFraming(chunked=True).body,
                RequestFraming(contentLength=1).body,
                RequestFraming(contentLength=0).body,
                RequestFraming().body,
            ],
        )


class HeaderErrorTests(SynchronousTestCase):
    """
    Tests for L{HeaderError}.
    """

    def test_attributesAndStr(self) -> None:
        """
        A L{HeaderError} carries its status and reason and shows both.
        """
        e = HeaderError(431, "too many headers")
        self.assertEqual((431, "too many headers"), (e.status, e.reason))
        self.assertEqual("431 too many headers", str(e))


# ------------------------------------------------------------- responses

# (label, status, version, code, headers, method)
RESPONSE_REJECTED: list[tuple[str, int, tuple[int, int], int, Pairs, bytes]] = [
    ("CL with TE", 502, V11, 200, [(CL, b"5"), (TE, b"chunked")], b"GET"),
    ("two equal CL", 502, V11, 200, [(CL, b"5"), (CL, b"5")], b"GET"),
    ("CL list", 502, V11, 200, [(CL, b"5, 5")], b"GET"),
    ("CL malformed", 502, V11, 200, [(CL, b"5x")], b"GET"),
    ("CL overflow", 502, V11, 200, [(CL, b"9" * 19)], b"GET"),
    ("TE gzip, chunked", 502, V11, 200, [(TE, b"gzip, chunked")], b"GET"),
    ("TE chunked twice", 502, V11, 200, [(TE, b"chunked"), (TE, b"chunked")], b"GET"),
    ("TE on HTTP/1.0", 502, V10, 200, [(TE, b"chunked")], b"GET"),
    ("TE junk on HEAD", 502, V11, 200, [(TE, b"xchunked")], b"HEAD"),
    ("bad name", 502, V11, 200, [(b"X Y", b"1")], b"GET"),
    ("NUL in value", 502, V11, 200, [(b"X", b"\x00")], b"GET"),
    ("bare CR in value", 502, V11, 200, [(b"X", b"a\rb")], b"GET"),
    ("obs-fold", 502, V11, 200, [(b"X", b" b")], b"GET"),
    (
        "Connection names CL",
        502,
        V11,
        200,
        [(CL, b"1"), (b"Connection", b"content-length")],
        b"GET",
    ),
    ("status 99", 502, V11, 99, [], b"GET"),
    ("status 600", 502, V11, 600, [], b"GET"),
    ("HTTP/2.0", 502, (2, 0), 200, [], b"GET"),
    ("101 without Upgrade", 502, V11, 101, [(b"Connection", b"upgrade")], b"GET"),
    ("204 with a length", 502, V11, 204, [(CL, b"5")], b"GET"),
    ("204 chunked", 502, V11, 204, [(TE, b"chunked")], b"GET"),
    ("100 with a length", 502, V11, 100, [(CL, b"1")], b"GET"),
    ("too many headers", 502, V11, 200, [(b"X", b"1")] * (MAX_HEADERS + 1), b"GET"),
]

_KA = frozenset({b"keep-alive"})

# (label, framing, version, code, headers, method)
RESPONSE_ACCEPTED: list[
    tuple[str, ResponseFraming, tuple[int, int], int, Pairs, bytes]
] = [
    (
        "length",
        ResponseFraming(200, Body.LENGTH, 5),
        V11,
        200,
        [(CL, b"5")],
        b"GET",
    ),
    (
        "chunked",
        ResponseFraming(200, Body.CHUNKED),
        V11,
        200,
        [(b"transfer-encoding", b"Chunked")],
        b"POST",
    ),
    (
        "neither: until close",
        ResponseFraming(200, Body.CLOSE, keepAlive=False),
        V11,
        200,
        [(b"Server", b"x")],
        b"GET",
    ),
    (
        "HTTP/1.0 length, no keep-alive",
        ResponseFraming(200, Body.LENGTH, 5, keepAlive=False),
        V10,
        200,
        [(CL, b"5")],
        b"GET",
    ),
    (
        "HTTP/1.0 length, keep-alive",
        ResponseFraming(200, Body.LENGTH, 5, connectionTokens=_KA),
        V10,
        200,
        [(CL, b"5"), (b"Connection", b"keep-alive")],
        b"GET",
    ),
    (
        "HTTP/1.1 close",
        ResponseFraming(
            500, Body.LENGTH, 0, keepAlive=False, connectionTokens=frozenset({b"close"})
        ),
        V11,
        500,
        [(CL, b"0"), (b"Connection", b"close")],
        b"GET",
    ),
    (
        "HEAD keeps the announced length",
        ResponseFraming(200, Body.NONE, 100),
        V11,
        200,
        [(CL, b"100")],
        b"HEAD",
    ),
    (
        "HEAD chunked",
        ResponseFraming(200, Body.NONE),
        V11,
        200,
        [(TE, b"chunked")],
        b"HEAD",
    ),
    (
        "HEAD without length",
        ResponseFraming(200, Body.NONE),
        V11,
        200,
        [],
        b"HEAD",
    ),
    (
        "304 keeps the announced length",
        ResponseFraming(304, Body.NONE, 100),
        V11,
        304,
        [(CL, b"100")],
        b"GET",
    ),
    (
        "204 with a zero length",
        ResponseFraming(204, Body.NONE),
        V11,
        204,
        [(CL, b"0")],
        b"DELETE",
    ),
    ("100 Continue", ResponseFraming(100, Body.NONE), V11, 100, [], b"POST"),
    (
        "103 Early Hints",
        ResponseFraming(103, Body.NONE),
        V11,
        103,
        [(b"Link", b"</a.css>; rel=preload")],
        b"GET",
    ),
    (
        "101 Switching Protocols",
        ResponseFraming(
            101,
            Body.NONE,
            upgrade=b"websocket",
            connectionTokens=frozenset({b"upgrade"}),
        ),
        V11,
        101,
        [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
        b"GET",
    ),
    (
        "no headers at all",
        ResponseFraming(200, Body.CLOSE, keepAlive=False),
        V11,
        200,
        [],
        b"GET",
    ),
]


class ValidateResponseHeadersTests(SynchronousTestCase):
    """
    Tests for L{validateResponseHeaders}.
    """

    def test_rejected(self) -> None:
        """
        Every malformed backend response raises L{HeaderError} with 502.
        """
        self.assertEqual([], _mismatches(RESPONSE_REJECTED, validateResponseHeaders))

    def test_accepted(self) -> None:
        """
        Every valid response yields how its body is delimited and whether
        the backend connection can be reused.
        """
        self.assertEqual([], _mismatches(RESPONSE_ACCEPTED, validateResponseHeaders))


# ------------------------------------------------------------- forwarding

PEER = "203.0.113.7"
CLIENT = ClientInfo(peer=PEER, scheme=b"http", requestId=b"generated-id")
DEFAULT = ForwardingPolicy()
TRUSTING = ForwardingPolicy(
    trustedProxies=(
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
)
PROXY = "10.1.2.3"


def _forward(
    headers: Pairs,
    policy: ForwardingPolicy = DEFAULT,
    client: ClientInfo = CLIENT,
    version: tuple[int, int] = V11,
    **changes: Any,
) -> Pairs:
    """
    Validate C{headers} as a request, apply C{changes} to its framing, and
    forward it.

    @return: what L{forwardRequestHeaders} sends.
    """
    framing = validateRequestHeaders(version, headers)
    if changes:
        framing = attrs.evolve(framing, **changes)
    return forwardRequestHeaders(headers, framing, policy, client)


def _own(
    xff: bytes = PEER.encode(),
    proto: bytes = b"http",
    host: bytes | None = b"example.com",
    requestId: bytes = b"generated-id",
) -> Pairs:
    """
    @return: the headers txlb adds by default, in order.
    """
    own = [(b"X-Forwarded-For", xff), (b"X-Forwarded-Proto", proto)]
    if host is not None:
        own.append((b"X-Forwarded-Host", host))
    own.append((b"X-Request-ID", requestId))
    return own


# (label, expected, call)
FORWARD_REQUEST: list[tuple[str, Pairs, Callable[[], Pairs]]] = [
    (
        "plain",
        [HOST, (b"Accept", b"*/*")] + _own(),
        lambda: _forward([HOST, (b"Accept", b"*/*")]),
    ),
    (
        "Host first, other headers in order, repeated ones kept",
        [HOST, (b"A", b"1"), (b"B", b"2"), (b"a", b"3")] + _own(),
        lambda: _forward([(b"A", b"1"), (b"B", b"2"), HOST, (b"a", b"3")]),
    ),
    (
        "hop-by-hop headers removed",
        [HOST, (b"Keep", b"me")] + _own(),
        lambda: _forward(
            [
                HOST,
                (b"Connection", b"keep-alive"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Proxy-Connection", b"keep-alive"),
                (b"TE", b"trailers"),
                (b"Trailer", b"X-Sum"),
                (b"Upgrade", b"websocket"),
                (b"Keep", b"me"),
            ]
        ),
    ),
    (
        "headers named in Connection removed",
        [HOST, (b"X-Bar", b"2")] + _own(),
        lambda: _forward(
            [HOST, (b"Connection", b"X-Foo"), (b"x-foo", b"1"), (b"X-Bar", b"2")]
        ),
    ),
    (
        "naming X-Forwarded-For in Connection cannot strip txlb's",
        [HOST] + _own(),
        lambda: _forward(
            [
                HOST,
                (b"Connection", b"X-Forwarded-For, X-Request-ID"),
                (b"X-Forwarded-For", b"1.1.1.1"),
                (b"X-Request-ID", b"client-id"),
            ]
        ),
    ),
    (
        "naming X-Forwarded-For in Connection from a trusted proxy",
        [HOST] + _own(xff=PROXY.encode(), host=b"example.com"),
        lambda: _forward(
            [
                HOST,
                (b"Connection", b"x-forwarded-for"),
                (b"X-Forwarded-For", b"1.1.1.1"),
            ],
            policy=TRUSTING,
            client=attrs.evolve(CLIENT, peer=PROXY),
        ),
    ),
    (
        "spoofed forwarding headers from an untrusted peer replaced",
        [HOST] + _own(),
        lambda: _forward(
            [
                HOST,
                (b"X-Forwarded-For", b"1.1.1.1"),
                (b"x-forwarded-for", b"2.2.2.2"),
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Host", b"evil.example"),
                (b"Forwarded", b"for=1.1.1.1"),
                (b"X-Forwarded-By", b"someone"),
            ]
        ),
    ),
    (
        "from a trusted proxy: extended and kept",
        [HOST]
        + _own(
            xff=b"1.1.1.1, 2.2.2.2, " + PROXY.encode(),
            proto=b"https",
            host=b"public.example",
        ),
        lambda: _forward(
            [
                HOST,
                (b"X-Forwarded-For", b"1.1.1.1"),
                (b"X-Forwarded-For", b"2.2.2.2"),
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Host", b"public.example"),
                (b"X-Forwarded-By", b"someone"),
            ],
            policy=TRUSTING,
            client=attrs.evolve(CLIENT, peer=PROXY),
        ),
    ),
    (
        "from an IPv4-mapped trusted proxy",
        [HOST] + _own(xff=b"1.1.1.1, ::ffff:10.1.2.3"),
        lambda: _forward(
            [HOST, (b"X-Forwarded-For", b"1.1.1.1")],
            policy=TRUSTING,
            client=attrs.evolve(CLIENT, peer="::ffff:10.1.2.3"),
        ),
    ),
    (
        "trusted Forwarded kept when the option is off",
        [HOST]
        + _own(xff=PROXY.encode())[:3]
        + [(b"Forwarded", b"for=1.1.1.1")]
        + [(b"X-Request-ID", b"generated-id")],
        lambda: _forward(
            [HOST, (b"Forwarded", b"for=1.1.1.1")],
            policy=TRUSTING,
            client=attrs.evolve(CLIENT, peer=PROXY),
        ),
    ),
    (
        "trusted Forwarded extended when the option is on",
        [HOST]
        + _own(xff=PROXY.encode())[:3]
        + [
            (b"Forwarded", b"for=1.1.1.1, for=10.1.2.3;host=example.com;proto=http"),
            (b"X-Request-ID", b"generated-id"),
        ],
        lambda: _forward(
            [HOST, (b"Forwarded", b"for=1.1.1.1")],
            policy=attrs.evolve(TRUSTING, forwarded=True),
            client=attrs.evolve(CLIENT, peer=PROXY),
        ),
    ),
    (
        "Forwarded quotes IPv6 and a host with a port",
        [(b"Host", b"example.com:8443")]
        + _own(xff=b"2001:db8::1", proto=b"https", host=b"example.com:8443")[:3]
        + [
            (
                b"Forwarded",
                b'for="[2001:db8::1]";by="[2001:db8::2]";'
                b'host="example.com:8443";proto=https',
            ),
            (b"X-Request-ID", b"generated-id"),
        ],
        lambda: _forward(
            [(b"Host", b"example.com:8443"), (b"Forwarded", b"for=evil")],
            policy=ForwardingPolicy(forwarded=True),
            client=ClientInfo(
                peer="2001:db8::1",
                scheme=b"https",
                requestId=b"generated-id",
                localAddress="2001:db8::2",
            ),
        ),
    ),
    (
        "Forwarded with IPv4 by and no Host",
        [
            (b"Host", b""),
            (b"X-Forwarded-For", b"203.0.113.7"),
            (b"X-Forwarded-Proto", b"http"),
            (b"Forwarded", b"for=203.0.113.7;by=192.0.2.1;proto=http"),
            (b"X-Request-ID", b"generated-id"),
        ],
        lambda: _forward(
            [],
            version=V10,
            policy=ForwardingPolicy(forwarded=True),
            client=attrs.evolve(CLIENT, localAddress="192.0.2.1"),
        ),
    ),
    (
        "an empty peer is unknown",
        [HOST]
        + _own(xff=b"unknown")[:3]
        + [
            (b"Forwarded", b"for=unknown;host=example.com;proto=http"),
            (b"X-Request-ID", b"generated-id"),
        ],
        lambda: _forward(
            [HOST],
            policy=ForwardingPolicy(forwarded=True),
            client=attrs.evolve(CLIENT, peer=""),
        ),
    ),
    (
        "valid request id kept",
        [HOST] + _own(requestId=b"3f2a-9c_1.x:y+z/w=@~"),
        lambda: _forward([HOST, (b"x-request-id", b"3f2a-9c_1.x:y+z/w=@~")]),
    ),
    (
        "200-character request id kept",
        [HOST] + _own(requestId=b"a" * 200),
        lambda: _forward([HOST, (b"X-Request-ID", b"a" * 200)]),
    ),
    (
        "201-character request id replaced",
        [HOST] + _own(),
        lambda: _forward([HOST, (b"X-Request-ID", b"a" * 201)]),
    ),
    (
        "request id with a space replaced",
        [HOST] + _own(),
        lambda: _forward([HOST, (b"X-Request-ID", b"a b")]),
    ),
    (
        "request id with a comma replaced",
        [HOST] + _own(),
        lambda: _forward([HOST, (b"X-Request-ID", b"a,b")]),
    ),
    (
        "empty request id replaced",
        [HOST] + _own(),
        lambda: _forward([HOST, (b"X-Request-ID", b"")]),
    ),
    (
        "two request ids replaced",
        [HOST] + _own(),
        lambda: _forward([HOST, (b"X-Request-ID", b"a"), (b"X-Request-ID", b"b")]),
    ),
    (
        "custom request id header",
        [HOST, (b"X-Request-ID", b"passes")]
        + _own()[:3]
        + [(b"X-Trace", b"kept-trace")],
        lambda: _forward(
            [HOST, (b"X-Request-ID", b"passes"), (b"x-trace", b"kept-trace")],
            policy=ForwardingPolicy(requestIdHeader=b"X-Trace"),
        ),
    ),
    (
        "X-Forwarded-By added",
        [HOST] + _own() + [(b"X-Forwarded-By", b"txlb-1")],
        lambda: _forward(
            [HOST, (b"X-Forwarded-By", b"spoof")],
            policy=ForwardingPolicy(forwardedBy=b"txlb-1"),
        ),
    ),
    (
        "Host rewritten, original in X-Forwarded-Host",
        [(b"Host", b"backend.internal:8080")] + _own(host=b"Example.com"),
        lambda: _forward(
            [(b"host", b"Example.com")],
            policy=ForwardingPolicy(hostRewrite=b"backend.internal:8080"),
        ),
    ),
    (
        "HTTP/1.0 without Host gets an empty Host",
        [(b"Host", b"")] + _own(host=None),
        lambda: _forward([], version=V10),
    ),
    (
        "Content-Length written once, canonical",
        [HOST] + _own() + [(b"Content-Length", b"5")],
        lambda: _forward([HOST, (b"content-LENGTH", b"5")]),
    ),
    (
        "Content-Length zero kept",
        [HOST] + _own() + [(b"Content-Length", b"0")],
        lambda: _forward([HOST, (CL, b"0")]),
    ),
    (
        "leading zeros dropped from Content-Length",
        [HOST] + _own() + [(b"Content-Length", b"7")],
        lambda: _forward([HOST, (CL, b"0007")]),
    ),
    (
        "chunked written once, canonical",
        [HOST] + _own() + [(b"Transfer-Encoding", b"chunked")],
        lambda: _forward([HOST, (b"TRANSFER-ENCODING", b"Chunked")]),
    ),
    (
        "the caller's framing wins",
        [HOST] + _own() + [(b"Content-Length", b"12")],
        lambda: _forward([HOST, (TE, b"chunked")], chunked=False, contentLength=12),
    ),
    (
        "underscore spellings of controlled names dropped",
        [HOST, (b"X_Custom", b"kept")] + _own(),
        lambda: _forward(
            [
                HOST,
                (b"Content_Length", b"5"),
                (b"transfer_encoding", b"chunked"),
                (b"X_Forwarded_For", b"1.1.1.1"),
                (b"X-Forwarded_Proto", b"https"),
                (b"X_Request_ID", b"spoof"),
                (b"Proxy_Connection", b"x"),
                (b"X_Custom", b"kept"),
            ]
        ),
    ),
    (
        "websocket upgrade kept",
        [HOST, (b"Sec-WebSocket-Key", b"k")]
        + _own()
        + [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")],
        lambda: _forward(
            [
                HOST,
                (b"Connection", b"keep-alive, Upgrade"),
                (b"Upgrade", b"websocket"),
                (b"Sec-WebSocket-Key", b"k"),
            ]
        ),
    ),
    (
        "h2c upgrade never forwarded",
        [HOST] + _own(),
        lambda: _forward(
            [
                HOST,
                (b"Connection", b"Upgrade"),
                (b"Upgrade", b"h2c"),
                (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"),
            ]
        ),
    ),
    (
        "upgrade dropped when the caller will not tunnel",
        [HOST] + _own(),
        lambda: _forward(
            [HOST, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
            upgrade=None,
        ),
    ),
    (
        "Expect 100-continue passed on, canonical",
        [HOST] + _own() + [(b"Expect", b"100-continue"), (b"Content-Length", b"3")],
        lambda: _forward([HOST, (b"expect", b"100-Continue"), (CL, b"3")]),
    ),
    (
        "Expect dropped when the caller answers it",
        [HOST] + _own() + [(b"Content-Length", b"3")],
        lambda: _forward(
            [HOST, (b"Expect", b"100-continue"), (CL, b"3")], expectContinue=False
        ),
    ),
    (
        "Expect from HTTP/1.0 dropped",
        [HOST] + _own() + [(b"Content-Length", b"3")],
        lambda: _forward([HOST, (b"Expect", b"100-continue"), (CL, b"3")], version=V10),
    ),
    (
        "https scheme",
        [HOST] + _own(proto=b"https"),
        lambda: _forward([HOST], client=attrs.evolve(CLIENT, scheme=b"https")),
    ),
]

_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}


class ForwardRequestHeadersTests(SynchronousTestCase):
    """
    Tests for L{forwardRequestHeaders}.
    """

    def test_forwarded(self) -> None:
        """
        Every forwarding rule produces exactly the expected header block.
        """
        self.assertEqual([], _mismatches(FORWARD_REQUEST, _call))

    def test_canonicalFraming(self) -> None:
        """
        Whatever the case, every forwarded block has one Host, at most one
        framing header, and no hop-by-hop header except the two an upgrade
        needs.
        """
        problems = []
        for label, _, call in FORWARD_REQUEST:
            names = [name.lower() for name, _ in call()]
            framing = [
                n for n in names if n in (b"content-length", b"transfer-encoding")
            ]
            hop = {n for n in names if n in _HOP} - {b"transfer-encoding"}
            if names.count(b"host") != 1 or len(framing) > 1:
                problems.append(label)
            elif hop and hop != {b"connection", b"upgrade"}:
                problems.append(label)
        self.assertEqual([], problems)

    def test_noInputChange(self) -> None:
        """
        The received header list is left as it was.
        """
        headers = [HOST, (b"Connection", b"x-a"), (b"X-A", b"1"), (CL, b"1")]
        copy = list(headers)
        _forward(headers)
        self.assertEqual(copy, headers)


def _call(call: Callable[[], Pairs]) -> Pairs:
    """
    @return: what C{call} returns.
    """
    return call()


class ForwardingPolicyTests(SynchronousTestCase):
    """
    Tests for L{ForwardingPolicy} and L{ClientInfo}.
    """

    def test_isTrusted(self) -> None:
        """
        A peer is trusted only when it is an IP address inside a trusted
        network; an IPv4-mapped IPv6 address counts as its IPv4 address.
        """
        cases = [
            ("inside IPv4", True, TRUSTING, "10.255.0.1"),
            ("outside IPv4", False, TRUSTING, "11.0.0.1"),
            ("inside IPv6", True, TRUSTING, "fd12::1"),
            ("outside IPv6", False, TRUSTING, "2001:db8::1"),
            ("IPv4-mapped inside", True, TRUSTING, "::ffff:10.0.0.1"),
            ("IPv4-mapped outside", False, TRUSTING, "::ffff:11.0.0.1"),
            ("not an address", False, TRUSTING, "unix"),
            ("empty", False, TRUSTING, ""),
            ("no trusted networks", False, DEFAULT, "10.0.0.1"),
        ]
        self.assertEqual([], _mismatches(cases, ForwardingPolicy.isTrusted))

    def test_isTrustedRemembers(self) -> None:
        """
        Asking again about a peer gives the same answer.
        """
        policy = ForwardingPolicy(trustedProxies=[ipaddress.ip_network("10.0.0.0/8")])
        self.assertEqual(
            [True, False, True, False],
            [
                policy.isTrusted("10.0.0.1"),
                policy.isTrusted("11.0.0.1"),
                policy.isTrusted("10.0.0.1"),
                policy.isTrusted("11.0.0.1"),
            ],
        )

    def test_badPolicy(self) -> None:
        """
        A policy that could not produce valid headers is refused when it is
        built.
        """
        bad: list[dict[str, Any]] = [
            {"hostRewrite": b"bad host"},
            {"hostRewrite": b""},
            {"hostRewrite": b"a:99999"},
            {"forwardedBy": b"a\r\nX-Evil: 1"},
            {"forwardedBy": b""},
            {"forwardedBy": b" padded"},
            {"requestIdHeader": b"Host"},
            {"requestIdHeader": b"content-length"},
            {"requestIdHeader": b"X-Forwarded-For"},
            {"requestIdHeader": b"Connection"},
            {"requestIdHeader": b"Bad Name"},
            {"requestIdHeader": b""},
        ]
        accepted = []
        for kwargs in bad:
            try:
                ForwardingPolicy(**kwargs)
            except ValueError:
                pass
            else:
                accepted.append(kwargs)
        self.assertEqual([], accepted)

    def test_goodPolicy(self) -> None:
        """
        Sensible values are accepted as given.
        """
        policy = ForwardingPolicy(
            forwardedBy=b"txlb",
            hostRewrite=b"[::1]:8080",
            requestIdHeader=b"X-Correlation-ID",
        )
        self.assertEqual(
            (b"txlb", b"[::1]:8080", b"X-Correlation-ID"),
            (policy.forwardedBy, policy.hostRewrite, policy.requestIdHeader),
        )

    def test_frozen(self) -> None:
        """
        Policies and client descriptions cannot be changed once built.
        """
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError, setattr, DEFAULT, "forwarded", True
        )
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError, setattr, CLIENT, "peer", "x"
        )


# ------------------------------------------------------------- responses out

# (label, plan, framing, clientKeepAlive, clientVersion)
PLANS: list[tuple[str, ResponsePlan, ResponseFraming, bool, tuple[int, int]]] = [
    (
        "length, 1.1",
        ResponsePlan(Body.LENGTH, False),
        ResponseFraming(200, Body.LENGTH, 5),
        True,
        V11,
    ),
    (
        "length, 1.1 closing",
        ResponsePlan(Body.LENGTH, True),
        ResponseFraming(200, Body.LENGTH, 5),
        False,
        V11,
    ),
    (
        "length, 1.0 keep-alive",
        ResponsePlan(Body.LENGTH, False),
        ResponseFraming(200, Body.LENGTH, 5),
        True,
        V10,
    ),
    (
        "chunked, 1.1",
        ResponsePlan(Body.CHUNKED, False),
        ResponseFraming(200, Body.CHUNKED),
        True,
        V11,
    ),
    (
        "chunked, 1.0",
        ResponsePlan(Body.CLOSE, True),
        ResponseFraming(200, Body.CHUNKED),
        True,
        V10,
    ),
    (
        "until close, 1.1: chunked",
        ResponsePlan(Body.CHUNKED, False),
        ResponseFraming(200, Body.CLOSE),
        True,
        V11,
    ),
    (
        "until close, 1.1 closing",
        ResponsePlan(Body.CHUNKED, True),
        ResponseFraming(200, Body.CLOSE),
        False,
        V11,
    ),
    (
        "until close, 1.0",
        ResponsePlan(Body.CLOSE, True),
        ResponseFraming(200, Body.CLOSE),
        True,
        V10,
    ),
    (
        "no body",
        ResponsePlan(Body.NONE, False),
        ResponseFraming(304, Body.NONE),
        True,
        V10,
    ),
    (
        "no body, closing",
        ResponsePlan(Body.NONE, True),
        ResponseFraming(204, Body.NONE),
        False,
        V11,
    ),
    (
        "interim never closes",
        ResponsePlan(Body.NONE, False),
        ResponseFraming(100, Body.NONE),
        False,
        V11,
    ),
]


def _respond(
    headers: Pairs,
    status: int = 200,
    method: bytes = b"GET",
    policy: ForwardingPolicy = DEFAULT,
    backend: str | bytes = "web1",
    keepAlive: bool = True,
    clientVersion: tuple[int, int] = V11,
    version: tuple[int, int] = V11,
) -> Pairs:
    """
    Validate C{headers} as a response and forward it.

    @return: what L{forwardResponseHeaders} sends.
    """
    framing = validateResponseHeaders(version, status, headers, method)
    return forwardResponseHeaders(
        headers, framing, policy, backend, keepAlive, clientVersion
    )


ON = ForwardingPolicy(backendHeader=True)

FORWARD_RESPONSE: list[tuple[str, Pairs, Callable[[], Pairs]]] = [
    (
        "length to a keep-alive HTTP/1.1 client",
        [(b"Server", b"s"), (b"Content-Length", b"5")],
        lambda: _respond([(b"Server", b"s"), (b"content-length", b"5")]),
    ),
    (
        "hop-by-hop and Connection-named headers removed",
        [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Content-Length", b"0")],
        lambda: _respond(
            [
                (b"Connection", b"keep-alive, X-Internal"),
                (b"Keep-Alive", b"timeout=5"),
                (b"X-Internal", b"secret"),
                (b"Set-Cookie", b"a=1"),
                (b"Proxy-Connection", b"x"),
                (b"Trailer", b"X-Sum"),
                (b"Set-Cookie", b"b=2"),
                (CL, b"0"),
            ]
        ),
    ),
    (
        "closing: Connection: close",
        [(b"Content-Length", b"5"), (b"Connection", b"close")],
        lambda: _respond([(CL, b"5")], keepAlive=False),
    ),
    (
        "HTTP/1.0 client kept alive",
        [(b"Content-Length", b"5"), (b"Connection", b"keep-alive")],
        lambda: _respond([(CL, b"5")], clientVersion=V10),
    ),
    (
        "HTTP/1.0 client closing",
        [(b"Content-Length", b"5"), (b"Connection", b"close")],
        lambda: _respond([(CL, b"5")], clientVersion=V10, keepAlive=False),
    ),
    (
        "chunked to HTTP/1.1",
        [(b"Transfer-Encoding", b"chunked")],
        lambda: _respond([(TE, b"Chunked")]),
    ),
    (
        "chunked never reaches HTTP/1.0: close-delimited",
        [(b"Connection", b"close")],
        lambda: _respond([(TE, b"chunked")], clientVersion=V10),
    ),
    (
        "until close becomes chunked for HTTP/1.1",
        [(b"Transfer-Encoding", b"chunked")],
        lambda: _respond([]),
    ),
    (
        "until close stays until close for HTTP/1.0",
        [(b"Connection", b"close")],
        lambda: _respond([], clientVersion=V10),
    ),
    (
        "HEAD keeps the announced length",
        [(b"Content-Length", b"100")],
        lambda: _respond([(CL, b"100")], method=b"HEAD"),
    ),
    (
        "HEAD of a chunked body: no framing header",
        [],
        lambda: _respond([(TE, b"chunked")], method=b"HEAD"),
    ),
    (
        "304 keeps the announced length",
        [(b"ETag", b'"x"'), (b"Content-Length", b"100")],
        lambda: _respond([(b"ETag", b'"x"'), (CL, b"100")], status=304),
    ),
    (
        "204 loses a zero length",
        [],
        lambda: _respond([(CL, b"0")], status=204),
    ),
    (
        "interim response gets no connection header",
        [(b"Link", b"</a>")],
        lambda: _respond([(b"Link", b"</a>")], status=103, keepAlive=False),
    ),
    (
        "101 keeps the upgrade",
        [
            (b"Sec-WebSocket-Accept", b"a"),
            (b"Connection", b"upgrade"),
            (b"Upgrade", b"websocket"),
        ],
        lambda: _respond(
            [
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", b"a"),
            ],
            status=101,
        ),
    ),
    (
        "X-Backend-Server added, the backend's own replaced",
        [(b"Content-Length", b"0"), (b"X-Backend-Server", b"web1")],
        lambda: _respond([(b"X-Backend-Server", b"spoof"), (CL, b"0")], policy=ON),
    ),
    (
        "X-Backend-Server passed through when off",
        [(b"X-Backend-Server", b"theirs"), (b"Content-Length", b"0")],
        lambda: _respond([(b"X-Backend-Server", b"theirs"), (CL, b"0")]),
    ),
    (
        "backend name cleaned of control characters",
        [(b"Content-Length", b"0"), (b"X-Backend-Server", b"web1X-Evil: 1")],
        lambda: _respond([(CL, b"0")], policy=ON, backend="web1\r\nX-Evil: 1"),
    ),
    (
        "backend name as bytes",
        [(b"Content-Length", b"0"), (b"X-Backend-Server", b"10.0.0.1:80")],
        lambda: _respond([(CL, b"0")], policy=ON, backend=b"10.0.0.1:80"),
    ),
    (
        "empty backend name",
        [(b"Content-Length", b"0"), (b"X-Backend-Server", b"unknown")],
        lambda: _respond([(CL, b"0")], policy=ON, backend="\r\n"),
    ),
    (
        "underscore spellings of framing names dropped",
        [(b"X_Other", b"1"), (b"Content-Length", b"0")],
        lambda: _respond(
            [
                (b"Content_Length", b"9"),
                (b"Transfer_Encoding", b"chunked"),
                (b"X_Backend_Server", b"x"),
                (b"X_Other", b"1"),
                (CL, b"0"),
            ]
        ),
    ),
    (
        "a HTTP/1.0 backend's length to a HTTP/1.1 client",
        [(b"Content-Length", b"2")],
        lambda: _respond([(CL, b"2")], version=V10),
    ),
]


class ForwardResponseHeadersTests(SynchronousTestCase):
    """
    Tests for L{planResponse} and L{forwardResponseHeaders}.
    """

    def test_plan(self) -> None:
        """
        A response is chunked only to HTTP/1.1 clients, close-delimited
        (and closing) to HTTP/1.0 clients, and closes when txlb will not
        keep the client; an interim response never closes.
        """
        self.assertEqual([], _mismatches(PLANS, planResponse))

    def test_forwarded(self) -> None:
        """
        Every response forwarding rule produces exactly the expected header
        block.
        """
        self.assertEqual([], _mismatches(FORWARD_RESPONSE, _call))

    def test_neverChunkedToHTTP10(self) -> None:
        """
        No response header block sent to an HTTP/1.0 client names a
        transfer coding, whatever the backend sent.
        """
        sent = []
        for headers in ([(TE, b"chunked")], [], [(CL, b"3")]):
            for keepAlive in (True, False):
                sent.extend(
                    name.lower()
                    for name, _ in _respond(
                        headers, keepAlive=keepAlive, clientVersion=V10
                    )
                )
        self.assertNotIn(b"transfer-encoding", sent)


class RememberedValuesTests(SynchronousTestCase):
    """
    Validation remembers the header names, C{Content-Length} values and
    C{Connection} values it found valid, by their bytes as received: what
    it remembers never changes a verdict.
    """

    def test_sameVerdictAgain(self) -> None:
        """
        Each block is judged the same the second time, valid or not: a
        valid value remembered does not let a different spelling through,
        and an invalid one is refused every time.
        """
        blocks = [
            [HOST, (b"Content-Length", b"5")],
            [HOST, (b"Content-Length", b"5, 5")],
            [HOST, (b"Content-Length", b"+5")],
            [HOST, (b"Connection", b"keep-alive")],
            [HOST, (b"Connection", b"Keep-Alive, Content-Length")],
            [HOST, (b"Connection", b"x-a, host")],
            [HOST, (b"Bad Name", b"1")],
            [HOST, (b"Host_", b"1"), (b"X-A", b" folded")],
        ]

        def verdict(headers: list[tuple[bytes, bytes]]) -> Any:
            try:
                framing = validateRequestHeaders(V11, headers)
            except HeaderError as e:
                return e.status, e.reason
            return framing.contentLength, framing.connectionTokens

        first = [verdict(headers) for headers in blocks]
        self.assertEqual(first, [verdict(headers) for headers in blocks])
        self.assertEqual(
            [
                (5, frozenset()),
                (400, "several Content-Length values"),
                (400, "invalid Content-Length"),
                (None, frozenset({b"keep-alive"})),
                (400, "Connection names a framing header"),
                (400, "Connection names a framing header"),
                (400, "invalid header name"),
                (400, "obs-fold in header"),
            ],
            first,
        )


# (label, backendHeader, interim headers, what is passed on)
INTERIM: list[tuple[str, bool, Pairs, Pairs]] = [
    ("kept as received", False, [(b"Link", b"</a.css>; rel=preload")],
     [(b"Link", b"</a.css>; rel=preload")]),
    ("hop-by-hop dropped", False,
     [(b"Keep-Alive", b"timeout=5"), (b"Connection", b"keep-alive"), (b"Link", b"</a>")],
     [(b"Link", b"</a>")]),
    ("Connection-named dropped", False,
     [(b"Connection", b"X-Secret, close"), (b"x-secret", b"1"), (b"Link", b"</a>")],
     [(b"Link", b"</a>")]),
    ("framing dropped", False, [(b"Content-Length", b"0"), (b"Link", b"</a>")],
     [(b"Link", b"</a>")]),
    ("underscore spelling dropped", False,
     [(b"Transfer_Encoding", b"chunked"), (b"Link", b"</a>")], [(b"Link", b"</a>")]),
    ("backend's X-Backend-Server kept without the policy", False,
     [(b"X-Backend-Server", b"b1")], [(b"X-Backend-Server", b"b1")]),
    ("backend's X-Backend-Server dropped with it, nothing added", True,
     [(b"X-Backend-Server", b"b1"), (b"X_Backend_Server", b"b2"), (b"Link", b"</a>")],
     [(b"Link", b"</a>")]),
]


class InterimResponseHeadersTests(SynchronousTestCase):
    """
    L{interimResponseHeaders} filters a 1xx response as
    L{forwardResponseHeaders} filters a final one, and adds nothing.
    """

    def test_table(self) -> None:
        wrong = [
            (label, expected, got)
            for label, backendHeader, headers, expected in INTERIM
            for got in [interimResponseHeaders(
                headers, 103, ForwardingPolicy(backendHeader=backendHeader)
            )]
            if got != expected
        ]
        self.assertEqual([], wrong)
