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
at once (L{_BackendSender.sendWhole}).  The backend side does the same
for response heads (L{txlb.protocols._upstreamparse}).

L{HTTPProxyProtocol} is one class written in four modules, in the order a
request flows: this one (the connection, its timers and flow control, and
finishing each request), L{txlb.protocols._httprequest} (reading and
checking requests), L{txlb.protocols._httpsend} (choosing a backend and
sending) and L{txlb.protocols._httpresponse} (relaying the response).
"""

from __future__ import annotations

import collections
import json
from typing import Any

import httptools
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txlb.accesslog import AccessLog
from txlb.protocols._httpparts import (
    BODY_HIGH_WATER,
    IDEMPOTENT,
    MAX_PIPELINE,
    HTTPSettings,
    L7Pool,
    ProxiedRequest,
    RetryPolicy,
    _Deadline,
    _Exchange,
    _FactoryBase,
)
from txlb.protocols._httprequest import _RequestReader
from txlb.protocols._httpresponse import _ResponseRelay
from txlb.protocols._httpsend import _BackendSender
from txlb.protocols._httpwire import (
    _accessLine,
    _accessRecord,
    _errorResponse,
)
from txlb.protocols.headers import (
    ClientInfo,
)
from txlb.protocols.upstream import (
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


class HTTPProxyProtocol(_RequestReader, _BackendSender, _ResponseRelay, Protocol):
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
        if timeout is None:
            # No limit any more (a reload).
            self.bodyWatch = False
            return
        if self.pauses:
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
                    # The client's pause starts now (a reload may have
                    # lifted the limit: then the watch ends).
                    timeout = self.factory.settings.bodyTimeout
                    self.bodyWatch = timeout is not None
                    self.timer.set(timeout, self.bodyTimedOut)

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
