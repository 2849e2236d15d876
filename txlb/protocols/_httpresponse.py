"""
Relaying responses to an L7 client: the part of
L{txlb.protocols.http.HTTPProxyProtocol} that the backend connection's
L{txlb.protocols.upstream.IExchange} events (through L{_Exchange}) end up in.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from txlb.protocols._httpparts import (
    _COALESCE,
    IDEMPOTENT,
    ProxiedRequest,
    _BadUpgrade,
    _Exchange,
)
from txlb.protocols._httpwire import (
    _describe,
    _statusHead,
)
from txlb.protocols.headers import (
    Body,
    ResponseFraming,
    forwardResponseHeaders,
    interimResponseHeaders,
    planResponse,
)
from txlb.protocols.upstream import (
    ConnectionLostEarly,
    ResponseTimeout,
    UpstreamConnection,
)

# Read on every streamed response: a module constant costs a few
# nanoseconds, a member read from its enum class some 70 (CPython 3.11).
_BODY_CHUNKED = Body.CHUNKED


class _ResponseRelay:
    """
    The response half of L{txlb.protocols.http.HTTPProxyProtocol}.
    """

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
        self.transport.write(_statusHead(
            status, reason, interimResponseHeaders(headers, status, request.l7pool.policy)
        ))

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
        if request.plan.body is _BODY_CHUNKED:
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
        if request.plan.body is _BODY_CHUNKED:
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
        cut = timedOut and exchange.cut
        if cut:
            self.tryCut(exchange, why)
        else:
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
        if cut:
            self.answerError(request, 504, "request timeout across tries", not request.bodyDone)
        elif timedOut:
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

