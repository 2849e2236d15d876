"""
The L7 front: a strict, streaming HTTP/1.1 reverse proxy protocol.

Requests are parsed by httptools (llhttp, a C parser generated from a
state machine: strict and fast; txlb enables none of its leniencies) and
checked again by L{txlb.protocols.headers}, which refuses every framing
ambiguity a parser may let through.  Each request is routed to a pool, given
a backend by the pool's strategy, and sent over a pooled persistent backend
connection (L{txlb.protocols.upstream}).  Bodies stream both ways with
backpressure in bounded memory.

Pipelined requests are parsed as they arrive and answered in order: only the
head of the queue is proxied; the others wait with their bodies buffered up
to a bound, beyond which the client is not read.

Most requests a listener sees are the same few plain heads over and over.
A read that is exactly one whole head it has parsed, checked and routed
before, at a message boundary, is that request again (L{_KnownRequest}): it
is queued without being parsed, and, on an idle backend connection, sent
at once (L{HTTPProxyProtocol.sendKnown}).  The backend side does the same
for response heads (L{txlb.protocols._upstreamparse}).
"""

from __future__ import annotations

import collections
import json
import math
from typing import Any

import attrs
import httptools
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txlb.accesslog import AccessLog
from txlb.pool import Backend, QueueFull
from txlb.protocols._httpparts import (
    _COALESCE,
    _CONTINUE,
    BODY_HIGH_WATER,
    IDEMPOTENT,
    MAX_PIPELINE,
    HTTPSettings,
    L7Pool,
    ProxiedRequest,
    RetryPolicy,
    _accessLine,
    _accessRecord,
    _BadUpgrade,
    _Closing,
    _cookie,
    _Deadline,
    _describe,
    _errorResponse,
    _Exchange,
    _FactoryBase,
    _frameBody,
    _hashKey,
    _interimHeaders,
    _KnownRequest,
    _originForm,
    _parserReason,
    _ReadPause,
    _Reject,
    _requestHead,
    _statusHead,
)
from txlb.protocols.headers import (
    Body,
    ClientInfo,
    HeaderError,
    ResponseFraming,
    forwardRequestHeaders,
    forwardResponseHeaders,
    planResponse,
    validateRequestHeaders,
)
from txlb.protocols.upstream import (
    ConnectionLostEarly,
    ResponseTimeout,
    UpstreamConnection,
)

__all__ = [
    "BODY_HIGH_WATER",
    "HTTPProxyFactory",
    "HTTPProxyProtocol",
    "HTTPSettings",
    "IDEMPOTENT",
    "L7Pool",
    "MAX_PIPELINE",
    "ProxiedRequest",
    "RetryPolicy",
]

# Paths a listener with C{stats = true} answers itself.
_LOCAL_PATHS = frozenset((b"/lb-health", b"/lb-stats"))


# Stands in for the request id in a head made once for many requests (see
# HTTPProxyProtocol.knownHead); NUL is in no header value txlb sends.
_ID_SLOT = b"\x00request-id\x00"


def _rateLimited(wait: float) -> tuple[int, str, tuple[bytes, ...]]:
    """
    @return: the refusal of a request over the rate limit, which may try
        again in C{wait} seconds.
    """
    return 429, "too many requests", (b"Retry-After: %d" % max(1, math.ceil(wait)),)


class HTTPProxyProtocol(Protocol):
    """
    One client connection of an L7 listener.
    """

    _log = Logger()

    def __init__(self) -> None:
        self.queue: collections.deque[ProxiedRequest] = collections.deque()
        self.parsing: ProxiedRequest | None = None
        self.parser: Any = None
        self.pauses: set[str] = set()
        self.timer: _Deadline | None = None
        self.closing = False
        self.ignoreInput = False
        self.admitted = False
        self.tunnel: UpstreamConnection | None = None
        # The exchange whose backend the tunnel counts on until it ends.
        self.tunnelExchange: _Exchange | None = None
        # The first head's deadline runs from connectionMade.
        self.firstHead = True
        # Some part of the head being parsed was reported during this read.
        self.headProgress = False
        self.peer = ""
        self.peerAddress: Any = None
        self.client: ClientInfo | None = None
        self.bodyHeld = 0
        # The timer is the body deadline of the request being parsed.
        self.bodyWatch = False
        # The read being parsed, when a request starts with it.
        self.wholeRead: bytes | None = None
        # What knownHead made last.
        self.lastHead: tuple[Any, ...] | None = None

    # ------------------------------------------------------------ connection

    @property
    def reactor(self) -> Any:
        return self.factory.reactor

    def connectionMade(self) -> None:
        factory = self.factory
        if not factory.limit.acquire():
            self.closing = True
            self.transport.write(_errorResponse(503, "over the connection limit", True))
            self.transport.loseConnection()
            return
        self.admitted = True
        factory.openConnections.add(self)
        peer = self.peerAddress = self.transport.getPeer()
        self.peer = getattr(peer, "host", "") or ""
        # The request id is filled in per request.
        self.client = ClientInfo(peer=self.peer, scheme=factory.settings.scheme,
                                 requestId=b"")
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None and getattr(peer, "port", None) is not None:
            setNoDelay(True)
        self.parser = httptools.HttpRequestParser(self)
        self.timer = _Deadline(factory.reactor, factory.settings.headerTimeout)
        self.timer.set(factory.settings.headerTimeout, self.headerTimedOut)

    def connectionLost(self, reason: Failure = None) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.stop()
        for request in self.queue:
            self.abandon(request)
        self.queue.clear()
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.abort()
        if self.tunnelExchange is not None:
            exchange, self.tunnelExchange = self.tunnelExchange, None
            exchange.releaseBackend()
        if self.admitted:
            self.admitted = False
            self.factory.openConnections.discard(self)
            self.factory.limit.release()

    def abandon(self, request: ProxiedRequest) -> None:
        """
        Stop working on C{request}: cancel its attempt, count it out.
        """
        waiting, request.waiting = request.waiting, None
        if waiting is not None:
            waiting.cancel()
        exchange, request.exchange = request.exchange, None
        if exchange is not None:
            self.endAttempt(exchange, request)
            if exchange.connecting is not None:
                exchange.connecting.cancel()
            if exchange.connection is not None:
                exchange.connection.abort()
        self.uncount(request)

    def endAttempt(self, exchange: _Exchange, request: ProxiedRequest) -> None:
        """
        The bookkeeping of an attempt that is over, whatever its outcome.
        """
        exchange.releaseBackend()
        if request.retrying:
            request.retrying = False
            request.l7pool.budget.retries -= 1

    def uncount(self, request: ProxiedRequest) -> None:
        """
        C{request} is no longer in flight for its pool's retry budget.
        """
        if request.counted:
            request.counted = False
            request.l7pool.budget.requests -= 1

    # ---------------------------------------------------------------- timers

    def headerTimedOut(self) -> None:
        """
        The request head did not arrive in time: 408 (when nothing else is
        being answered) and close.
        """
        if self.queue:
            # An earlier request is still being answered; this one is late.
            self.transport.abortConnection()
            return
        self.closing = True
        self.factory.counters["header_timeout"] += 1
        self.transport.write(_errorResponse(408, "request header timeout", True))
        self.transport.loseConnection()

    def watchBody(self) -> None:
        """
        The body of the request being parsed is due: start its deadline.
        """
        timeout = self.factory.settings.bodyTimeout
        if timeout is not None:
            self.bodyWatch = True
            self.timer.set(timeout, self.bodyTimedOut)

    def bodyTimedOut(self) -> None:
        """
        The client paused longer than C{bodyTimeout} while sending a request
        body: refuse it with 408 (or cut the connection when its response
        has started) and close.  Time during which txlb itself held reading
        back does not count.
        """
        request = self.parsing
        if not self.bodyWatch or request is None or self.closing or self.ignoreInput:
            self.bodyWatch = False
            return
        timeout = self.factory.settings.bodyTimeout
        if self.pauses and timeout is not None:
            # txlb is not reading: the client cannot be late.
            self.timer.set(timeout, self.bodyTimedOut)
            return
        self.bodyWatch = False
        self.rejectParsing(408, "request body timeout", counter="body_timeout")

    def closeIfIdle(self) -> None:
        """
        Close now if no request is in flight or arriving (a kept-alive
        connection between requests).
        """
        if not self.queue and self.parsing is None and self.tunnel is None:
            self.closing = True
            self.transport.loseConnection()

    def idleTimedOut(self) -> None:
        """
        A kept-alive connection waited too long for its next request.
        """
        self.closing = True
        self.transport.loseConnection()

    # ------------------------------------------------------- flow control

    def pauseReading(self, reason: str) -> None:
        """
        Stop reading from the client for C{reason}.
        """
        if not self.pauses:
            self.transport.pauseProducing()
        self.pauses.add(reason)

    def resumeReading(self, reason: str) -> None:
        """
        C{reason} no longer holds reading back.
        """
        if reason in self.pauses:
            self.pauses.discard(reason)
            if not self.pauses and not self.closing:
                self.transport.resumeProducing()
                if self.bodyWatch:
                    # The client's pause starts now.
                    timer = self.timer
                    timer.set(self.factory.settings.bodyTimeout, self.bodyTimedOut)

    # ---------------------------------------------------------------- input

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.closing or self.ignoreInput:
            return
        if "upgrade" in self.pauses:
            # Until the backend answers the upgrade, the bytes are the
            # tunnel's (a transport may deliver a read after a pause).
            last = self.queue[-1]
            last.upgradeData = [*last.upgradeData, data]
            return
        if self.parsing is None:
            # A read that starts a request may be one whole request head
            # already seen (see _KnownRequest).
            factory = self.factory
            known = factory.knownRequests.get(data)
            if (
                known is not None
                # Parsed and routed under what the listener has now.
                and known.router is factory.router
                and known.settings is factory.settings
                and known.pools is factory.pools
                and known.localStats is factory.localStats
            ):
                self.knownRequest(known)
                return
            self.wholeRead = data
        else:
            self.wholeRead = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if not self.closing:
                self.upgradeData(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            reject = e.__context__
            if self.closing:
                # txlb answered and closed while this read was parsed.
                return
            if isinstance(reject, _Reject):
                self.rejectParsing(reject.status, reject.reason, reject.headers)
            else:
                self._log.failure(
                    "internal error parsing a request from {peer}",
                    failure=Failure(reject) if reject is not None else None,
                    peer=self.peer,
                )
                self.rejectParsing(500, "internal error")
        except httptools.HttpParserError as e:
            if self.closing:
                return
            if isinstance(e, httptools.HttpParserInvalidMethodError):
                self.rejectParsing(400, "invalid method")
            elif isinstance(e, httptools.HttpParserInvalidURLError):
                self.rejectParsing(400, "invalid request target")
            else:
                self.rejectParsing(400, _parserReason(e))
        else:
            if self.parsing is not None:
                self.checkPendingHead(len(data))

    def knownRequest(self, known: _KnownRequest) -> None:
        """
        A read that was one whole request head seen before: what parsing
        and checking it gave then, it gives now; queue it as
        L{on_headers_complete} and L{on_message_complete} would.
        """
        factory = self.factory
        request = ProxiedRequest()
        request.started = now = factory.reactor.seconds()
        request.method = known.method
        request.target = known.target
        request.headers = known.headers
        request.framing = known.framing
        request.headerSize = known.headerSize
        request.bodyDone = True
        request.known = known
        self.firstHead = False
        queue = self.queue
        if not queue:
            # The head is all here: no head deadline.
            self.timer.deadline = None
        if factory.rateLimit is not None:
            wait = factory.rateLimit.take(factory.rateKey(self.peer, request.headers))
            if wait:
                factory.counters["rate_limited"] += 1
                request.framing = None
                self.parsing = request
                self.rejectParsing(*_rateLimited(wait))
                return
        l7pool = request.l7pool = known.l7pool
        l7pool.budget.requests += 1
        request.counted = True
        queue.append(request)
        if len(queue) > MAX_PIPELINE:
            self.pauseReading("pipeline")
        elif len(queue) == 1:
            self.sendKnown(request, now)

    def checkPendingHead(self, received: int) -> None:
        """
        Bound the part of a request head that httptools holds before
        reporting it (a header line is reported only once it ends): a read
        during which no part of the head was reported belongs to it whole.
        """
        request = self.parsing
        if request is None or request.framing is not None or self.ignoreInput:
            return
        if self.headProgress:
            self.headProgress = False
            request.headerPending = 0
            return
        request.headerPending += received
        if request.headerSize + request.headerPending > self.factory.settings.maxHeaderSize:
            self.rejectParsing(431, "request header block too large")

    def rejectParsing(self, status: int, reason: str,
                      headers: tuple[bytes, ...] = (), counter: str = "rejected") -> None:
        """
        The request being parsed is refused: once the requests before it
        are answered, answer C{status} and close.  Nothing more is read.

        @param counter: the listener counter that counts the refusal.
        """
        request = self.parsing or ProxiedRequest()
        self.parsing = None
        self.bodyWatch = False
        request.error = _Reject(status, reason, headers)
        self.factory.counters[counter] += 1
        self.ignoreInput = True
        self.pauseReading("rejected")
        if request.framing is None:
            # Refused in its head: not queued yet.
            if not self.queue:
                self.timer.clear()
            self.queue.append(request)
            if len(self.queue) == 1:
                self.dispatch()
            return
        # Refused in its body (too large): it is queued, maybe in flight.
        if self.queue and self.queue[0] is request:
            if request.headSent:
                self.closing = True
                self.transport.abortConnection()
                return
            self.abandon(request)
            self.answerError(request, status, reason, True, headers)

    def upgradeData(self, data: bytes) -> None:
        """
        Bytes after an upgrade request: held for the tunnel if the backend
        agrees, or, when txlb does not tunnel this upgrade, parsed as HTTP.
        """
        last = self.queue[-1] if self.queue else None
        if last is not None and last.framing is not None and last.framing.upgrade:
            if data:
                last.upgradeData = [*last.upgradeData, data]
            # Nothing after this request is HTTP until the backend answers.
            self.pauseReading("upgrade")
            return
        self.parser = httptools.HttpRequestParser(self)
        if data:
            self.dataReceived(data)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.closing:
            raise _Closing()
        factory = self.factory
        request = ProxiedRequest()
        request.started = factory.reactor.seconds()
        request.headers = []
        self.parsing = request
        self.headProgress = True
        if self.firstHead:
            # The deadline started at connectionMade runs on.
            self.firstHead = False
        elif not self.queue:
            self.timer.set(factory.settings.headerTimeout, self.headerTimedOut)

    def on_url(self, url: bytes) -> None:
        self.headProgress = True
        request = self.parsing
        request.target += url
        request.headerSize += len(url)
        if len(request.target) > self.factory.settings.maxTargetLength:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headProgress = True
        request = self.parsing
        request.headerSize += len(name) + len(value) + 4
        if request.headerSize > self.factory.settings.maxHeaderSize:
            raise _Reject(431, "request header block too large")
        request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.parsing
        parser = self.parser
        queue = self.queue
        if not queue:
            # self.timer.clear(), inline.
            self.timer.deadline = None
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                request.version = (0, 0)
                raise _Reject(505, "unsupported HTTP version")
            request.version = (1, 0)
        method = request.method = parser.get_method()
        if method == b"CONNECT":
            raise _Reject(405, "CONNECT is not supported")
        try:
            framing = validateRequestHeaders(request.version, request.headers)
        except HeaderError as e:
            raise _Reject(e.status, e.reason) from None
        target = request.target
        if not target.startswith(b"/"):
            if target == b"*" and method == b"OPTIONS":
                pass
            else:
                target, host = _originForm(target)
                request.target = target
                if host is not None:
                    framing = attrs.evolve(framing, host=host)
        factory = self.factory
        maxBody = factory.settings.maxBodySize
        if maxBody is not None and (framing.contentLength or 0) > maxBody:
            raise _Reject(413, "request body too large")
        if factory.rateLimit is not None:
            wait = factory.rateLimit.take(factory.rateKey(self.peer, request.headers))
            if wait:
                factory.counters["rate_limited"] += 1
                # Refused in its head: answered, then closed, so its body
                # (if any) is never read as a request.
                raise _Reject(*_rateLimited(wait))
        request.framing = framing
        if factory.localStats is not None and target in _LOCAL_PATHS and (
            method == b"GET" or method == b"HEAD"
        ):
            request.local = target
            if not framing.chunked and not framing.contentLength:
                request.bodyDone = True
            elif not framing.expectContinue:
                self.watchBody()
            queue.append(request)
            if len(queue) == 1:
                self.dispatch()
            return
        l7pool = request.l7pool = factory.pools[
            factory.router.route(framing.host, target, request.headers)
        ]
        l7pool.budget.requests += 1
        request.counted = True
        if not framing.chunked and not framing.contentLength:
            # No body (RequestFraming.body is Body.NONE, without the call).
            request.bodyDone = True
        elif not framing.expectContinue:
            self.watchBody()
        queue.append(request)
        if len(queue) > MAX_PIPELINE:
            self.pauseReading("pipeline")
        elif len(queue) == 1:
            # dispatch(), for a request that is not an error.
            self.tryBackend(request)

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        request.bodyReceived += len(data)
        settings = self.factory.settings
        maxBody = settings.maxBodySize
        if maxBody is not None and request.bodyReceived > maxBody:
            raise _Reject(413, "request body too large")
        if self.bodyWatch:
            # Moved later in place: the timer looks again when it fires.
            self.timer.deadline = self.reactor.seconds() + settings.bodyTimeout
        elif settings.bodyTimeout is not None:
            # A body sent before (or without) the 100 Continue it expected.
            self.watchBody()
        exchange = request.exchange
        if exchange is not None and exchange.connection is not None and not request.body:
            exchange.connection.writeBody(_frameBody(request, data))
            request.bodySent = True
            return
        if not request.body:
            request.body = collections.deque()
        request.body.append(data)
        request.bodyBuffered += len(data)
        self.bodyHeld += len(data)
        if self.bodyHeld > BODY_HIGH_WATER:
            self.pauseReading("body")

    def on_message_complete(self) -> None:
        request = self.parsing
        self.parsing = None
        data, self.wholeRead = self.wholeRead, None
        if request.bodyDone:
            # No body: its backend request is (or will be) finished where
            # it is sent.
            if (
                data is not None
                and request.l7pool is not None
                and data.find(b"\r\n\r\n") == len(data) - 4
            ):
                # The read was this request, and nothing else.
                self.factory.rememberRequest(data, request)
            return
        request.bodyDone = True
        if self.bodyWatch:
            self.bodyWatch = False
            self.timer.clear()
        exchange = request.exchange
        if exchange is not None and exchange.connection is not None and not request.body:
            self.finishRequestBody(request, exchange.connection)

    # --------------------------------------------------------------- routing

    def dispatch(self) -> None:
        """
        Start answering the request at the head of the queue.
        """
        if not self.queue:
            return
        request = self.queue[0]
        error = request.error
        if error is not None:
            self.answerError(request, error.status, error.reason, True, error.headers)
            return
        if request.local is not None:
            self.answerLocal(request)
            return
        self.tryBackend(request)

    def tryBackend(self, request: ProxiedRequest, fresh: bool = False,
                   now: float | None = None) -> None:
        """
        Pick a backend for C{request} (not one already tried) and connect.

        @param now: C{reactor.seconds()}, when the caller just read it.
        """
        l7pool = request.l7pool
        assert l7pool is not None
        backend = None
        request.stickyHit = False
        if l7pool.stickyCookie is not None and not request.tried:
            token = _cookie(request.headers, l7pool.stickyCookie)
            if token is not None:
                backend = l7pool.stickyBackend(token)
                request.stickyHit = backend is not None
        if backend is None:
            hashKey = l7pool.hashKey
            backend = l7pool.pool.pick(
                self.peerAddress,
                request,
                None if hashKey is None else _hashKey(hashKey, request, self.peer),
                request.tried,
            )
        if backend is None:
            self.noBackend(request)
            return
        self.useBackend(request, backend, fresh, now)

    def sendKnown(self, request: ProxiedRequest, now: float) -> None:
        """
        Send a request made from a L{_KnownRequest}: L{tryBackend},
        L{useBackend} and L{backendConnected} in one call for the usual
        case, a pool without sticky sessions or a hash key and an idle
        connection to the backend its strategy picks.  Anything else goes
        the general way.

        @param now: C{reactor.seconds()}, just read.
        """
        l7pool = request.l7pool
        if l7pool.stickyCookie is not None or l7pool.hashKey is not None:
            self.tryBackend(request, False, now)
            return
        backend = l7pool.pool.pick(self.peerAddress, request, None, ())
        if backend is None:
            self.noBackend(request)
            return
        connection = l7pool.upstreams.takeIdle(backend)
        if connection is None:
            self.useBackend(request, backend, False, now)
            return
        # useBackend, inline.
        request.attempts = 1
        request.tried = (backend,)
        request.backend = backend
        # backend.acquire(), inline.
        backend.activeConnections += 1
        backend.totalConnections += 1
        exchange = request.exchange = _Exchange(self, request, backend, now)
        # backendConnected, inline.
        exchange.connection = connection
        known = request.known
        made = self.lastHead
        if made is not None and made[0] is known and made[1] is l7pool and made[3]:
            # What knownHead would give, from what it made last.
            head = b"%b%x%b" % (made[2], next(self.factory._ids), made[3])
        else:
            head = self.knownHead(known, l7pool)
        retry = l7pool.retry
        connection.sendRequest(
            head, request.method, exchange,
            retry.perTryTimeout if retry.timeout is None else self.tryTimeout(request, now),
            whole=True,
        )
        if self.pauses and request.exchange is exchange:
            self.resumeReading("backend")

    def noBackend(self, request: ProxiedRequest) -> None:
        """
        No backend could be picked for C{request}: wait in the pool's
        queue, or answer 502 (every usable backend was tried) or 503.
        """
        l7pool = request.l7pool
        if request.retrying:
            request.retrying = False
            l7pool.budget.retries -= 1
        if request.tried:
            # Every usable backend was tried, and failed.
            self.answerError(request, 502, "bad gateway", not request.bodyDone)
            return
        pool = l7pool.pool
        if pool.queueable():
            hashKey = l7pool.hashKey
            waiting = request.waiting = pool.wait(
                clientAddress=self.peerAddress,
                request=request,
                hashKey=None if hashKey is None else _hashKey(hashKey, request, self.peer),
            )
            waiting.addCallbacks(self.dequeued, self.queueFailed,
                                 callbackArgs=(request,), errbackArgs=(request,))
            return
        pool.dropped["no_backend"] += 1
        self.factory.counters["no_backend"] += 1
        self.answerError(request, 503, "no backend available", not request.bodyDone)

    def dequeued(self, backend: Backend, request: ProxiedRequest) -> None:
        """
        A backend freed up for C{request}, which waited in its pool's queue.
        """
        request.waiting = None
        self.useBackend(request, backend, False)

    def queueFailed(self, reason: Failure, request: ProxiedRequest) -> None:
        """
        C{request} waited in its pool's queue and gave up: 503.
        """
        request.waiting = None
        if reason.check(CancelledError):
            return
        self.factory.counters["queue_" + ("full" if reason.check(QueueFull) else "timeout")] += 1
        self.answerError(request, 503, str(reason.value), not request.bodyDone)

    def useBackend(self, request: ProxiedRequest, backend: Backend, fresh: bool,
                   now: float | None = None) -> None:
        """
        Send C{request} to C{backend}, on an idle connection when there is
        one (and not C{fresh}), else on a new one.

        @param now: C{reactor.seconds()}, when the caller just read it.
        """
        l7pool = request.l7pool
        request.attempts += 1
        request.tried += (backend,)
        request.backend = backend
        backend.acquire()
        exchange = _Exchange(
            self, request, backend,
            self.factory.reactor.seconds() if now is None else now,
        )
        request.exchange = exchange
        upstreams = l7pool.upstreams
        if not fresh:
            # An idle connection needs no Deferred: most requests take one.
            connection = upstreams.takeIdle(backend)
            if connection is not None:
                self.backendConnected(connection, exchange)
                return
            d = upstreams.connect(backend)
        else:
            d = upstreams.connect(backend, fresh=True)
        exchange.connecting = d
        timeout = l7pool.retry.timeout
        if timeout is not None:
            # The connect may not outlast the request's time across tries.
            left = max(0.0, timeout - (exchange.started - request.started))
            exchange.deadlineCall = self.reactor.callLater(left, self.connectTooLate, exchange)
        d.addCallbacks(self.backendConnected, self.connectFailed,
                       callbackArgs=(exchange,), errbackArgs=(exchange,))

    def connectTooLate(self, exchange: _Exchange) -> None:
        """
        The request ran out of time across its tries while C{exchange} was
        still connecting: give the connect up, answer 504.
        """
        exchange.deadlineCall = None
        connecting, exchange.connecting = exchange.connecting, None
        request = exchange.request
        if request.exchange is not exchange:
            return
        request.exchange = None
        self.endAttempt(exchange, request)
        if connecting is not None:
            # Its errback finds the attempt over, and does nothing more.
            connecting.cancel()
        self.factory.counters["deadline"] += 1
        self.answerError(request, 504, "request timeout across tries", not request.bodyDone)

    def backendConnected(self, connection: UpstreamConnection,
                         exchange: _Exchange) -> None:
        exchange.connecting = None
        if exchange.deadlineCall is not None:
            exchange.deadlineCall.cancel()
            exchange.deadlineCall = None
        request = exchange.request
        if request.exchange is not exchange:
            connection.abort()
            return
        exchange.connection = connection
        l7pool = request.l7pool
        known = request.known
        if known is not None:
            # A plain request without a body (see _KnownRequest): its head
            # is the whole request.
            connection.sendRequest(
                self.knownHead(known, l7pool), known.method, exchange,
                self.tryTimeout(request), whole=True,
            )
            if self.pauses and request.exchange is exchange:
                self.resumeReading("backend")
            return
        framing = request.framing
        assert framing is not None and l7pool is not None
        sendFraming = framing
        if framing.expectContinue:
            # txlb answers the expectation itself once a backend is ready,
            # so that a refused request never had its body sent.
            sendFraming = attrs.evolve(framing, expectContinue=False)
            if not request.bodyDone and not request.body:
                self.transport.write(_CONTINUE)
                if request is self.parsing:
                    # The client was told to send its body: from now on it
                    # may not pause longer than the body timeout.
                    self.watchBody()
        method = request.method
        headers = forwardRequestHeaders(
            request.headers, sendFraming, l7pool.policy, self.client,
            requestId=self.factory.newRequestId(),
        )
        connection.sendRequest(_requestHead(method, request.target, headers),
                               method, exchange, self.tryTimeout(request))
        if request.exchange is not exchange:
            # It failed inside sendRequest (a pooled connection found
            # closed), and that was handled: maybe a retry is on its way.
            return
        if request.body:
            for chunk in request.body:
                connection.writeBody(_frameBody(request, chunk))
            self.bodyHeld -= request.bodyBuffered
            request.body.clear()
            request.bodyBuffered = 0
            request.bodySent = True
            if self.bodyHeld <= BODY_HIGH_WATER:
                self.resumeReading("body")
        if request.bodyDone:
            if framing.chunked or request.bodySent:
                self.finishRequestBody(request, connection)
            else:
                # No body: nothing registered on the backend transport for
                # it, nothing to end it with.
                if self.pauses:
                    self.resumeReading("backend")
                connection.finishRequest()
        else:
            connection.transport.registerProducer(_ReadPause(self, "backend"), True)

    def knownHead(self, known: _KnownRequest, l7pool: L7Pool) -> bytes:
        """
        The head txlb sends a backend for a request made from C{known}.

        Everything in it but the request id it generates is the same for
        every such request on this connection to C{l7pool}: that is made
        once, in two parts, and the id put between them.
        """
        factory = self.factory
        made = self.lastHead
        if made is None or made[0] is not known or made[1] is not l7pool:
            head = _requestHead(known.method, known.target, forwardRequestHeaders(
                known.headers, known.framing, l7pool.policy, self.client,
                requestId=_ID_SLOT,
            ))
            before, slot, after = head.partition(_ID_SLOT)
            if slot:
                made = (known, l7pool, before + factory._idPrefix + b"-", after)
            else:
                # The client's own request id is passed on.
                made = (known, l7pool, head, None)
            self.lastHead = made
        if made[3] is None:
            return made[2]
        # factory.newRequestId(), between the two parts.
        return b"%b%x%b" % (made[2], next(factory._ids), made[3])

    def finishRequestBody(self, request: ProxiedRequest,
                          connection: UpstreamConnection) -> None:
        """
        The whole request was read from the client: end it on the backend.
        """
        if request.framing is not None and request.framing.chunked:
            connection.writeBody(b"0\r\n\r\n")
        if connection.transport is not None and getattr(
            connection.transport, "producer", None
        ) is not None:
            connection.transport.unregisterProducer()
        self.resumeReading("backend")
        connection.finishRequest()

    def connectFailed(self, reason: Failure, exchange: _Exchange) -> None:
        exchange.connecting = None
        if exchange.deadlineCall is not None:
            exchange.deadlineCall.cancel()
            exchange.deadlineCall = None
        if not exchange.current:
            return
        request = exchange.request
        backend = exchange.backend
        why = _describe(reason)
        backend.recordFailure(why)
        self.endAttempt(exchange, request)
        self._log.warn(
            "backend {backend} of pool {pool}: connect failed: {why}",
            backend=backend.name, pool=request.l7pool.pool.name, why=why,
        )
        # Nothing was sent: another backend may always be tried.
        if request.attempts < request.l7pool.retry.attempts and self.withinDeadline(request):
            request.exchange = None
            self.tryBackend(request)
            return
        request.exchange = None
        self.answerError(request, 502, "backend connection failed", not request.bodyDone)

    def tryTimeout(self, request: ProxiedRequest, now: float | None = None) -> float | None:
        """
        How long the backend may take to start its response to this try:
        the pool's per-try timeout, cut to what is left of the request's
        time across tries.

        @param now: C{reactor.seconds()}, when the caller just read it.
        """
        retry = request.l7pool.retry
        perTry = retry.perTryTimeout
        if retry.timeout is None:
            return perTry
        if now is None:
            now = self.reactor.seconds()
        left = max(0.0, retry.timeout - (now - request.started))
        return left if perTry is None or left < perTry else perTry

    def withinDeadline(self, request: ProxiedRequest) -> bool:
        """
        Is there time left for another try?
        """
        timeout = request.l7pool.retry.timeout
        return timeout is None or self.reactor.seconds() - request.started < timeout

    # ------------------------------------------------------------- response

    def informational(self, request: ProxiedRequest, status: int, reason: bytes,
                      headers: Any) -> None:
        """
        A 1xx from the backend: passed to HTTP/1.1 clients, except a 100
        Continue txlb already sent.
        """
        if request.version < (1, 1):
            return
        if status == 100 and request.framing is not None and request.framing.expectContinue:
            return
        self.transport.write(_statusHead(status, reason, _interimHeaders(headers)))

    def responseStarted(self, exchange: _Exchange, status: int, reason: bytes,
                        headers: Any, framing: ResponseFraming) -> None:
        request = exchange.request
        head = self.clientHead(exchange, request, status, reason, headers, framing)
        if head is None:
            return
        request.bytesOut += len(head)
        connection = exchange.connection
        if connection is not None and connection.moreFollows and status != 101:
            # Body bytes (or the end) were read with this head: write them
            # together, in one send.  The connection becomes the client
            # transport's producer only if the response outlasts this read.
            request.held = head
            return
        self.transport.write(head)
        if status != 101 and connection is not None:
            self.transport.registerProducer(connection, True)

    def clientHead(self, exchange: _Exchange, request: ProxiedRequest, status: int,
                   reason: bytes, headers: Any,
                   framing: ResponseFraming) -> bytes | None:
        """
        Decide how a final (or 101) response goes to the client, and make
        its head.

        @return: the head, or C{None} when the response was refused (a 101
            to a request that did not upgrade) and that was handled.
        """
        l7pool = request.l7pool
        framing_ = request.framing
        keepAlive = (
            framing_ is not None
            and framing_.keepAlive
            and not self.closing
            and not self.factory.stopping
            and request.bodyDone
            # A declined upgrade leaves bytes of unknown meaning behind it.
            and not (framing_.upgrade and status != 101)
        )
        if status == 101 and not (framing_ and framing_.upgrade):
            self.responseFailed(exchange, Failure(_BadUpgrade()), True)
            return None
        version = request.version
        sticky = (
            l7pool.stickyCookie is not None and not request.stickyHit and status != 101
        )
        if type(headers) is tuple and not sticky:
            # A head the reader remembers: the same one each time, so what
            # txlb makes of it can be remembered too (L7Pool.clientHead,
            # whose table is looked up here first).
            backend = exchange.backend
            made = l7pool._clientHeads.get((id(headers), keepAlive, version, backend))
            if made is not None and made[0] is headers:
                request.plan = made[1]
                head = made[2]
            else:
                request.plan, head = l7pool.clientHead(
                    backend, status, reason, headers, framing, keepAlive, version
                )
        else:
            plan = request.plan = planResponse(framing, keepAlive, version)
            out = forwardResponseHeaders(
                headers, framing, l7pool.policy, exchange.backend.name, keepAlive,
                version, plan,
            )
            if sticky:
                out.append((
                    b"Set-Cookie",
                    l7pool.stickyCookie + b"=" + l7pool.stickyToken(exchange.backend)
                    + b"; Path=/; HttpOnly; SameSite=Lax",
                ))
            head = _statusHead(status, reason, out)
        request.status = status
        request.headSent = True
        return head

    def responseBody(self, request: ProxiedRequest, data: bytes) -> None:
        if request.plan.body is Body.CHUNKED:
            if not data:
                return
            data = b"%x\r\n%s\r\n" % (len(data), data)
        request.bytesOut += len(data)
        transport = self.transport
        held, request.held = request.held, None
        small = len(data) <= _COALESCE
        if held is not None:
            if small:
                data = held + data
            else:
                transport.write(held)
        connection = request.exchange.connection
        if connection.moreFollows:
            if small:
                # The end follows at once: write these with it.
                request.held = data
                return
        elif transport.producer is None:
            # The response goes on after this read (see responseStarted).
            transport.registerProducer(connection, True)
        transport.write(data)

    def responseComplete(self, exchange: _Exchange) -> None:
        request = exchange.request
        held, request.held = request.held, None
        if request.plan.body is Body.CHUNKED:
            request.bytesOut += 5
            held = (held or b"") + b"0\r\n\r\n"
        if held is not None:
            self.transport.write(held)
        self.completed(exchange, request)

    def responseWhole(self, exchange: _Exchange, status: int, reason: bytes,
                      headers: Any, framing: ResponseFraming, body: bytes) -> None:
        """
        A final response read whole at once (see L{IExchange.responseWhole}):
        its head and body go out in one write when small.
        """
        head = self.clientHead(exchange, exchange.request, status, reason, headers,
                               framing)
        request = exchange.request
        # Never chunked: a length body, or none, keeps its framing.
        size = len(body)
        request.bytesOut += len(head) + size
        if size <= _COALESCE:
            self.transport.write(head + body if size else head)
        else:
            self.transport.write(head)
            self.transport.write(body)
        self.completed(exchange, request)

    def completed(self, exchange: _Exchange, request: ProxiedRequest) -> None:
        """
        The response to C{request} was written whole: account for the
        attempt, and finish.
        """
        transport = self.transport
        if transport.producer is not None:
            transport.unregisterProducer()
        backend = exchange.backend
        now = self.factory.reactor.seconds()
        request.l7pool.pool.observeResponse(backend, request.status, now - exchange.started)
        request.exchange = None
        # endAttempt, inline.
        if not exchange.released:
            exchange.released = True
            backend.release()
        if request.retrying:
            request.retrying = False
            request.l7pool.budget.retries -= 1
        if not request.bodyDone and exchange.connection is not None:
            # The backend answered before the whole body was sent: the
            # connection can neither be finished nor reused.
            exchange.connection.abort()
        self.finished(request, request.plan.close, now)

    def unregisterResponseProducer(self) -> None:
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()

    def responseFailed(self, exchange: _Exchange, reason: Failure, started: bool) -> None:
        request = exchange.request
        backend = exchange.backend
        request.exchange = None
        self.endAttempt(exchange, request)
        connection = exchange.connection
        if connection is not None:
            connection.abort()
        why = _describe(reason)
        timedOut = reason.check(ResponseTimeout) is not None
        if (
            not started
            and connection is not None
            and connection.reused
            and reason.check(ConnectionLostEarly) is not None
        ):
            # The backend closed a kept-alive connection as this request
            # went out (its keep-alive timeout raced us): not the backend's
            # fault.  An idempotent request whose body was not sent is tried
            # once more on a new connection, without using up an attempt or
            # the retry budget (nginx does the same for cached connections).
            if (
                request.method in IDEMPOTENT
                and not request.bodySent
                and not request.staleRetried
            ):
                request.staleRetried = True
                request.attempts -= 1
                request.tried = request.tried[:-1]
                self.factory.counters["stale_retries"] += 1
                self.tryBackend(request, fresh=True)
                return
            self.answerError(request, 502, "bad gateway", not request.bodyDone)
            return
        backend.recordFailure(why)
        backend.recordResponse(0, self.reactor.seconds() - exchange.started)
        self._log.warn(
            "backend {backend} of pool {pool}: {method} failed: {why}",
            backend=backend.name, pool=request.l7pool.pool.name,
            method=request.method.decode("ascii", "replace"), why=why,
        )
        if request.headSent:
            # Never pass a truncated response off as complete.
            self.unregisterResponseProducer()
            self.queue.popleft()
            self.uncount(request)
            self.logRequest(request)
            self.closing = True
            self.transport.abortConnection()
            return
        l7pool = request.l7pool
        if (
            not started
            and not timedOut
            and request.method in IDEMPOTENT
            and not request.bodySent
            and request.attempts < l7pool.retry.attempts
            and self.withinDeadline(request)
            and l7pool.budget.allowRetry()
        ):
            l7pool.budget.retries += 1
            request.retrying = True
            self.factory.counters["retries"] += 1
            self.tryBackend(request)
            return
        if timedOut:
            self.answerError(request, 504, "backend response timeout", not request.bodyDone)
        else:
            self.answerError(request, 502, "bad gateway", not request.bodyDone)

    def upgraded(self, exchange: _Exchange, connection: UpstreamConnection,
                 extra: bytes) -> None:
        """
        The backend switched protocols: the connection is a byte tunnel now.
        """
        request = exchange.request
        request.exchange = None
        if request.retrying:
            request.retrying = False
            request.l7pool.budget.retries -= 1
        self.tunnelExchange = exchange
        self.queue.popleft()
        self.uncount(request)
        self.logRequest(request)
        self.timer.stop()
        self.tunnel = connection
        connection.tunnelTo(self.transport)
        self.transport.registerProducer(connection, True)
        connection.transport.registerProducer(self.transport, True)
        if extra:
            self.transport.write(extra)
        for data in request.upgradeData:
            connection.transport.write(data)
        request.upgradeData = ()
        self.pauses.clear()
        self.transport.resumeProducing()

    # ------------------------------------------------------------ finishing

    def answerError(self, request: ProxiedRequest, status: int, reason: str,
                    close: bool, headers: tuple[bytes, ...] = ()) -> None:
        """
        Answer C{request} from txlb itself.  When its body was not all read,
        close after, so that leftover bytes are never read as a request.
        """
        request.status = status
        keepAlive = (
            not close
            and request.framing is not None
            and request.framing.keepAlive
            and not self.closing
            and not self.factory.stopping
        )
        response = _errorResponse(status, reason, not keepAlive, headers)
        request.bytesOut += len(response)
        self.transport.write(response)
        self.finished(request, close=not keepAlive)

    def answerLocal(self, request: ProxiedRequest) -> None:
        """
        Answer a stats path (C{/lb-health}, C{/lb-stats}) from txlb itself,
        as JSON; the connection stays open when the client keeps it.
        """
        factory = self.factory
        try:
            body = json.dumps(factory.localStats(request.local), indent=1).encode() + b"\n"
            status = 200
        except Exception:
            self._log.failure("stats for {path} failed", path=request.local)
            self.answerError(request, 500, "internal error", not request.bodyDone)
            return
        keepAlive = (
            request.bodyDone
            and request.framing.keepAlive
            and not self.closing
            and not factory.stopping
        )
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Cache-Control: no-store\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), b"" if keepAlive else b"Connection: close\r\n")
        )
        response = head if request.method == b"HEAD" else head + body
        request.status = status
        request.bytesOut += len(response)
        self.transport.write(response)
        self.finished(request, close=not keepAlive)

    def finished(self, request: ProxiedRequest, close: bool,
                 now: float | None = None) -> None:
        """
        C{request} is answered: log it, and go on with the next or close.

        @param now: C{reactor.seconds()}, when the caller just read it.
        """
        queue = self.queue
        if queue and queue[0] is request:
            queue.popleft()
        if request.bodyBuffered:
            # Held for a backend that never got it.
            self.bodyHeld -= request.bodyBuffered
            request.body.clear()
            request.bodyBuffered = 0
            if self.bodyHeld <= BODY_HIGH_WATER:
                self.resumeReading("body")
        if request.counted:
            request.counted = False
            request.l7pool.budget.requests -= 1
        # logRequest, inline.
        factory = self.factory
        factory.counters["requests"] += 1
        factory.bytesIn += request.headerSize + request.bodyReceived
        factory.bytesOut += request.bytesOut
        if factory.accessLog is not None:
            if now is None:
                now = factory.reactor.seconds()
            self.logAccess(request, now)
        if close or self.closing:
            self.closing = True
            self.timer.clear()
            for pending in queue:
                self.abandon(pending)
            queue.clear()
            self.transport.loseConnection()
            return
        if self.pauses and len(queue) <= MAX_PIPELINE:
            self.resumeReading("pipeline")
        if queue:
            self.dispatch()
        elif self.parsing is not None:
            # The next request's head is arriving: it gets what is left of
            # its header deadline.
            timeout = factory.settings.headerTimeout
            if timeout is not None:
                timeout = max(0.0, timeout - (self.reactor.seconds() - self.parsing.started))
            self.timer.set(timeout, self.headerTimedOut)
        else:
            timeout = factory.settings.idleTimeout
            timer = self.timer
            if (
                now is not None
                and timeout is not None
                and timer.call is not None
                and timer.at <= now + timeout
            ):
                # timer.set(timeout, ..., now), inline for the usual move
                # to a later deadline, which leaves the call where it is.
                timer.deadline = now + timeout
                timer.action = self.idleTimedOut
            else:
                timer.set(timeout, self.idleTimedOut, now)

    def logRequest(self, request: ProxiedRequest) -> None:
        """
        Count the request and write its access-log record.
        """
        factory = self.factory
        factory.counters["requests"] += 1
        factory.bytesIn += request.headerSize + request.bodyReceived
        factory.bytesOut += request.bytesOut
        if factory.accessLog is not None:
            self.logAccess(request, factory.reactor.seconds())

    def logAccess(self, request: ProxiedRequest, now: float) -> None:
        """
        Write C{request}'s access-log record, answered at C{now}.
        """
        accessLog = self.factory.accessLog
        if type(accessLog) is AccessLog:
            # Serialized at once, without the dictionary.
            accessLog.writeLine(_accessLine(request, self.peer, now))
        else:
            accessLog(_accessRecord(request, self.peer, now))


class HTTPProxyFactory(_FactoryBase):
    """
    Builds L{HTTPProxyProtocol}s for one L7 listener.

    @ivar pools: L{L7Pool} by pool name.
    @ivar router: chooses a pool for each request.
    @ivar counters: request counters by name (requests, rejected,
        no_backend, retries, header_timeout, body_timeout, deadline).
    @ivar stopping: set while shutting down: responses carry
        C{Connection: close}.
    """

    protocol = HTTPProxyProtocol
    noisy = False
