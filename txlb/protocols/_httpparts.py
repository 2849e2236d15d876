"""
The parts of the L7 front that are not the protocol itself: its settings,
the factory's state, the per-request state, a connection's deadline and the
per-attempt exchange.  The small functions that write HTTP messages and read
request details are in L{txlb.protocols._httpwire}.

Everything public here is importable from L{txlb.protocols.http}.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

import attrs
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txlb.limits import ConnectionLimit, RetryBudget
from txlb.pool import Backend, Pool
from txlb.protocols._httpwire import _Reject, _statusHead
from txlb.protocols._seen import SeenOnce
from txlb.protocols.headers import (
    ForwardingPolicy,
    RequestFraming,
    ResponseFraming,
    ResponsePlan,
    forwardResponseHeaders,
    planResponse,
)
from txlb.protocols.upstream import UpstreamConnection, UpstreamPool
from txlb.routing import Router

if TYPE_CHECKING:
    from txlb.protocols.http import HTTPProxyProtocol

# Requests parsed ahead of the one being answered before reading pauses.
MAX_PIPELINE = 16

# Request body bytes held for requests not yet sent before reading pauses.
BODY_HIGH_WATER = 256 * 1024

# The most body bytes copied to join them with a response head (or the end
# of a chunked body) into one send; more cost more to copy than a send.
_COALESCE = 16384

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


# Client heads an L7Pool remembers (see L7Pool.clientHead).
_MAX_CLIENT_HEADS = 256

# Whole request heads a listener remembers (see _FactoryBase.rememberRequest),
# and the longest it remembers: at most 1 MiB of them.
_MAX_KNOWN_REQUESTS = 256
_MAX_KNOWN_REQUEST_SIZE = 4096
# How many whole request reads a listener remembers having seen (by their
# hashes), so that one is remembered only when it comes again; emptied when
# full.
_MAX_SEEN_REQUESTS = 1024



@attrs.frozen
class HTTPSettings:
    """
    Limits and timeouts of one L7 listener.

    @ivar maxHeaderSize: bytes of request line and headers, else 431 (414
        when the target alone is too long).
    @ivar maxTargetLength: bytes of the request target, else 414.
    @ivar maxBodySize: bytes of a request body, else 413; C{None}: no limit.
    @ivar headerTimeout: seconds for a whole request head to arrive, else
        408 and close (from the connection's start, or the request's first
        byte on a kept-alive connection).
    @ivar bodyTimeout: the longest a client may pause while sending a
        request body (while txlb reads it), else 408 and close; C{None}: no
        limit.
    @ivar idleTimeout: seconds a kept-alive connection may wait for its
        next request.
    @ivar scheme: C{b"http"} or C{b"https"}, for X-Forwarded-Proto.
    """

    maxHeaderSize: int = 65536
    maxTargetLength: int = 8192
    maxBodySize: int | None = None
    headerTimeout: float | None = 10.0
    bodyTimeout: float | None = 60.0
    idleTimeout: float | None = 60.0
    scheme: bytes = b"http"


@attrs.frozen
class RetryPolicy:
    """
    When a request may go to another backend.

    @ivar attempts: tries in all, the first included.
    @ivar perTryTimeout: seconds for a backend to start its response.
    @ivar timeout: seconds for the whole request across tries, or C{None}.
    """

    attempts: int = 3
    perTryTimeout: float | None = 60.0
    timeout: float | None = None


@attrs.define(eq=False)
class L7Pool:
    """
    What the L7 front needs of one pool.

    @ivar hashKey: where hashing strategies take their key: C{None} (the
        client IP), C{("header", name)}, C{("cookie", name)} or
        C{("path", None)}.
    @ivar stickyCookie: the name of the affinity cookie txlb sets, or
        C{None} for no sticky sessions.
    """

    pool: Pool
    upstreams: UpstreamPool
    policy: ForwardingPolicy = ForwardingPolicy()
    retry: RetryPolicy = RetryPolicy()
    budget: RetryBudget = attrs.field(factory=RetryBudget)
    hashKey: tuple[str, bytes | None] | None = None
    stickyCookie: bytes | None = None
    _stickyTokens: dict[str, bytes] = attrs.field(factory=dict)
    # What clientHead made, by the identity of the headers and what else
    # decides it; each value keeps its headers alive, so no other object
    # can take their id while it is there.
    _clientHeads: dict[tuple[Any, ...], tuple[Any, Any, bytes]] = attrs.field(
        factory=dict, init=False, repr=False
    )

    def clientHead(
        self,
        backend: Backend,
        status: int,
        reason: bytes,
        headers: tuple[tuple[bytes, bytes], ...],
        framing: ResponseFraming,
        keepAlive: bool,
        version: tuple[int, int],
    ) -> tuple[ResponsePlan, bytes]:
        """
        The plan and the head txlb sends its client for a backend's
        response head that the response reader remembers (C{headers} is
        then the same tuple each time the same head arrives), without the
        sticky-session cookie.

        @return: what L{planResponse} gives, and the serialized head.
        """
        key = (id(headers), keepAlive, version, backend)
        made = self._clientHeads.get(key)
        if made is not None and made[0] is headers:
            return made[1], made[2]
        plan = planResponse(framing, keepAlive, version)
        head = _statusHead(status, reason, forwardResponseHeaders(
            headers, framing, self.policy, backend.name, keepAlive, version, plan,
        ))
        if len(self._clientHeads) >= _MAX_CLIENT_HEADS:
            self._clientHeads.clear()
        self._clientHeads[key] = (headers, plan, head)
        return plan, head

    def stickyToken(self, backend: Backend) -> bytes:
        """
        The opaque cookie value naming C{backend} (stable across restarts
        and instances, reveals nothing of the backend's address).
        """
        token = self._stickyTokens.get(backend.name)
        if token is None:
            token = hashlib.blake2b(
                backend.name.encode("utf-8"),
                digest_size=8,
                key=b"txlb-sticky:" + self.pool.name.encode("utf-8")[:40],
            ).hexdigest().encode("ascii")
            self._stickyTokens[backend.name] = token
        return token

    def stickyBackend(self, token: bytes) -> Backend | None:
        """
        The usable backend that C{token} names, or C{None}.
        """
        for backend in self.pool.backends:
            if backend.usable and self.stickyToken(backend) == token:
                return backend
        return None


class _Counts(dict[str, int]):
    """
    Counts by name, 0 for a name never counted, like a
    C{collections.Counter}: that class defines C{__delitem__} in Python,
    which makes every C{counts[name] += 1} three times as slow, and one
    runs for every request.
    """

    def __missing__(self, key: str) -> int:
        return 0


class _FactoryBase(ServerFactory):
    """
    The state of L{txlb.protocols.http.HTTPProxyFactory}, which adds its
    protocol.
    """

    def __init__(
        self,
        *,
        pools: Mapping[str, L7Pool],
        router: Router,
        reactor: Any,
        settings: HTTPSettings | None = None,
        maxConnections: int | None = None,
        listenerName: str = "default",
        accessLog: Callable[[dict[str, Any]], None] | None = None,
        rateLimit: Any = None,
        localStats: Callable[[bytes], Any] | None = None,
    ) -> None:
        """
        @param localStats: with a listener's C{stats = true}: called with
            C{b"/lb-health"} or C{b"/lb-stats"}, returns the JSON-able
            answer txlb gives itself for that path.
        """
        self.pools = dict(pools)
        self.rateLimit = rateLimit
        self.localStats = localStats
        self.bytesIn = 0
        self.bytesOut = 0
        self.router = router
        self.reactor = reactor
        self.settings = settings if settings is not None else HTTPSettings()
        self.limit = ConnectionLimit(maxConnections)
        self.listenerName = listenerName
        self.accessLog = accessLog
        self.stopping = False
        self.openConnections: set[HTTPProxyProtocol] = set()
        self.counters: dict[str, int] = _Counts()
        self._ids = itertools.count(1)
        self._idPrefix = os.urandom(6).hex().encode("ascii")
        self.knownRequests: dict[bytes, _KnownRequest] = {}
        # The whole request reads parsed once (see
        # _RequestReader.on_message_complete).
        self.seenRequests = SeenOnce(_MAX_SEEN_REQUESTS)

    def rememberRequest(self, data: bytes, request: ProxiedRequest) -> None:
        """
        C{request}, routed and without a body, was parsed from C{data}, one
        whole read that started at a message boundary and held nothing
        else, and seen before: remember it, if it is plain enough that the
        same bytes will always be the same request (an HTTP/1.1 keep-alive request that
        asks for nothing special of the connection) and at most
        C{_MAX_KNOWN_REQUEST_SIZE} bytes.
        """
        framing = request.framing
        if (
            len(data) > _MAX_KNOWN_REQUEST_SIZE
            or request.version != (1, 1)
            or framing is None
            or not framing.keepAlive
            or framing.upgrade is not None
            or framing.expectContinue
            or framing.chunked
            or framing.contentLength is not None
            or b"upgrade" in framing.connectionTokens
            or request.l7pool is None
        ):
            return
        known = self.knownRequests
        if len(known) >= _MAX_KNOWN_REQUESTS:
            known.clear()
        headers = tuple(request.headers)
        known[data] = _KnownRequest(self, request, headers)

    def newRequestId(self) -> bytes:
        """
        A request id unique to this process's lifetime (random prefix, then
        a counter).
        """
        return b"%s-%x" % (self._idPrefix, next(self._ids))

    @property
    def activeCount(self) -> int:
        """
        Client connections open now.
        """
        return self.limit.active

    def drained(self) -> Any:
        """
        A Deferred that fires when no client connection is open.
        """
        return self.limit.drained()

    def reconfigure(self, other: _FactoryBase) -> None:
        """
        Take the settings of C{other}, a factory built from a reloaded
        configuration: requests routed from now on, on every connection,
        use them.  Counters and open connections stay.
        """
        self.pools = other.pools
        self.router = other.router
        self.settings = other.settings
        self.accessLog = other.accessLog
        self.rateLimit = other.rateLimit
        self.localStats = other.localStats
        self.listenerName = other.listenerName
        self.limit.maximum = other.limit.maximum
        self.knownRequests.clear()

    def startDraining(self) -> None:
        """
        Shutting down, or this listener was removed: every response from
        now on carries C{Connection: close}, and kept-alive connections
        waiting for their next request are closed now.
        """
        self.stopping = True
        for protocol in list(self.openConnections):
            protocol.closeIfIdle()

    def abortAll(self) -> None:
        """
        Cut every client connection now.
        """
        for protocol in list(self.openConnections):
            protocol.closing = True
            if protocol.transport is not None:
                protocol.transport.abortConnection()

    def rateKey(self, peer: str, headers: Any) -> str:
        """
        The address a rate limit counts a request against: the socket
        peer, or, when the peer is a trusted proxy, the nearest address in
        C{X-Forwarded-For} that is not one.
        """
        policy = next(iter(self.pools.values())).policy
        if not policy.isTrusted(peer):
            return peer
        hops: list[str] = []
        for name, value in headers:
            if name.lower() == b"x-forwarded-for":
                hops.extend(
                    h.strip().decode("latin-1") for h in value.split(b",") if h.strip()
                )
        for hop in reversed(hops):
            if not policy.isTrusted(hop):
                return hop
        return hops[0] if hops else peer


class _KnownRequest:
    """
    What one whole request head, read before, was parsed, checked and
    routed to: the same bytes at a message boundary are the same request
    again, for as long as the listener's settings, routes and pools stay.

    @ivar headers: the header lines, as a tuple that every request made
        from this one shares.
    """

    __slots__ = (
        "method", "target", "headers", "framing", "headerSize", "l7pool",
        "settings", "router", "pools", "localStats",
    )

    def __init__(self, factory: _FactoryBase, request: ProxiedRequest,
                 headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.method = request.method
        self.target = request.target
        self.headers = headers
        self.framing = request.framing
        self.headerSize = request.headerSize
        self.l7pool = request.l7pool
        # What it was parsed and routed with: it stands only while the
        # listener's are still these.
        self.settings = factory.settings
        self.router = factory.router
        self.pools = factory.pools
        self.localStats = factory.localStats


class _Closing(Exception):
    """
    Raised inside a parser callback to stop parsing once txlb is closing.
    """


class ProxiedRequest:
    """
    One request on its way through txlb; the C{request} a strategy sees in
    its context.

    Its defaults are class attributes, and a request sets only what differs
    from them: txlb makes one per request, and making an attrs class of
    this many fields (a few of them fresh containers) costs several times
    as much.

    @ivar method: e.g. C{b"GET"}.
    @ivar target: the origin-form target (path and query).
    @ivar version: e.g. C{(1, 1)}.
    @ivar headers: the request's header lines as received: a list while
        they are parsed, a tuple shared with other requests when the
        request was made from a L{_KnownRequest}.
    @ivar body: body bytes held for a backend not connected yet (a deque,
        once there are any).
    @ivar tried: the backends tried, in order.
    @ivar upgradeData: bytes read after an upgrade request, for the tunnel.
    """

    method = b""
    target = b""
    version = (1, 1)
    headers: Any = ()
    framing: RequestFraming | None = None
    l7pool: L7Pool | None = None
    started = 0.0
    # When its first try started (reactor.seconds()); 0 before.
    firstTry = 0.0
    headerSize = 0
    # How many of its header lines headerSize counts, while its head is read.
    headersCounted = 0
    headerPending = 0
    # Its head deadline is due once a read ends before its head does.
    headTimed = False
    error: _Reject | None = None
    body: Any = ()
    bodyBuffered = 0
    bodyReceived = 0
    bodyDone = False
    bodySent = False
    attempts = 0
    tried: tuple[Backend, ...] = ()
    backend: Backend | None = None
    exchange: _Exchange | None = None
    stickyHit = False
    headSent = False
    status = 0
    bytesOut = 0
    retrying = False
    # The pool's queue wait, while the request waits for a backend.
    waiting: Any = None
    # For a path txlb answers itself (stats = true): that path.
    local: bytes | None = None
    staleRetried = False
    counted = False
    plan: Any = None
    upgradeData: Any = ()
    # Response bytes held back to be written with the next ones.
    held: bytes | None = None
    # The _KnownRequest it was made from, if any.
    known: _KnownRequest | None = None
    # txlb told the client to send its body (100 Continue).
    continued = False


class _Deadline:
    """
    The one deadline a client connection has at a time (its request head's,
    the request body's next bytes', or its idle wait's), on one lazily
    re-armed C{DelayedCall}.

    A kept-alive connection moves between deadlines on every request;
    scheduling and cancelling a C{DelayedCall} each time costs more than
    the rest of the bookkeeping.  Instead the call is left in place when the
    deadline is cleared or moved later; when it fires early it looks again
    at what the deadline is by then.  It is scheduled no later than a head
    deadline set from now could fall, so the usual move from the idle
    deadline to a head deadline never reschedules it.

    @ivar deadline: when C{action} is due (C{reactor.seconds()} time), or
        C{None} for no deadline.
    """

    __slots__ = ("reactor", "soonest", "call", "at", "deadline", "action")

    def __init__(self, reactor: Any, soonest: float | None) -> None:
        """
        @param soonest: the shortest timeout L{set} is usually given (the
            head timeout), or C{None}.
        """
        self.reactor = reactor
        self.soonest = soonest
        self.call: Any = None
        self.at = 0.0
        self.deadline: float | None = None
        self.action: Any = None

    def set(self, seconds: float | None, action: Any, now: float | None = None) -> None:
        """
        Call C{action} once C{seconds} have passed, instead of whatever was
        due; C{None}: nothing is due.

        @param now: C{reactor.seconds()}, when the caller just read it.
        """
        if seconds is None:
            self.deadline = None
            return
        if now is None:
            now = self.reactor.seconds()
        deadline = self.deadline = now + seconds
        self.action = action
        if self.call is None or self.at > deadline:
            soonest = self.soonest
            if soonest is not None and soonest < seconds:
                seconds = soonest
            self._schedule(now, seconds)

    def clear(self) -> None:
        """
        Nothing is due (the scheduled call, if any, lapses harmlessly).
        """
        self.deadline = None

    def stop(self) -> None:
        """
        Nothing is due, and nothing stays scheduled.
        """
        self.deadline = None
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()

    def _schedule(self, now: float, seconds: float) -> None:
        """
        (Re)schedule the call C{seconds} after C{now}.
        """
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.at = now + seconds
        self.call = self.reactor.callLater(seconds, self._fired)

    def _fired(self) -> None:
        """
        Call the action if it is due; else look again when it will be.
        """
        self.call = None
        deadline = self.deadline
        if deadline is None:
            return
        now = self.reactor.seconds()
        if deadline - now > 1e-6:
            self._schedule(now, deadline - now)
            return
        self.deadline = None
        self.action()


@implementer(IPushProducer)
class _ReadPause:
    """
    Pauses the client's reading for one reason (backend backpressure),
    registered as the producer of a backend transport.
    """

    def __init__(self, proto: HTTPProxyProtocol, reason: str) -> None:
        self.proto = proto
        self.reason = reason

    def pauseProducing(self) -> None:
        self.proto.pauseReading(self.reason)

    def resumeProducing(self) -> None:
        self.proto.resumeReading(self.reason)

    def stopProducing(self) -> None:
        self.proto.resumeReading(self.reason)


class _Exchange:
    """
    One attempt of one request on one backend: connecting, sending, and the
    L{txlb.protocols.upstream.IExchange} that receives the response.

    Every callback checks that it is still the request's current attempt, so
    a late event from an abandoned attempt changes nothing.
    """

    __slots__ = (
        "proto", "request", "backend", "connection", "connecting", "started",
        "responded", "released", "deadlineCall", "cut",
    )

    def __init__(self, proto: HTTPProxyProtocol, request: ProxiedRequest,
                 backend: Backend, started: float) -> None:
        """
        @param started: when the attempt started (C{reactor.seconds()}).
        """
        self.proto = proto
        self.request = request
        self.backend = backend
        self.connection: UpstreamConnection | None = None
        self.connecting: Any = None
        self.started = started
        self.responded = False
        self.released = False
        # Cuts the connect when the request's time across tries runs out.
        self.deadlineCall: Any = None
        # Its response timeout was cut to what was left of the request's
        # time across tries.
        self.cut = False

    @property
    def current(self) -> bool:
        return self.request.exchange is self

    def stopDeadline(self) -> None:
        """
        The connect is over, one way or another: its cut at the request's
        deadline is no longer due.
        """
        call, self.deadlineCall = self.deadlineCall, None
        if call is not None:
            call.cancel()

    def releaseBackend(self) -> None:
        """
        Count this attempt's request out of the backend, once.
        """
        if not self.released:
            self.released = True
            self.backend.release()

    # IExchange

    def informational(self, status: int, reason: bytes, headers: Any) -> None:
        if self.request.exchange is self:
            self.proto.informational(self.request, status, reason, headers)

    def responseStarted(self, version: tuple[int, int], status: int, reason: bytes,
                        headers: list[tuple[bytes, bytes]],
                        framing: ResponseFraming) -> None:
        if self.request.exchange is self:
            self.responded = True
            self.proto.responseStarted(self, status, reason, headers, framing)

    def responseBody(self, data: bytes) -> None:
        if self.request.exchange is self:
            self.proto.responseBody(self.request, data)

    def responseComplete(self) -> None:
        if self.request.exchange is self:
            self.proto.responseComplete(self)

    def responseWhole(self, version: tuple[int, int], status: int, reason: bytes,
                      headers: Any, framing: ResponseFraming, body: bytes) -> None:
        if self.request.exchange is self:
            self.responded = True
            self.proto.responseWhole(self, status, reason, headers, framing, body)

    def responseFailed(self, reason: Failure, started: bool) -> None:
        if self.request.exchange is self:
            self.proto.responseFailed(self, reason, started)

    def upgraded(self, connection: UpstreamConnection, extra: bytes) -> None:
        if self.request.exchange is self:
            self.proto.upgraded(self, connection, extra)


class _BadUpgrade(Exception):
    """
    A backend answered 101 to a request that did not ask to upgrade.
    """

    def __str__(self) -> str:
        return "101 Switching Protocols to a request that did not upgrade"
