"""
The header policy of the L7 proxy: pure functions, no I/O, no reactor.

A parser (llhttp, through httptools) hands over each header block as a list
of C{(name, value)} byte pairs, names in the case they arrived in.  Four
functions sit between that list and the wire:

  - L{validateRequestHeaders} and L{validateResponseHeaders} apply the RFC
    9112 framing rules strictly, including the ones a parser may let through,
    and say how the message body is delimited;
  - L{forwardRequestHeaders} and L{forwardResponseHeaders} build the header
    list txlb sends on: hop-by-hop headers removed first, txlb's own headers
    added after (so a client can never strip them), and exactly one framing
    header, spelled canonically, as txlb will actually frame the body.

The validation half (L{validateRequestHeaders}, L{validateResponseHeaders},
L{planResponse} and the values they return) is L{txlb.protocols.framing};
its names can be imported from here too.
"""

from __future__ import annotations

import functools
import ipaddress

import attrs

from txlb.protocols.framing import (
    _ALNUM,
    _CHUNKED,
    _CONTINUE,
    _FIELD_CHARS,
    _FRAMING,
    _WS,
    MAX_CONTENT_LENGTH_DIGITS,
    MAX_HEADERS,
    Body,
    HeaderError,
    Headers,
    RequestFraming,
    ResponseFraming,
    ResponsePlan,
    _badNameChar,
    _badValueChar,
    _tokens,
    _validHost,
    planResponse,
    validateRequestHeaders,
    validateResponseHeaders,
)

__all__ = [
    "MAX_CONTENT_LENGTH_DIGITS",
    "MAX_HEADERS",
    "MAX_REQUEST_ID_LENGTH",
    "Body",
    "ClientInfo",
    "ForwardingPolicy",
    "HeaderError",
    "Headers",
    "RequestFraming",
    "ResponseFraming",
    "ResponsePlan",
    "forwardRequestHeaders",
    "forwardResponseHeaders",
    "interimResponseHeaders",
    "keptResponseHeaders",
    "planResponse",
    "validateRequestHeaders",
    "validateResponseHeaders",
]

#: The longest request id txlb passes on.
MAX_REQUEST_ID_LENGTH = 200

#: Enough for UUIDs, ULIDs, base64 and W3C trace ids; nothing that splits
#: a list or needs quoting.
_REQUEST_ID_CHARS = _ALNUM + b"-_.:+/=@~"

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        # RFC 7540 3.2.1: only meaningful with an h2c upgrade, never passed.
        b"http2-settings",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Headers whose values describe the hops before txlb; kept (and extended)
# only when the peer is a trusted proxy.
_TRUSTABLE = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
# What txlb writes itself on a request, whatever the client sent.
_REQUEST_OWNED = _TRUSTABLE | {b"x-forwarded-by", b"host", b"expect"}
# Names the request id header cannot take.
_CONTROLLED = _HOP_BY_HOP | _FRAMING | _REQUEST_OWNED

# Read on every response: a module constant costs less to read than a member
# read from its enum class (some 70 ns in CPython 3.11, which does not
# specialize reading an attribute of a class).
_BODY_CHUNKED = Body.CHUNKED


def _checkHost(_policy: object, _attribute: object, host: bytes | None) -> None:
    if host is not None and not _validHost(host):
        raise ValueError(f"not a valid host[:port]: {host!r}")


def _checkRequestIdHeader(_policy: object, _attribute: object, name: bytes) -> None:
    lowered = name.lower()
    if not name or _badNameChar(name) or lowered in _CONTROLLED:
        raise ValueError(f"not usable as the request id header: {name!r}")


def _checkFieldValue(_policy: object, _attribute: object, value: bytes | None) -> None:
    if value is not None and (
        not value or _badValueChar(value) or value.strip(_WS) != value
    ):
        raise ValueError(f"not a valid header value: {value!r}")


#: How many peers' trust a L{ForwardingPolicy} remembers.
_TRUST_CACHE_SIZE = 4096

#: How many header names a table of L{_RequestActions} or
#: L{_ResponseActions} remembers; past that, new names are classified each
#: time.
_MAX_ACTIONS = 1024

# What forwarding does with a header, in L{_RequestActions}: pass it on, or
# drop it.  A header txlb may set aside instead (a request id, or a
# forwarding header from a trusted proxy) maps to its lowercase name.
_KEEP = 0
_DROP = 1


class _RequestActions(dict[bytes, "int | bytes"]):
    """
    What L{forwardRequestHeaders} does with a header under one policy, by
    its name as received: C{_KEEP}, C{_DROP}, or for a header it may keep
    aside (the request id header, and the forwarding headers a trusted
    proxy extends) its lowercase name.

    A listener sees the same few dozen names, spelled the same way, on
    nearly every request: one lookup answers what lowering the name and
    looking it up in several sets would.  Names are classified on first
    sight (C{__missing__}), and at most C{_MAX_ACTIONS} are remembered.
    """

    def __init__(self, drop: frozenset[bytes], requestIdName: bytes) -> None:
        """
        @param drop: the lowercase names the policy drops.
        @param requestIdName: the request id header, lowercase.
        """
        super().__init__()
        self._drop = drop
        self._requestIdName = requestIdName

    def __missing__(self, name: bytes) -> int | bytes:
        lowered = name.lower()
        action: int | bytes
        if lowered in self._drop:
            if lowered == self._requestIdName or lowered in _TRUSTABLE:
                action = lowered
            else:
                action = _DROP
        elif b"_" in lowered and _spoofsProtected(lowered, self._drop):
            action = _DROP
        else:
            action = _KEEP
        if len(self) < _MAX_ACTIONS:
            self[name] = action
        return action


class _ResponseActions(dict[bytes, bool]):
    """
    Whether L{forwardResponseHeaders} drops a header, by its name as
    received, for one set of dropped names (bounded and filled as
    L{_RequestActions} is).
    """

    def __init__(self, drop: frozenset[bytes]) -> None:
        """
        @param drop: the lowercase names dropped.
        """
        super().__init__()
        self._drop = drop

    def __missing__(self, name: bytes) -> bool:
        lowered = name.lower()
        dropped = lowered in self._drop or (
            b"_" in lowered and _spoofsProtected(lowered, _RESPONSE_PROTECTED)
        )
        if len(self) < _MAX_ACTIONS:
            self[name] = dropped
        return dropped


@attrs.frozen
class ForwardingPolicy:
    """
    What txlb adds to and removes from forwarded messages; built from the
    config once.

    @ivar trustedProxies: the networks whose C{X-Forwarded-*} and
        C{Forwarded} headers are believed (and extended).
    @ivar forwarded: add an RFC 7239 C{Forwarded} element.
    @ivar forwardedBy: the C{X-Forwarded-By} value, or C{None} for none.
    @ivar backendHeader: add C{X-Backend-Server} to responses.
    @ivar hostRewrite: the Host sent to the backend instead of the client's.
    @ivar requestIdHeader: the request id header's name, as sent.
    @raise ValueError: from the constructor, for a C{forwardedBy} that is
        not a header value, a C{hostRewrite} that is not C{host[:port]}, or
        a C{requestIdHeader} that is not a header name or names a header
        txlb already controls.
    """

    trustedProxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        attrs.field(default=(), converter=tuple)
    )
    forwarded: bool = False
    forwardedBy: bytes | None = attrs.field(default=None, validator=_checkFieldValue)
    backendHeader: bool = False
    hostRewrite: bytes | None = attrs.field(default=None, validator=_checkHost)
    requestIdHeader: bytes = attrs.field(
        default=b"X-Request-ID", validator=_checkRequestIdHeader
    )
    _requestDrop: frozenset[bytes] = attrs.field(init=False, repr=False, eq=False)
    _requestIdName: bytes = attrs.field(init=False, repr=False, eq=False)
    # Parsing an address costs more than the rest of the policy, and a busy
    # listener sees the same peers over and over: remember the answers (a
    # bounded dict; once full, new peers are computed each time).
    _trust: dict[str, bool] = attrs.field(
        init=False, repr=False, eq=False, factory=dict
    )
    # What forwardRequestHeaders does with each header name, by the name as
    # received (see _RequestActions).
    _actions: _RequestActions = attrs.field(init=False, repr=False, eq=False)

    @_requestDrop.default
    def _requestDropDefault(self) -> frozenset[bytes]:
        return _HOP_BY_HOP | _FRAMING | _REQUEST_OWNED | {self.requestIdHeader.lower()}

    @_requestIdName.default
    def _requestIdNameDefault(self) -> bytes:
        return self.requestIdHeader.lower()

    @_actions.default
    def _actionsDefault(self) -> _RequestActions:
        return _RequestActions(self._requestDrop, self._requestIdName)

    def isTrusted(self, peerIP: str) -> bool:
        """
        @param peerIP: the peer's address; an IPv4-mapped IPv6 address
            counts as its IPv4 address.
        @return: C{peerIP} is inside one of C{trustedProxies} (never for
            something that is not an IP address).
        """
        if not self.trustedProxies:
            return False
        trusted = self._trust.get(peerIP)
        if trusted is None:
            trusted = _inNetworks(self.trustedProxies, peerIP)
            if len(self._trust) < _TRUST_CACHE_SIZE:
                self._trust[peerIP] = trusted
        return trusted


def _inNetworks(
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], peerIP: str
) -> bool:
    try:
        address = ipaddress.ip_address(peerIP)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@attrs.frozen
class ClientInfo:
    """
    What txlb knows about the client of one request.

    @ivar peer: the peer's IP address (C{unknown} is used when it is empty).
    @ivar scheme: C{b"http"} or C{b"https"}.
    @ivar requestId: the id to send when the client brought no valid one;
        the caller makes it (this module has no randomness).
    @ivar localAddress: the address the request came in on, for the
        C{by=} of C{Forwarded}, or C{None}.
    """

    peer: str
    scheme: bytes
    requestId: bytes
    localAddress: str | None = None
    # The peer as the X-Forwarded-For element txlb adds: made once per
    # client connection rather than once per request.
    _forwardedFor: bytes = attrs.field(init=False, repr=False, eq=False)

    @_forwardedFor.default
    def _forwardedForDefault(self) -> bytes:
        return self.peer.encode("ascii", "replace") if self.peer else b"unknown"


def _spoofsProtected(lowered: bytes, protected: frozenset[bytes]) -> bool:
    """
    @return: C{lowered}, a name with an underscore, reads as one of
        C{protected} to a backend that treats C{_} and C{-} alike (CGI, WSGI
        and many frameworks do).
    """
    return lowered.replace(b"_", b"-") in protected


# Names a client must not be able to read under another spelling (on a
# request, the policy's drop set plays this part).
_RESPONSE_PROTECTED = _HOP_BY_HOP | _FRAMING | {b"x-backend-server"}
_RESPONSE_DROP = _HOP_BY_HOP | _FRAMING
_RESPONSE_DROP_BACKEND = _RESPONSE_DROP | {b"x-backend-server"}
_RESPONSE_ACTIONS = _ResponseActions(_RESPONSE_DROP)
_RESPONSE_ACTIONS_BACKEND = _ResponseActions(_RESPONSE_DROP_BACKEND)


def _node(address: str | None) -> bytes:
    """
    @return: C{address} as an RFC 7239 node: IPv6 bracketed and quoted,
        C{unknown} when there is none.
    """
    if not address:
        return b"unknown"
    if ":" in address:
        return b'"[' + address.encode("ascii", "replace") + b']"'
    return address.encode("ascii", "replace")


def _forwardedValue(value: bytes) -> bytes:
    """
    @return: C{value} as an RFC 7239 value: a token, else a quoted string
        (callers pass only validated hosts and schemes, which need no
        escapes).
    """
    if value and not _badNameChar(value):
        return value
    return b'"' + value + b'"'


def _forwardedElement(client: ClientInfo, host: bytes | None) -> bytes:
    """
    @return: the RFC 7239 C{Forwarded} element txlb adds for C{client}'s
        request to C{host} (the Host received, or C{None}).
    """
    element = b"for=" + _node(client.peer)
    if client.localAddress:
        element += b";by=" + _node(client.localAddress)
    if host:
        element += b";host=" + _forwardedValue(host)
    return element + b";proto=" + _forwardedValue(client.scheme)


def _validRequestId(value: bytes) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and not value.translate(
        None, _REQUEST_ID_CHARS
    )


def forwardRequestHeaders(
    headers: Headers,
    framing: RequestFraming,
    policy: ForwardingPolicy,
    client: ClientInfo,
    requestId: bytes | None = None,
) -> list[tuple[bytes, bytes]]:
    """
    Build the header block txlb sends to a backend for one request.

    First every hop-by-hop header, every header named in C{Connection},
    every framing header and every header txlb owns is dropped (as are
    names that read as one of those with C{_} for C{-}); then txlb adds
    its own, in this order: C{Host} first, the client's other headers in
    their order, C{X-Forwarded-For}, C{X-Forwarded-Proto},
    C{X-Forwarded-Host}, C{Forwarded} (when on), the request id,
    C{X-Forwarded-By} (when set), C{Connection: upgrade} and C{Upgrade}
    for an upgrade, C{Expect: 100-continue}, then the framing header.

    From a trusted proxy, C{X-Forwarded-For} and C{Forwarded} are extended
    and C{X-Forwarded-Proto} and C{X-Forwarded-Host} kept as they came;
    from anyone else they are replaced.  A client-supplied request id is
    kept when there is exactly one and it is 1 to 200 characters of
    letters, digits and C{-_.:+/=@~}.

    @param headers: the validated request headers, as received.
    @param framing: the framing txlb will send (see L{RequestFraming}): its
        C{chunked} or C{contentLength} gives the one framing header,
        C{upgrade} the upgrade headers, C{host} the original Host,
        C{connectionTokens} the headers to drop.
    @param policy: the listener's (or pool's) forwarding policy.
    @param client: the request's client.
    @param requestId: the id to send when the client brought no valid one,
        instead of C{client.requestId} (so that one L{ClientInfo} can serve
        a whole connection).
    @return: new header lines; those txlb writes have canonical names.
    """
    # policy.isTrusted, without the call when no proxy is trusted.
    trusted = bool(policy.trustedProxies) and policy.isTrusted(client.peer)
    actions = policy._actions
    named = framing.connectionTokens
    # Headers named in Connection are dropped; most requests name none but
    # hop-by-hop headers, which are dropped anyway, and need no check.
    checkNamed = not named <= _HOP_BY_HOP
    host = framing.host
    out: list[tuple[bytes, bytes]] = [(b"Host", policy.hostRewrite or host or b"")]
    # The values of dropped headers txlb may pass on, by lowercase name;
    # most requests carry none.
    kept: dict[bytes, list[bytes]] | None = None
    for header in headers:
        action = actions[header[0]]
        if not action:
            if checkNamed and header[0].lower() in named:
                continue
            out.append(header)
        elif action != _DROP and action not in named and (
            trusted or action == policy._requestIdName
        ):
            if kept is None:
                kept = {}
            kept.setdefault(action, []).append(header[1])

    if kept is None:
        # No forwarding header or request id of the client's: txlb's own.
        out.append((b"X-Forwarded-For", client._forwardedFor))
        out.append((b"X-Forwarded-Proto", client.scheme))
        if host:
            out.append((b"X-Forwarded-Host", host))
        if policy.forwarded:
            out.append((b"Forwarded", _forwardedElement(client, host)))
        out.append((
            policy.requestIdHeader,
            client.requestId if requestId is None else requestId,
        ))
    else:
        forwardedFor = kept.get(b"x-forwarded-for", [])
        forwardedFor.append(client._forwardedFor)
        out.append((b"X-Forwarded-For", b", ".join(forwardedFor)))
        proto = kept.get(b"x-forwarded-proto")
        out.append((b"X-Forwarded-Proto", b", ".join(proto) if proto else client.scheme))
        originalHost = kept.get(b"x-forwarded-host")
        if originalHost:
            out.append((b"X-Forwarded-Host", b", ".join(originalHost)))
        elif host:
            out.append((b"X-Forwarded-Host", host))
        forwarded = kept.get(b"forwarded", [])
        if policy.forwarded:
            forwarded.append(_forwardedElement(client, host))
        if forwarded:
            out.append((b"Forwarded", b", ".join(forwarded)))
        requestIds = kept.get(policy._requestIdName, ())
        if len(requestIds) == 1 and _validRequestId(requestIds[0]):
            out.append((policy.requestIdHeader, requestIds[0]))
        else:
            out.append((
                policy.requestIdHeader,
                client.requestId if requestId is None else requestId,
            ))
    if policy.forwardedBy is not None:
        out.append((b"X-Forwarded-By", policy.forwardedBy))
    if framing.upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", framing.upgrade))
    if framing.expectContinue:
        out.append((b"Expect", _CONTINUE))
    if framing.chunked:
        out.append((b"Transfer-Encoding", _CHUNKED))
    elif framing.contentLength is not None:
        out.append(_lengthHeader(framing.contentLength))
    return out


# Content-Length header lines made, by length: a backend sends the same few
# lengths over and over, and formatting a number costs more than a lookup.
_LENGTH_HEADERS: dict[int, tuple[bytes, bytes]] = {}
_MAX_LENGTH_HEADERS = 1024


def _lengthHeader(length: int) -> tuple[bytes, bytes]:
    """
    @return: the C{Content-Length} header line for C{length}.
    """
    header = _LENGTH_HEADERS.get(length)
    if header is None:
        header = (b"Content-Length", b"%d" % (length,))
        if len(_LENGTH_HEADERS) < _MAX_LENGTH_HEADERS:
            _LENGTH_HEADERS[length] = header
    return header


@functools.lru_cache(maxsize=1024)
def _backendValue(name: str | bytes) -> bytes:
    # Server names come from the config; anything that could break the
    # header line is dropped rather than trusted.
    raw = name if isinstance(name, bytes) else name.encode("utf-8")
    return bytes(c for c in raw if c in _FIELD_CHARS).strip(_WS) or b"unknown"


def keptResponseHeaders(
    headers: Headers, named: frozenset[bytes], backendHeader: bool
) -> list[tuple[bytes, bytes]]:
    """
    The headers of a backend's response (final or interim) that txlb
    passes on: all but the hop-by-hop and framing headers (under any
    spelling a backend could read as one), those named in its
    C{Connection} (C{named}), and, when txlb writes C{X-Backend-Server}
    itself, the backend's own.

    @param headers: the validated response headers, as received.
    @param named: the response's C{Connection} tokens, lowercase.
    @param backendHeader: the policy's C{backendHeader}.
    @return: a new list of the kept header lines.
    """
    if backendHeader:
        actions, drop = _RESPONSE_ACTIONS_BACKEND, _RESPONSE_DROP_BACKEND
    else:
        actions, drop = _RESPONSE_ACTIONS, _RESPONSE_DROP
    if named <= drop:
        # The usual Connection values (keep-alive, close) name only headers
        # dropped anyway.
        return [header for header in headers if not actions[header[0]]]
    return [
        header
        for header in headers
        if not actions[header[0]] and header[0].lower() not in named
    ]


def interimResponseHeaders(
    headers: Headers, status: int, policy: ForwardingPolicy
) -> list[tuple[bytes, bytes]]:
    """
    The header block txlb sends a client for an interim (1xx, not 101)
    response: L{keptResponseHeaders}, and nothing added.

    @param headers: the interim response's validated headers.
    @param status: its status.
    @param policy: the forwarding policy.
    """
    named = _tokens(
        [value for name, value in headers if name.lower() == b"connection"], status
    )
    return keptResponseHeaders(headers, named, policy.backendHeader)


def forwardResponseHeaders(
    headers: Headers,
    framing: ResponseFraming,
    policy: ForwardingPolicy,
    backendName: str | bytes,
    clientKeepAlive: bool,
    clientVersion: tuple[int, int],
    plan: ResponsePlan | None = None,
) -> list[tuple[bytes, bytes]]:
    """
    Build the header block txlb sends to the client for one response.

    Hop-by-hop headers, headers named in C{Connection} and the framing
    headers are dropped; then txlb adds, as L{planResponse} decides: the
    framing header (C{Content-Length}, or C{Transfer-Encoding: chunked} to
    an HTTP/1.1 client, none for a close-delimited body, and for HEAD and
    304 the length the backend announced), C{Connection: close} when txlb
    will close, C{Connection: keep-alive} when an HTTP/1.0 client keeps
    its connection, C{Connection: upgrade} and C{Upgrade} on a 101, and
    C{X-Backend-Server} when C{policy.backendHeader} is on (replacing one
    from the backend).  Interim 1xx responses get no connection header.

    @param headers: the validated response headers, as received.
    @param framing: the response's framing.
    @param policy: the forwarding policy.
    @param backendName: the backend's name, for C{X-Backend-Server}.
    @param clientKeepAlive: see L{planResponse}.
    @param clientVersion: see L{planResponse}.
    @param plan: what L{planResponse} returns for these, when the caller
        has it already.
    @return: new header lines; those txlb writes have canonical names.
    """
    out = keptResponseHeaders(headers, framing.connectionTokens, policy.backendHeader)
    status = framing.status
    if status == 101:
        if framing.upgrade is not None:
            out.append((b"Connection", b"upgrade"))
            out.append((b"Upgrade", framing.upgrade))
    elif status >= 200:
        if plan is None:
            plan = planResponse(framing, clientKeepAlive, clientVersion)
        if plan.body is _BODY_CHUNKED:
            out.append((b"Transfer-Encoding", _CHUNKED))
        elif framing.contentLength is not None:
            # A length body, or the announced length of a HEAD or 304
            # (_lengthHeader, without the call for a length seen before).
            length = framing.contentLength
            out.append(_LENGTH_HEADERS.get(length) or _lengthHeader(length))
        if plan.close:
            out.append((b"Connection", b"close"))
        elif clientVersion < (1, 1):
            out.append((b"Connection", b"keep-alive"))
    if policy.backendHeader:
        out.append((b"X-Backend-Server", _backendValue(backendName)))
    return out
