"""
Sending requests to backends from an L7 client connection: the part of
L{txlb.protocols.http.HTTPProxyProtocol} that picks a backend for the request
at the head of the queue, takes or opens a pooled connection to it, sends the
request (and its body, with backpressure) and retries on another backend when
the rules allow.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from txlb.pool import Backend, QueueFull
from txlb.protocols._httpparts import (
    BODY_HIGH_WATER,
    L7Pool,
    ProxiedRequest,
    _Exchange,
    _KnownRequest,
    _ReadPause,
)
from txlb.protocols._httpwire import (
    _CONTINUE,
    _cookie,
    _describe,
    _frameBody,
    _hashKey,
    _requestHead,
)
from txlb.protocols.headers import (
    forwardRequestHeaders,
)
from txlb.protocols.upstream import (
    UpstreamConnection,
)

# Stands in for the request id in a head made once for many requests (see
# _BackendSender.knownHead); NUL is in no header value txlb sends.
_ID_SLOT = b"\x00request-id\x00"


class _BackendSender:
    """
    The backend half of L{txlb.protocols.http.HTTPProxyProtocol}, up to the
    response.
    """

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

    def sendWhole(self, request: ProxiedRequest, now: float) -> None:
        """
        Send a request whose head is the whole of it (no body), made from a
        L{_KnownRequest} or just parsed: L{tryBackend}, L{useBackend} and
        L{backendConnected} in one call for the usual case, a pool without
        sticky sessions or a hash key and an idle connection to the backend
        its strategy picks.  Anything else goes the general way.

        @param now: C{reactor.seconds()}, just read.
        """
        l7pool = request.l7pool
        known = request.known
        if (
            l7pool.stickyCookie is not None
            or l7pool.hashKey is not None
            or (known is None and request.framing.expectContinue)
        ):
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
        method = request.method
        if known is None:
            head = _requestHead(method, request.target, forwardRequestHeaders(
                request.headers, request.framing, l7pool.policy, self.client,
                requestId=self.factory.newRequestId(),
            ))
        else:
            made = self.lastHead
            if made is not None and made[0] is known and made[1] is l7pool and made[3]:
                # What knownHead would give, from what it made last.
                head = b"%b%x%b" % (made[2], next(self.factory._ids), made[3])
            else:
                head = self.knownHead(known, l7pool)
        retry = l7pool.retry
        if retry.timeout is None:
            timeout = retry.perTryTimeout
        else:
            request.firstTry = now
            timeout = self.tryTimeout(exchange, now)
        connection.sendRequest(head, method, exchange, timeout, whole=True)
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
        if not request.firstTry:
            request.firstTry = exchange.started
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
            left = max(0.0, timeout - (exchange.started - request.firstTry))
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
        self.tryCut(exchange, "connect outlasted the request's time across tries")
        self.answerError(request, 504, "request timeout across tries", not request.bodyDone)

    def tryCut(self, exchange: _Exchange, why: str) -> None:
        """
        C{exchange} was given up because its request ran out of time across
        tries (C{retries.timeout}).  It counts as a failed exchange with its
        backend; the backend's passive checks (outlier detection, circuit
        breaker) count it only for a first try, which had all of that
        time: a retry may have been left too little to judge the backend.
        """
        backend = exchange.backend
        request = exchange.request
        self.factory.counters["deadline"] += 1
        backend.recordFailure(why, heldAgainst=request.attempts <= 1)
        backend.recordResponse(0, self.reactor.seconds() - exchange.started)

    def backendConnected(self, connection: UpstreamConnection,
                         exchange: _Exchange) -> None:
        exchange.connecting = None
        exchange.stopDeadline()
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
                self.tryTimeout(exchange), whole=True,
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
            if not request.bodyDone and not request.body and not request.continued:
                # Once: a retry finds the client already sending.
                request.continued = True
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
                               method, exchange, self.tryTimeout(exchange))
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
        exchange.stopDeadline()
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

    def tryTimeout(self, exchange: _Exchange, now: float | None = None) -> float | None:
        """
        How long the backend may take to start its response to this try:
        the pool's per-try timeout, cut to what is left of the request's
        time across tries (counted from its first try), in which case the
        exchange is marked C{cut}.

        @param now: C{reactor.seconds()}, when the caller just read it.
        """
        request = exchange.request
        retry = request.l7pool.retry
        perTry = retry.perTryTimeout
        if retry.timeout is None:
            return perTry
        if now is None:
            now = self.reactor.seconds()
        left = max(0.0, retry.timeout - (now - request.firstTry))
        if perTry is None or left < perTry:
            exchange.cut = True
            return left
        return perTry

    def withinDeadline(self, request: ProxiedRequest) -> bool:
        """
        Is there time left for another try?
        """
        timeout = request.l7pool.retry.timeout
        return (
            timeout is None
            or not request.firstTry
            or self.reactor.seconds() - request.firstTry < timeout
        )

